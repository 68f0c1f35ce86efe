"""Demo data: two clinics in different time zones, doctors, patients, a week of bookings.

Idempotent: a second run finds the demo clinics and changes nothing.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.passwords import hash_password
from app.scheduling.availability import Interval, TemplateRange, day_grid
from db.models import Appointment, Clinic, Doctor, Patient, ScheduleTemplate, User

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
        return held[patient.id] < per_doctor and not any(
            slot.start < other.end and other.start < slot.end for other in busy[patient.id]
        )

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
                in_turn = patients[turn:] + patients[:turn]
                patient = next((p for p in in_turn if may_take(p, slot)), None)
                if patient is None:
                    continue
                turn = (patients.index(patient) + 1) % len(patients)
                held[patient.id] += 1
                busy[patient.id].append(slot)
                session.add(
                    Appointment(
                        doctor_id=doctor.id,
                        patient_id=patient.id,
                        clinic_id=clinic.id,
                        starts_at=slot.start,
                        ends_at=slot.end,
                        reason="Check-up",
                    )
                )
    await session.commit()
    return True
