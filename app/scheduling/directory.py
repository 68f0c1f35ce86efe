"""Clinics and doctors: creating them and finding them."""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from sqlalchemy import ColumnElement, func, literal, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.errors import Conflict, Invalid, NotFound
from app.i18n import gettext
from db.models import Clinic, Doctor


def valid_timezone(name: str) -> ZoneInfo:
    """The zone for an IANA name such as Europe/Berlin, or Invalid."""
    if name not in available_timezones():
        raise Invalid(
            gettext("%(name)r is not an IANA time zone (for example Europe/Berlin)")
            % {"name": name}
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):  # pragma: no cover - listed but unloadable
        raise Invalid(gettext("%(name)r is not an IANA time zone") % {"name": name}) from None


async def create_clinic(
    session: AsyncSession, *, name: str, timezone: str, address: str | None = None
) -> Clinic:
    """Add a clinic. Commits.

    Raises:
        Invalid: empty name or unknown time zone.
        Conflict: another clinic has this name, compared without case and spaces.
    """
    name = " ".join(name.split())
    if not name:
        raise Invalid(gettext("a clinic needs a name"))
    valid_timezone(timezone)
    twin = await session.scalar(
        select(Clinic.name).where(_name_key(Clinic.name) == _name_key(literal(name))).limit(1)
    )
    if twin is not None:
        raise _same_name(twin)
    clinic = Clinic(name=name, timezone=timezone, address=address)
    session.add(clinic)
    try:
        await session.commit()
    except IntegrityError:  # created meanwhile by another request (uq_clinics_name_key)
        await session.rollback()
        raise _same_name(name) from None
    return clinic


def _name_key(name: ColumnElement[str] | InstrumentedAttribute[str]) -> ColumnElement[str]:
    """The clinic name as uq_clinics_name_key compares it (db.models.CLINIC_NAME_KEY)."""
    return func.lower(func.regexp_replace(name, r"\s+", "", "g"))


def _same_name(existing: str) -> Conflict:
    return Conflict(
        f"a clinic named {existing!r} already exists: tell the two apart in the name,"
        " for example by their city or street"
    )


async def list_clinics(session: AsyncSession) -> list[Clinic]:
    return list(await session.scalars(select(Clinic).order_by(Clinic.name)))


async def create_doctor(
    session: AsyncSession,
    *,
    clinic_id: int,
    name: str,
    specialty: str,
    email: str | None = None,
    default_slot_minutes: int = 30,
) -> Doctor:
    """Add a doctor to a clinic. Commits.

    Raises:
        Invalid: unknown clinic, empty name or specialty, slot length outside 5-240.
    """
    if await session.get(Clinic, clinic_id) is None:
        raise Invalid(gettext("clinic %(clinic_id)s does not exist") % {"clinic_id": clinic_id})
    if not name.strip() or not specialty.strip():
        raise Invalid(gettext("a doctor needs a name and a specialty"))
    if not 5 <= default_slot_minutes <= 240:
        raise Invalid(gettext("default_slot_minutes must be between 5 and 240"))
    doctor = Doctor(
        clinic_id=clinic_id,
        full_name=name.strip(),
        specialty=specialty.strip(),
        email=email,
        default_slot_minutes=default_slot_minutes,
    )
    session.add(doctor)
    await session.commit()
    return doctor


@dataclass(frozen=True, slots=True)
class DoctorListing:
    id: int
    clinic_id: int
    clinic_name: str
    name: str
    specialty: str
    timezone: str


async def find_doctors(
    session: AsyncSession,
    *,
    clinic_id: int | None = None,
    specialty: str | None = None,
    name: str | None = None,
    limit: int = 200,
) -> list[DoctorListing]:
    """Active doctors, filtered by clinic, specialty (case-insensitive) and name part."""
    query = (
        select(
            Doctor.id,
            Doctor.clinic_id,
            Clinic.name,
            Doctor.full_name,
            Doctor.specialty,
            Clinic.timezone,
        )
        .join(Clinic, Clinic.id == Doctor.clinic_id)
        .where(Doctor.active.is_(True))
        .order_by(Clinic.name, Doctor.full_name)
        .limit(limit)
    )
    if clinic_id is not None:
        query = query.where(Doctor.clinic_id == clinic_id)
    if specialty:
        query = query.where(func.lower(Doctor.specialty) == specialty.strip().lower())
    if name:
        query = query.where(Doctor.full_name.ilike(f"%{_escape_like(name.strip())}%"))
    return [DoctorListing(*row) for row in await session.execute(query)]


async def get_doctor(session: AsyncSession, doctor_id: int) -> tuple[Doctor, Clinic]:
    """The doctor with their clinic, or NotFound."""
    row = (
        await session.execute(
            select(Doctor, Clinic)
            .join(Clinic, Clinic.id == Doctor.clinic_id)
            .where(Doctor.id == doctor_id)
        )
    ).one_or_none()
    if row is None:
        raise NotFound(gettext("doctor %(doctor_id)s does not exist") % {"doctor_id": doctor_id})
    return row[0], row[1]


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
