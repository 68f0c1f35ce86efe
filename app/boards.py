"""Read models for the live pages: a doctor's week of slots, a clinic's day board, a
doctor's day. Plain data for templates; every query states what it loads."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.availability import local_day_bounds
from app.slots import DaySlots, SlotCache
from db.models import Appointment, Clinic, Doctor, Patient


@dataclass(frozen=True, slots=True)
class SlotView:
    start: str  # ISO 8601 with the clinic's offset: data-slot-start
    label: str  # 09:30
    available: bool


@dataclass(frozen=True, slots=True)
class DayView:
    doctor_id: int
    day: dt.date
    slots: list[SlotView]


def day_view(doctor_id: int, day: DaySlots, lo: dt.datetime, hi: dt.datetime) -> DayView:
    first, last = lo.timestamp(), hi.timestamp()
    return DayView(
        doctor_id,
        day.day,
        [
            SlotView(s.start_local, s.start_local[11:16], not s.taken and first <= s.starts <= last)
            for s in day.slots
        ],
    )


async def doctor_days(
    cache: SlotCache,
    doctor_id: int,
    first: dt.date,
    count: int,
    lo: dt.datetime,
    hi: dt.datetime,
) -> tuple[str, list[DayView]]:
    """`count` days of a doctor's slots, bookable within [lo, hi], and the clinic zone."""
    timezone, days = await cache.days(doctor_id, first, count)
    return timezone, [day_view(doctor_id, d, lo, hi) for d in days]


@dataclass(frozen=True, slots=True)
class Card:
    """One appointment as staff see it on the board or the doctor's day."""

    id: int
    doctor_id: int
    patient_id: int
    patient_name: str
    start: str  # ISO with offset
    label: str  # 09:30
    status: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    start: str
    cards: list[Card]


@dataclass(frozen=True, slots=True)
class Column:
    doctor_id: int
    doctor_name: str
    day: dt.date
    rows: list[Row]


async def _cards(session: AsyncSession, day: dt.date, timezone: str, **where: int) -> list[Card]:
    tz = ZoneInfo(timezone)
    bounds = local_day_bounds(day, tz)
    query = (
        select(
            Appointment.id,
            Appointment.doctor_id,
            Appointment.patient_id,
            Patient.full_name,
            Appointment.starts_at,
            Appointment.status,
            Appointment.reason,
        )
        .join(Patient, Patient.id == Appointment.patient_id)
        .where(Appointment.starts_at >= bounds.start, Appointment.starts_at < bounds.end)
        .order_by(Appointment.starts_at, Appointment.id)
    )
    for column, value in where.items():
        query = query.where(getattr(Appointment, column) == value)
    cards = []
    for row in await session.execute(query):
        local = row.starts_at.astimezone(tz)
        cards.append(
            Card(
                row.id,
                row.doctor_id,
                row.patient_id,
                row.full_name,
                local.isoformat(),
                local.strftime("%H:%M"),
                row.status,
                row.reason,
            )
        )
    return cards


async def board_column(
    session: AsyncSession, cache: SlotCache, doctor_id: int, doctor_name: str, day: dt.date
) -> Column:
    """A doctor's day on the board: every slot of the template, with its appointments;
    appointments off the grid (the template changed after booking) get rows of their own."""
    timezone, (slots,) = await cache.days(doctor_id, day, 1)
    cards = await _cards(session, day, timezone, doctor_id=doctor_id)
    by_start: dict[str, list[Card]] = {}
    for card in cards:
        by_start.setdefault(card.start, []).append(card)
    rows = [
        Row(s.start_local[11:16], s.start_local, by_start.pop(s.start_local, []))
        for s in slots.slots
    ]
    rows += [Row(c[0].label, start, c) for start, c in by_start.items()]
    rows.sort(key=lambda r: r.start)
    return Column(doctor_id, doctor_name, day, rows)


async def clinic_board(
    session: AsyncSession, cache: SlotCache, clinic_id: int, day: dt.date
) -> tuple[Clinic, list[Column]]:
    """The front desk's board: one column per active doctor of the clinic."""
    clinic = await session.get_one(Clinic, clinic_id)
    doctors = (
        await session.execute(
            select(Doctor.id, Doctor.full_name)
            .where(Doctor.clinic_id == clinic_id, Doctor.active.is_(True))
            .order_by(Doctor.full_name)
        )
    ).all()
    columns = [await board_column(session, cache, d.id, d.full_name, day) for d in doctors]
    return clinic, columns


async def doctor_day(
    session: AsyncSession, doctor_id: int, day: dt.date
) -> tuple[Doctor, Clinic, list[Card]]:
    doctor, clinic = (
        await session.execute(
            select(Doctor, Clinic)
            .join(Clinic, Clinic.id == Doctor.clinic_id)
            .where(Doctor.id == doctor_id)
        )
    ).one()
    return doctor, clinic, await _cards(session, day, clinic.timezone, doctor_id=doctor_id)


@dataclass(frozen=True, slots=True)
class PatientHit:
    id: int
    full_name: str
    date_of_birth: dt.date | None


async def search_patients(session: AsyncSession, text: str, limit: int = 20) -> list[PatientHit]:
    """Patients whose name starts with `text` (case-insensitive; the name index)."""
    text = text.strip().lower()
    if len(text) < 2:
        return []
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    rows = await session.execute(
        select(Patient.id, Patient.full_name, Patient.date_of_birth)
        .where(func.lower(Patient.full_name).like(f"{escaped}%"))
        .order_by(func.lower(Patient.full_name))
        .limit(limit)
    )
    return [PatientHit(*row) for row in rows]


def clinic_today(timezone: str, now: dt.datetime) -> dt.date:
    return now.astimezone(ZoneInfo(timezone)).date()
