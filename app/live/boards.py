"""Read models for the live pages: a doctor's week of slots, a clinic's day board, a
doctor's day. Plain data for templates; every query states what it loads."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app import i18n
from app.appointments.queries import in_conflict
from app.appointments.rules import UNDO_CHECK_IN, BookingRules, for_visit_type
from app.i18n import N_, gettext
from app.scheduling.availability import local_day_bounds
from app.scheduling.slots import CachedSlot, DaySlots, SlotCache
from app.zones import zone
from db.models import Appointment, Clinic, Doctor, Patient, User

# Why a slot cannot be booked, in the patient's words: only a taken slot may free up.
# The words are msgids: `SlotView.why` translates them into the viewer's language.
SLOT_STATES = {
    "free": N_("free"),
    "taken": N_("taken"),
    "away": N_("doctor away"),
    "past": N_("past"),
    "too_soon": N_("too late to book online"),
    "not_yet": N_("not bookable yet"),
}


@dataclass(frozen=True, slots=True)
class SlotView:
    start: str  # ISO 8601 with the clinic's offset: data-slot-start
    label: str  # 09:30
    state: str  # a key of SLOT_STATES

    @property
    def available(self) -> bool:
        return self.state == "free"

    @property
    def why(self) -> str:
        """Why it cannot be booked, in the current language (plain gettext: the templates'
        `_()` would cost a context call, Markup and formatting on every slot of a week)."""
        return gettext(SLOT_STATES[self.state])


@dataclass(frozen=True, slots=True)
class DayView:
    doctor_id: int
    day: dt.date
    slots: list[SlotView]
    visit_type_id: int | None = None  # whose visits these are; None: the plain slots


def slot_state(slot: CachedSlot, now: float, first: float, last: float) -> str:
    """Why `slot` can or cannot be booked; leave first (it never frees up), then time."""
    if slot.blocked:
        return "away"
    if slot.starts < now:
        return "past"
    if slot.taken:
        return "taken"
    if slot.starts < first:
        return "too_soon"
    if slot.starts > last:
        return "not_yet"
    return "free"


def day_view(
    doctor_id: int,
    day: DaySlots,
    lo: dt.datetime,
    hi: dt.datetime,
    now: dt.datetime,
    visit_type_id: int | None = None,
) -> DayView:
    first, last, instant = lo.timestamp(), hi.timestamp(), now.timestamp()
    return DayView(
        doctor_id,
        day.day,
        [
            SlotView(s.start_local, s.start_local[11:16], slot_state(s, instant, first, last))
            for s in day.slots
        ],
        visit_type_id,
    )


async def doctor_days(
    cache: SlotCache,
    doctor_id: int,
    first: dt.date,
    count: int,
    rules: BookingRules,
    now: dt.datetime,
    visit_type_id: int | None = None,
) -> tuple[str, list[DayView]]:
    """`count` days of a doctor's slots (or visits of one type), bookable within the
    notice and horizon (the type's where it sets them), and the clinic zone."""
    found = await cache.days(doctor_id, first, count, visit_type_id=visit_type_id)
    rules = for_visit_type(rules, found.visit_type)
    lo, hi = now + rules.min_notice, now + rules.horizon
    return found.timezone, [day_view(doctor_id, d, lo, hi, now, visit_type_id) for d in found.days]


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
    conflict: bool = False  # overlaps leave or a closure that did not cancel it
    undoable: bool = False  # a check-in recent enough to be taken back
    on_the_day: bool = False  # today in the clinic: the day a check-in is possible
    confirmed: bool = False  # the patient confirmed from the reminder


@dataclass(frozen=True, slots=True)
class Row:
    """One time of the clinic's grid in one doctor's column.

    `slot`: a slot of this doctor's hours (it carries data-slot-start and data-available);
    otherwise either appointments off the hours (the template changed after they were
    booked) or an empty filler, so the rows of every column line up.
    """

    label: str
    start: str
    cards: list[Card]
    slot: bool = True
    available: bool = False


@dataclass(frozen=True, slots=True)
class Column:
    doctor_id: int
    doctor_name: str
    day: dt.date
    rows: list[Row]


# The desk may book a slot that started this long ago (a patient who walks in late).
WALK_IN_GRACE = dt.timedelta(minutes=15)


async def _cards(
    session: AsyncSession,
    day: dt.date,
    timezone: str,
    now: dt.datetime | None = None,
    **where: int | list[int],
) -> list[Card]:
    tz = zone(timezone)
    now = now or dt.datetime.now(dt.UTC)
    undo_from, today = now - UNDO_CHECK_IN, now.astimezone(tz).date()
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
            Appointment.checked_in_at,
            Appointment.confirmed_at,
            (Appointment.status.in_(("booked", "checked_in")) & in_conflict()).label("conflict"),
        )
        .join(Patient, Patient.id == Appointment.patient_id)
        .where(Appointment.starts_at >= bounds.start, Appointment.starts_at < bounds.end)
        .order_by(Appointment.starts_at, Appointment.id)
    )
    for column, value in where.items():
        attribute = getattr(Appointment, column)
        query = query.where(attribute.in_(value) if isinstance(value, list) else attribute == value)
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
                conflict=bool(row.conflict),
                undoable=row.status == "checked_in"
                and row.checked_in_at is not None
                and row.checked_in_at >= undo_from,
                on_the_day=day == today,
                confirmed=row.confirmed_at is not None,
            )
        )
    return cards


def _instant(start: str) -> dt.datetime:
    return dt.datetime.fromisoformat(start)


def _column(
    doctor_id: int,
    doctor_name: str,
    day: DaySlots,
    cards: list[Card],
    grid: list[str],
    bookable_from: float,
) -> Column:
    slots = {s.start_local: s for s in day.slots}
    by_start: dict[str, list[Card]] = {}
    for card in cards:
        by_start.setdefault(card.start, []).append(card)
    rows = []
    for start in grid:
        slot = slots.get(start)
        here = by_start.get(start, [])
        label = start[11:16]
        if slot is not None:
            available = not slot.taken and slot.starts >= bookable_from
            rows.append(Row(label, start, here, slot=True, available=available))
        else:
            rows.append(Row(label, start, here, slot=False))
    return Column(doctor_id, doctor_name, day.day, rows)


async def clinic_board(
    session: AsyncSession,
    cache: SlotCache,
    clinic_id: int,
    day: dt.date,
    *,
    now: dt.datetime | None = None,
    only_doctor_id: int | None = None,
) -> tuple[Clinic, list[Column]]:
    """The front desk's board: one column per active doctor of the clinic, all on one time
    grid (every doctor's slot starts and appointment times), so rows line up across
    columns. A slot is available when it is free and the desk could still book it
    (started at most WALK_IN_GRACE ago). `only_doctor_id`: just that doctor's column, on
    the same grid (a live update redraws one column)."""
    clinic = await session.get_one(Clinic, clinic_id)
    active: ColumnElement[bool] = Doctor.active.is_(True)
    if only_doctor_id is not None:  # a live update may name a doctor just deactivated
        active = active | (Doctor.id == only_doctor_id)
    doctors = (
        await session.execute(
            select(Doctor.id, Doctor.full_name)
            .where(Doctor.clinic_id == clinic_id, active)
            .order_by(Doctor.full_name, Doctor.id)
        )
    ).all()
    ids = [d.id for d in doctors]
    cards = await _cards(session, day, clinic.timezone, now, doctor_id=ids) if ids else []
    days = {d.id: (await cache.days(d.id, day, 1))[1][0] for d in doctors}
    grid = sorted(
        {s.start_local for d in days.values() for s in d.slots} | {c.start for c in cards},
        key=_instant,
    )
    bookable_from = ((now or dt.datetime.now(dt.UTC)) - WALK_IN_GRACE).timestamp()
    columns = [
        _column(
            d.id,
            d.full_name,
            days[d.id],
            [c for c in cards if c.doctor_id == d.id],
            grid,
            bookable_from,
        )
        for d in doctors
        if only_doctor_id is None or d.id == only_doctor_id
    ]
    return clinic, columns


async def board_column(
    session: AsyncSession,
    cache: SlotCache,
    doctor_id: int,
    doctor_name: str,
    day: dt.date,
    *,
    now: dt.datetime | None = None,
) -> Column:
    """A doctor's column of the board, on the clinic's grid (see `clinic_board`)."""
    clinic_id = await session.scalar(select(Doctor.clinic_id).where(Doctor.id == doctor_id))
    if clinic_id is None:
        return Column(doctor_id, doctor_name, day, [])
    _, columns = await clinic_board(
        session, cache, clinic_id, day, now=now, only_doctor_id=doctor_id
    )
    return columns[0] if columns else Column(doctor_id, doctor_name, day, [])


async def doctor_day(
    session: AsyncSession, doctor_id: int, day: dt.date, now: dt.datetime | None = None
) -> tuple[Doctor, Clinic, list[Card]]:
    doctor, clinic = (
        await session.execute(
            select(Doctor, Clinic)
            .join(Clinic, Clinic.id == Doctor.clinic_id)
            .where(Doctor.id == doctor_id)
        )
    ).one()
    return doctor, clinic, await _cards(session, day, clinic.timezone, now, doctor_id=doctor_id)


@dataclass(frozen=True, slots=True)
class PatientHit:
    id: int
    full_name: str
    date_of_birth: dt.date | None


async def search_patients(session: AsyncSession, text: str, limit: int = 20) -> list[PatientHit]:
    """Patients any word of whose name starts with `text` ("fis" finds "Lena Fischer" and
    "Fischer-Lang"), case-insensitive; names that start with it come first.

    The front desk searches the shared patient directory (name and date of birth only), so
    that a patient new to this clinic can be booked as a walk-in. A whole-name prefix can
    use `ix_patients_lower_full_name`; a word inside the name is found by scanning the
    table until a trigram index (pg_trgm GIN on `lower(full_name)`) serves all three.
    """
    text = " ".join(text.lower().split())
    if len(text) < 2:
        return []
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    name = func.lower(Patient.full_name)
    starts = name.like(f"{escaped}%")
    rows = await session.execute(
        select(Patient.id, Patient.full_name, Patient.date_of_birth)
        .where(starts | name.like(f"% {escaped}%") | name.like(f"%-{escaped}%"))
        .order_by(starts.desc(), name, Patient.id)
        .limit(limit)
    )
    return [PatientHit(*row) for row in rows]


def clinic_today(timezone: str, now: dt.datetime) -> dt.date:
    return now.astimezone(zone(timezone)).date()


@dataclass(frozen=True, slots=True)
class MyAppointment:
    """One of a patient's appointments as their own page shows it."""

    id: int
    doctor_id: int
    doctor_name: str
    clinic_name: str
    timezone: str
    label: str  # Tue 30 Mar 2027, 09:00 CEST
    day: str  # the clinic-local date, for "book again" and "reschedule"
    status: str
    by_clinic: bool  # cancelled by the clinic (not by the patient)
    cancel_reason: str | None


async def my_appointments(
    session: AsyncSession, patient_id: int, now: dt.datetime
) -> tuple[list[MyAppointment], list[MyAppointment]]:
    """A patient's coming appointments and their last 50 past ones. A coming one the
    clinic cancelled stays (so none silently vanishes); the patient's own cancellations
    leave the list. A cancellation by anyone but the patient's own login (`changed_by`:
    a cancelled appointment's last change is its cancellation) was the clinic's."""
    canceller = aliased(User)
    query = (
        select(
            Appointment.id,
            Appointment.doctor_id,
            Doctor.full_name,
            Clinic.name,
            Clinic.timezone,
            Appointment.starts_at,
            Appointment.status,
            canceller.patient_id.is_distinct_from(patient_id).label("by_clinic"),
            Appointment.cancel_reason,
        )
        .join(Doctor, Doctor.id == Appointment.doctor_id)
        .join(Clinic, Clinic.id == Appointment.clinic_id)
        .outerjoin(canceller, canceller.id == Appointment.changed_by)
        # a hold shows as an offer (app/waitlist/offers.py), not as an appointment
        .where(Appointment.patient_id == patient_id, Appointment.status != "held")
    )
    coming = await session.execute(
        query.where(Appointment.ends_at > now).order_by(Appointment.starts_at).limit(100)
    )
    past = await session.execute(
        query.where(Appointment.ends_at <= now).order_by(Appointment.starts_at.desc()).limit(50)
    )
    upcoming = [a for a in map(_mine, coming) if a.status != "cancelled" or a.by_clinic]
    return upcoming, [_mine(r) for r in past]


def _mine(row: Any) -> MyAppointment:
    local = row.starts_at.astimezone(zone(row.timezone))
    return MyAppointment(
        id=row.id,
        doctor_id=row.doctor_id,
        doctor_name=row.full_name,
        clinic_name=row.name,
        timezone=row.timezone,
        label=i18n.moment(row.starts_at, row.timezone),
        day=local.date().isoformat(),
        status=row.status,
        by_clinic=row.status == "cancelled" and bool(row.by_clinic),
        cancel_reason=row.cancel_reason,
    )
