"""User accounts: creation with the right link for each role."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Conflict, Invalid
from app.passwords import hash_password, password_problem
from db.models import ROLES, Clinic, Doctor, Patient, User


def normalise_email(email: str) -> str:
    email = email.strip()
    if "@" not in email or email.startswith("@") or email.endswith("@") or " " in email:
        raise Invalid(f"{email!r} is not an email address")
    return email


async def create_user(
    session: AsyncSession,
    *,
    role: str,
    email: str,
    password: str,
    full_name: str | None = None,
    clinic_id: int | None = None,
    doctor_id: int | None = None,
    password_hash: str | None = None,
) -> User:
    """Create a login, with a patient profile for patients. Commits.

    Args:
        role: patient, doctor, front_desk or admin.
        full_name: the patient's name (patients only).
        clinic_id: the front desk's clinic (required for front_desk).
        doctor_id: the doctor this login belongs to (required for doctor).
        password_hash: a precomputed hash (seed data hashes one password once).

    Raises:
        Invalid: unknown role, missing link, weak password.
        Conflict: the email is already registered.
    """
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}")
    email = normalise_email(email)
    if password_hash is None:
        if problem := password_problem(password):
            raise Invalid(problem)
        password_hash = hash_password(password)
    user = User(email=email, password_hash=password_hash, role=role)
    if role == "patient":
        patient = Patient(full_name=full_name or email.split("@")[0], email=email)
        session.add(patient)
        await session.flush()
        user.patient_id = patient.id
    elif role == "doctor":
        if doctor_id is None or await session.get(Doctor, doctor_id) is None:
            raise Invalid("a doctor login needs an existing doctor id")
        user.doctor_id = doctor_id
        user.clinic_id = (await session.get_one(Doctor, doctor_id)).clinic_id
    elif role == "front_desk":
        if clinic_id is None or await session.get(Clinic, clinic_id) is None:
            raise Invalid("a front desk login needs an existing clinic id")
        user.clinic_id = clinic_id
    if await session.scalar(select(User.id).where(func.lower(User.email) == email.lower())):
        raise Conflict("this email is already registered")
    session.add(user)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict("this email is already registered") from None
    return user
