"""Reading appointments: who may see which, one by id, pages of a list, free alternatives."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Select, and_, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.identity import Principal
from app.appointments.rules import BookingRules
from app.errors import Invalid, NotFound
from app.i18n import gettext
from app.scheduling.availability import Interval, Visit, day_slots
from app.scheduling.slots import day_window, load_doctor_days
from db.models import Appointment, Clinic, Doctor, Patient, ScheduleException

ALTERNATIVES = 3
# How far ahead `first_free` reads a doctor's days per query.
SEARCH_DAYS = 14


def visible(actor: Principal) -> Any:
    """The SQL condition for the appointments `actor` may see. A waitlist hold is nobody's
    appointment yet: it is seen (and accepted) as an offer, through app/waitlist/."""
    return and_(_scope(actor), Appointment.status != "held")


def _scope(actor: Principal) -> Any:
    if actor.role == "admin":
        return and_(True)
    if actor.role == "front_desk":
        return Appointment.clinic_id == actor.clinic_id
    if actor.role == "doctor":
        return Appointment.doctor_id == actor.doctor_id
    return Appointment.patient_id == actor.patient_id


async def get_visible(session: AsyncSession, actor: Principal, appointment_id: int) -> Appointment:
    """The appointment if the actor may see it; NotFound otherwise (no existence leak)."""
    query = select(Appointment).where(Appointment.id == appointment_id, visible(actor))
    appointment = await session.scalar(query)
    if appointment is None:
        raise NotFound(
            gettext("appointment %(appointment_id)s not found") % {"appointment_id": appointment_id}
        )
    return appointment


async def clinic_timezone(session: AsyncSession, doctor_id: int) -> str:
    """The time zone of the doctor's clinic (for showing times); UTC for no such doctor."""
    tz = await session.scalar(
        select(Clinic.timezone)
        .join(Doctor, Doctor.clinic_id == Clinic.id)
        .where(Doctor.id == doctor_id)
    )
    return tz or "UTC"


async def nearest_free(
    session: AsyncSession,
    doctor_id: int,
    around: dt.datetime,
    rules: BookingRules,
    now: dt.datetime,
    count: int = ALTERNATIVES,
    visit: Visit | None = None,
) -> list[Interval]:
    """The free slots (of the `visit`'s shape, if given) closest in time to `around`,
    within a week either side."""
    lo, hi = around - dt.timedelta(days=7), around + dt.timedelta(days=8)
    data = await load_doctor_days(session, doctor_id, lo, hi)
    tz = ZoneInfo(data.timezone)
    first = around.astimezone(tz).date() - dt.timedelta(days=7)
    free = [
        Interval(s.start, s.end)
        for i in range(15)
        for s in day_slots(
            first + dt.timedelta(days=i),
            data.ranges,
            tz,
            booked=data.booked,
            blocked=data.blocked,
            not_before=now + rules.min_notice,
            not_after=now + rules.horizon,
            visit=visit,
        )
        if s.available
    ]
    free.sort(key=lambda s: abs((s.start - around).total_seconds()))
    return sorted(free[:count], key=lambda s: s.start)


async def first_free(
    session: AsyncSession,
    doctor_id: int,
    day: dt.date,
    rules: BookingRules,
    now: dt.datetime,
    visit: Visit | None = None,
) -> Interval | None:
    """The doctor's earliest free, bookable slot (of the `visit`'s shape, if given) from
    the start of the clinic-local `day` on (outside leave and closures, within the
    horizon); None when there is none."""
    not_before, not_after = now + rules.min_notice, now + rules.horizon
    timezone = await clinic_timezone(session, doctor_id)
    tz = ZoneInfo(timezone)
    first = max(day, not_before.astimezone(tz).date())
    while (start := day_window(first, timezone).start) <= not_after:
        data = await load_doctor_days(
            session, doctor_id, start, start + dt.timedelta(days=SEARCH_DAYS + 1)
        )
        for i in range(SEARCH_DAYS):
            for s in day_slots(
                first + dt.timedelta(days=i),
                data.ranges,
                tz,
                booked=data.booked,
                blocked=data.blocked,
                not_before=not_before,
                not_after=not_after,
                visit=visit,
            ):
                if s.available:
                    return Interval(s.start, s.end)
        first += dt.timedelta(days=SEARCH_DAYS)
    return None


def in_conflict() -> ColumnElement[bool]:
    """SQL: the appointment overlaps leave or a closure of its doctor or of its whole
    clinic (an exception added without cancelling what it covers leaves these)."""
    return exists().where(
        or_(
            ScheduleException.doctor_id == Appointment.doctor_id,
            and_(
                ScheduleException.doctor_id.is_(None),
                ScheduleException.clinic_id == Appointment.clinic_id,
            ),
        ),
        ScheduleException.starts_at < Appointment.ends_at,
        ScheduleException.ends_at > Appointment.starts_at,
    )


@dataclass(frozen=True, slots=True)
class AppointmentRow:
    id: int
    doctor_id: int
    doctor_name: str
    patient_id: int
    patient_name: str
    clinic_id: int
    timezone: str
    starts_at: dt.datetime
    ends_at: dt.datetime
    status: str
    reason: str | None


def _cursor_encode(row: AppointmentRow) -> str:
    raw = f"{row.starts_at.timestamp():.6f}:{row.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _cursor_decode(cursor: str) -> tuple[dt.datetime, int]:
    try:
        stamp, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().split(":")
        return dt.datetime.fromtimestamp(float(stamp), dt.UTC), int(row_id)
    except (ValueError, UnicodeDecodeError):
        raise Invalid(gettext("cursor is not one this API returned")) from None


async def list_appointments(
    session: AsyncSession,
    actor: Principal,
    *,
    now: dt.datetime,
    doctor_id: int | None = None,
    patient_id: int | None = None,
    clinic_id: int | None = None,
    day: dt.date | None = None,
    when: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[AppointmentRow], str | None]:
    """A page of the appointments the actor may see, filtered, in time order.

    Args:
        day: one clinic-local day (with doctor_id or clinic_id).
        when: `upcoming` (default without a day) or `past` (newest first).
        cursor: the `next_cursor` of the previous page.

    Returns:
        The rows and the cursor of the next page (None at the end).
    """
    if not 1 <= limit <= 200:
        raise Invalid(gettext("limit must be between 1 and 200"))
    if when not in (None, "upcoming", "past"):
        raise Invalid(gettext("when must be upcoming or past"))
    query: Select = (
        select(
            Appointment.id,
            Appointment.doctor_id,
            Doctor.full_name,
            Appointment.patient_id,
            Patient.full_name,
            Appointment.clinic_id,
            Clinic.timezone,
            Appointment.starts_at,
            Appointment.ends_at,
            Appointment.status,
            Appointment.reason,
        )
        .join(Doctor, Doctor.id == Appointment.doctor_id)
        .join(Patient, Patient.id == Appointment.patient_id)
        .join(Clinic, Clinic.id == Appointment.clinic_id)
        .where(visible(actor))
    )
    if doctor_id is not None:
        query = query.where(Appointment.doctor_id == doctor_id)
    if patient_id is not None:
        query = query.where(Appointment.patient_id == patient_id)
    if clinic_id is not None:
        query = query.where(Appointment.clinic_id == clinic_id)
    descending = when == "past"
    if day is not None:
        window = day_window(day, await _zone_for_filter(session, doctor_id, clinic_id, actor))
        query = query.where(
            Appointment.starts_at >= window.start, Appointment.starts_at < window.end
        )
    elif descending:
        query = query.where(Appointment.starts_at < now)
    else:
        query = query.where(Appointment.starts_at >= now)
    if cursor:
        at, after_id = _cursor_decode(cursor)
        if descending:
            query = query.where(
                or_(
                    Appointment.starts_at < at,
                    and_(Appointment.starts_at == at, Appointment.id < after_id),
                )
            )
        else:
            query = query.where(
                or_(
                    Appointment.starts_at > at,
                    and_(Appointment.starts_at == at, Appointment.id > after_id),
                )
            )
    order = (
        (Appointment.starts_at.desc(), Appointment.id.desc())
        if descending
        else (Appointment.starts_at, Appointment.id)
    )
    rows = [
        AppointmentRow(*r) for r in await session.execute(query.order_by(*order).limit(limit + 1))
    ]
    next_cursor = _cursor_encode(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


async def _zone_for_filter(
    session: AsyncSession, doctor_id: int | None, clinic_id: int | None, actor: Principal
) -> str:
    if actor.timezone is not None and _own_day(doctor_id, clinic_id, actor):
        return actor.timezone
    if doctor_id is not None:
        return await clinic_timezone(session, doctor_id)
    clinic = clinic_id or actor.clinic_id
    if clinic is None:
        raise Invalid(gettext("a day filter needs doctor_id or clinic_id"))
    tz = await session.scalar(select(Clinic.timezone).where(Clinic.id == clinic))
    if tz is None:
        raise NotFound(gettext("clinic %(clinic)s does not exist") % {"clinic": clinic})
    return tz


def _own_day(doctor_id: int | None, clinic_id: int | None, actor: Principal) -> bool:
    """The filter names the actor's own doctor, or (for staff of no doctor) their own
    clinic: the Principal carries that clinic's zone (the mix's doctor-days and desks'
    clinic-days, a round trip each otherwise)."""
    if doctor_id is not None:
        return doctor_id == actor.doctor_id
    return actor.doctor_id is None and (clinic_id or actor.clinic_id) == actor.clinic_id
