"""Demo data: two clinics in different time zones, doctors, patients, a week of bookings,
and months of past visits (completed, no-shows, cancellations) with their analytics rollups.

Idempotent: a second run finds the demo clinics and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.passwords import hash_password
from app.analytics.rollups import day_chunks, refresh_days
from app.scheduling.availability import Interval, TemplateRange, day_grid
from db.models import Appointment, Clinic, Doctor, Patient, ScheduleTemplate, User, VisitType

DEMO_PASSWORD = "medbook-demo"  # noqa: S105 - printed on purpose: these are demo logins

CLINICS = [
    ("Spreeufer Praxis", "Europe/Berlin", "Uferstraße 1, 10999 Berlin"),
    ("Hudson Family Health", "America/New_York", "120 Hudson St, New York, NY"),
]
DOCTORS = [  # clinic index, name, specialty, slot minutes
    (0, "Dr. Anna Becker", "General practice", 30),
    (0, "Dr. Jonas Weber", "Cardiology", 20),
    (1, "Dr. Maya Patel", "General practice", 30),
    (1, "Dr. Samuel Okafor", "Dermatology", 15),
]
# Each doctor's visit types (doctor index -> name, minutes, buffer after, bookable online):
# a first visit of 30 minutes, a short follow-up, and the GPs' vaccinations with a quarter
# hour of observation after (booked by the desk only, as clinics usually do).
VISIT_TYPES = {
    0: [("First visit", 30, 0, True), ("Follow-up", 15, 0, True), ("Vaccination", 10, 15, False)],
    1: [("First visit", 30, 0, True), ("Follow-up", 10, 0, True)],
    2: [("First visit", 30, 0, True), ("Follow-up", 15, 0, True), ("Vaccination", 10, 15, False)],
    3: [("First visit", 30, 0, True), ("Follow-up", 15, 0, True)],
}
# The first two have the demo's patient logins. Enough patients to fill a week's boards
# while each stays under the booking rules' limit per doctor (see `seed_demo`).
PATIENTS = [
    "Lena Fischer",
    "Tom Schulz",
    "Grace Kim",
    "Luis Ortega",
    "Aisha Rahman",
    "Jan Novak",
    "Mei Chen",
    "Omar Haddad",
    "Sofia Rossi",
    "Kwame Mensah",
    "Ingrid Larsen",
    "Diego Alvarez",
    "Priya Sharma",
    "Noah Becker",
    "Hana Sato",
    "Emeka Obi",
    "Clara Dubois",
    "Mateo Silva",
    "Zeynep Kaya",
    "Ravi Patel",
    "Olga Ivanova",
    "Samir Nasser",
    "Freya Olsen",
    "Tariq Aziz",
    "Elena Popescu",
]

# Past months for the analytics pages: every chart's default range (30 days) has data.
HISTORY_DAYS = 120
# A past slot is booked with this chance; then its fate, by these weights.
HISTORY_BOOKED = 0.6
OUTCOMES = ("completed", "no_show", "cancelled")
OUTCOME_WEIGHTS = (80, 8, 12)

# The logins the README lists: (email, role, link).
LOGINS = [
    ("admin@demo.test", "admin", None),
    ("desk@demo.test", "front_desk", ("clinic", 0)),
    ("desk.ny@demo.test", "front_desk", ("clinic", 1)),
    ("doctor@demo.test", "doctor", ("doctor", 0)),
    ("doctor.ny@demo.test", "doctor", ("doctor", 2)),
    ("patient@demo.test", "patient", ("patient", 0)),
    ("patient2@demo.test", "patient", ("patient", 1)),
]


def weekly_template(slot_minutes: int) -> list[tuple[int, dt.time, dt.time, int]]:
    """Mon-Fri 09:00-12:00 and 13:00-17:00."""
    return [
        (weekday, start, end, slot_minutes)
        for weekday in range(5)
        for start, end in ((dt.time(9), dt.time(12)), (dt.time(13), dt.time(17)))
    ]


async def seed_demo(
    session: AsyncSession, today: dt.date | None = None, max_future_per_doctor: int = 3
) -> bool:
    """Load the demo data once. Commits.

    The week's bookings leave every patient room to book: each holds fewer than
    `max_future_per_doctor` appointments with any one doctor (a slot is left free when no
    patient has room). Loaded past the limit, a demo patient's every booking was a 422.

    Args:
        today: the day the demo week starts (today when omitted).
        max_future_per_doctor: the booking rules' limit (BOOKING_MAX_FUTURE_PER_DOCTOR).

    Returns:
        True when data was loaded, False when it was already there.
    """
    if await session.scalar(select(Clinic.id).where(Clinic.name == CLINICS[0][0])):
        return False
    today = today or dt.date.today()
    clinics = [Clinic(name=n, timezone=tz, address=a) for n, tz, a in CLINICS]
    session.add_all(clinics)
    await session.flush()
    doctors = [
        Doctor(clinic_id=clinics[c].id, full_name=n, specialty=s, default_slot_minutes=m)
        for c, n, s, m in DOCTORS
    ]
    patients = [Patient(full_name=n, email=f"{n.split()[0].lower()}@demo.test") for n in PATIENTS]
    session.add_all([*doctors, *patients])
    await session.flush()

    session.add_all(
        VisitType(
            doctor_id=doctors[index].id,
            name=name,
            minutes=minutes,
            buffer_after_minutes=after,
            online=online,
        )
        for index, kinds in VISIT_TYPES.items()
        for name, minutes, after, online in kinds
    )
    for doctor in doctors:
        for weekday, start, end, minutes in weekly_template(doctor.default_slot_minutes):
            session.add(
                ScheduleTemplate(
                    doctor_id=doctor.id,
                    weekday=weekday,
                    start_time=start,
                    end_time=end,
                    slot_minutes=minutes,
                )
            )

    password_hash = hash_password(DEMO_PASSWORD)  # once, not per user
    links: dict[str, list[Clinic] | list[Doctor] | list[Patient]] = {
        "clinic": clinics,
        "doctor": doctors,
        "patient": patients,
    }
    for email, role, link in LOGINS:
        user = User(email=email, password_hash=password_hash, role=role)
        if link:
            target = links[link[0]][link[1]]
            if isinstance(target, Clinic):
                user.clinic_id = target.id
            elif isinstance(target, Doctor):
                user.doctor_id, user.clinic_id = target.id, target.clinic_id
            else:
                user.patient_id = target.id
        session.add(user)

    # A week of bookings: every third slot of each working day, patients in turn, skipping
    # a patient who is booked elsewhere at that time or already holds
    # `max_future_per_doctor` - 1 with this doctor; a slot no patient may take stays free.
    per_doctor = max(max_future_per_doctor - 1, 0)
    busy: dict[int, list[Interval]] = {patient.id: [] for patient in patients}
    held: dict[int, int] = {}

    def may_take(patient: Patient, slot: Interval) -> bool:
        return held[patient.id] < per_doctor and not _overlaps(slot, busy[patient.id])

    turn = 0
    for doctor in doctors:
        held = dict.fromkeys(busy, 0)
        clinic = next(c for c in clinics if c.id == doctor.clinic_id)
        ranges = [
            TemplateRange(w, s, e, m) for w, s, e, m in weekly_template(doctor.default_slot_minutes)
        ]
        for offset in range(7):
            day = today + dt.timedelta(days=offset)
            for i, slot in enumerate(day_grid(day, ranges, ZoneInfo(clinic.timezone))):
                if i % 3:
                    continue
                patient, turn = _next_patient(patients, turn, slot, may_take)
                if patient is None:
                    continue
                held[patient.id] += 1
                busy[patient.id].append(slot)
                session.add(_visit(doctor, patient, slot))
    _add_history(session, clinics, doctors, patients, busy, today)
    await session.commit()
    # The rollups the analytics pages read, as `medbook analytics backfill` computes them:
    # a week per statement, on fresh planner statistics, keeps each under the timeout.
    await session.execute(text("ANALYZE appointments"))
    for days in day_chunks(today - dt.timedelta(days=HISTORY_DAYS), today):
        await refresh_days(await session.connection(), days)
        await session.commit()
    return True


def _overlaps(slot: Interval, taken: list[Interval]) -> bool:
    return any(slot.start < other.end and other.start < slot.end for other in taken)


def _next_patient(
    patients: list[Patient],
    turn: int,
    slot: Interval,
    fits: Callable[[Patient, Interval], bool],
) -> tuple[Patient | None, int]:
    """The first patient from `turn` on who fits the slot, and whose turn is next."""
    in_turn = patients[turn:] + patients[:turn]
    patient = next((p for p in in_turn if fits(p, slot)), None)
    if patient is None:
        return None, turn
    return patient, (patients.index(patient) + 1) % len(patients)


def _visit(doctor: Doctor, patient: Patient, slot: Interval, **state: Any) -> Appointment:
    return Appointment(
        doctor_id=doctor.id,
        patient_id=patient.id,
        clinic_id=doctor.clinic_id,
        starts_at=slot.start,
        ends_at=slot.end,
        reason="Check-up",
        **state,
    )


def _add_history(
    session: AsyncSession,
    clinics: list[Clinic],
    doctors: list[Doctor],
    patients: list[Patient],
    busy: dict[int, list[Interval]],
    today: dt.date,
) -> None:
    """HISTORY_DAYS of past visits: each slot booked by chance, then completed, missed or
    cancelled (by chance too, with a seeded generator so every demo is alike). Patients
    take turns and are never in two places at once; the booking cap is for the future
    only."""
    chance = random.Random(23)
    turn = 0

    def free(patient: Patient, slot: Interval) -> bool:
        return not _overlaps(slot, busy[patient.id])

    for doctor in doctors:
        clinic = next(c for c in clinics if c.id == doctor.clinic_id)
        ranges = [
            TemplateRange(w, s, e, m) for w, s, e, m in weekly_template(doctor.default_slot_minutes)
        ]
        for offset in range(HISTORY_DAYS, 0, -1):
            day = today - dt.timedelta(days=offset)
            for slot in day_grid(day, ranges, ZoneInfo(clinic.timezone)):
                if chance.random() >= HISTORY_BOOKED:
                    continue
                patient, turn = _next_patient(patients, turn, slot, free)
                if patient is None:
                    continue
                busy[patient.id].append(slot)
                status = chance.choices(OUTCOMES, OUTCOME_WEIGHTS)[0]
                booked_at = slot.start - dt.timedelta(
                    days=chance.randint(1, 21), hours=chance.randint(0, 8)
                )
                appointment = _visit(
                    doctor, patient, slot, status=status, created_at=booked_at, updated_at=slot.end
                )
                if status == "completed":
                    appointment.checked_in_at = slot.start - dt.timedelta(minutes=5)
                elif status == "cancelled":
                    before = dt.timedelta(hours=chance.choice((2, 20, 50, 120)))
                    appointment.cancelled_at = max(booked_at, slot.start - before)
                    appointment.updated_at = appointment.cancelled_at
                    appointment.cancel_reason = "patient cancelled"
                session.add(appointment)
