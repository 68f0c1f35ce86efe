"""A small clinic world for booking tests: users of every role and their API tokens."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from app.access.passwords import hash_password
from app.access.tokens import issue_access_token
from db.models import Clinic, Doctor, Patient, ScheduleTemplate, User

BERLIN = ZoneInfo("Europe/Berlin")
PASSWORD = "world-password-1"
_HASH = hash_password(PASSWORD)


@dataclass
class World:
    secret: str
    clinic_id: int
    other_clinic_id: int
    doctor_id: int
    other_doctor_id: int
    users: dict[str, User] = field(default_factory=dict)
    patients: list[int] = field(default_factory=list)

    def headers(self, name: str) -> dict[str, str]:
        user = self.users[name]
        token = issue_access_token(self.secret, user_id=user.id, role=user.role)
        return {"Authorization": f"Bearer {token}"}


def day_after_tomorrow() -> dt.date:
    return dt.datetime.now(BERLIN).date() + dt.timedelta(days=2)


def at(day: dt.date, hour: int, minute: int = 0, tz: ZoneInfo = BERLIN) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=tz)


async def make_world(
    session: AsyncSession, secret: str, patients: int = 3, password_hash: str = _HASH
) -> World:
    """Two clinics (Berlin, New York), a doctor in each working every day 08:00-20:00 in
    30-minute slots, `patients` patients with logins, and one login per staff role, all
    with PASSWORD (`password_hash`: its hash, made once at the suite's argon2 cost)."""
    berlin = Clinic(name="Berlin", timezone="Europe/Berlin")
    new_york = Clinic(name="New York", timezone="America/New_York")
    session.add_all([berlin, new_york])
    await session.flush()
    doctor = Doctor(clinic_id=berlin.id, full_name="Dr. Berlin", specialty="GP")
    other = Doctor(clinic_id=new_york.id, full_name="Dr. NY", specialty="GP")
    session.add_all([doctor, other])
    await session.flush()
    for d in (doctor, other):
        for weekday in range(7):
            session.add(
                ScheduleTemplate(
                    doctor_id=d.id,
                    weekday=weekday,
                    start_time=dt.time(8),
                    end_time=dt.time(20),
                    slot_minutes=30,
                )
            )
    world = World(secret, berlin.id, new_york.id, doctor.id, other.id)
    for i in range(patients):
        patient = Patient(full_name=f"Patient {i}")
        session.add(patient)
        await session.flush()
        world.patients.append(patient.id)
        world.users[f"patient{i}"] = User(
            email=f"p{i}@t.test", password_hash=password_hash, role="patient", patient_id=patient.id
        )
    world.users["desk"] = User(
        email="desk@t.test", password_hash=password_hash, role="front_desk", clinic_id=berlin.id
    )
    world.users["other_desk"] = User(
        email="desk2@t.test", password_hash=password_hash, role="front_desk", clinic_id=new_york.id
    )
    world.users["doctor"] = User(
        email="doc@t.test",
        password_hash=password_hash,
        role="doctor",
        doctor_id=doctor.id,
        clinic_id=berlin.id,
    )
    world.users["admin"] = User(email="admin@t.test", password_hash=password_hash, role="admin")
    session.add_all(world.users.values())
    await session.commit()
    return world


async def move_to_today(session: AsyncSession, *appointment_ids: int) -> dt.date:
    """Put appointments on today's date in Berlin, half an hour apart from 00:00 (whatever
    the hour now): a check-in is possible only on an appointment's day, and the booking
    rules refuse to book a time that has passed."""
    from sqlalchemy import update

    from db.models import Appointment

    today = dt.datetime.now(BERLIN).date()
    for i, appointment_id in enumerate(appointment_ids):
        start = at(today, 0, 0) + dt.timedelta(minutes=30 * i)
        await session.execute(
            update(Appointment)
            .where(Appointment.id == appointment_id)
            .values(starts_at=start, ends_at=start + dt.timedelta(minutes=30))
        )
    await session.commit()
    return today
