"""Reading appointments: who may see which, one by id, pages of a list, free alternatives."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, and_, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.access.identity import Principal
from app.appointments.rules import BookingRules
from app.errors import Invalid, NotFound
from app.i18n import gettext
from app.scheduling.availability import Interval, Visit, day_slots
from app.scheduling.slots import day_window, load_doctor_days
from app.zones import zone
from db.models import Appointment, Clinic, Doctor, ScheduleException
from db.session import driver_fetch, driver_fetchall

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
    tz = zone(data.timezone)
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
    tz = zone(timezone)
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


class AppointmentRow(NamedTuple):
    """One appointment of a list, as `_LIST_SQL` reads it (a tuple: a page of them is
    built from the driver's rows without a Python `__init__` per row)."""

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


# What a list shows of each appointment (`AppointmentRow`, in its order).
_LIST_SQL = """SELECT a.id, a.doctor_id, d.full_name, a.patient_id, p.full_name, a.clinic_id,
       c.timezone, a.starts_at, a.ends_at, a.status, a.reason
  FROM appointments a
  JOIN doctors d ON d.id = a.doctor_id
  JOIN patients p ON p.id = a.patient_id
  JOIN clinics c ON c.id = a.clinic_id"""


def _scope_sql(actor: Principal) -> tuple[list[str], list[Any]]:
    """`visible(actor)` as SQL conditions on `a` and their arguments ($1 ...)."""
    where = ["a.status <> 'held'"]
    column, value = {
        "admin": (None, None),
        "front_desk": ("clinic_id", actor.clinic_id),
        "doctor": ("doctor_id", actor.doctor_id),
    }.get(actor.role, ("patient_id", actor.patient_id))
    if column is None:
        return where, []
    if value is None:  # as `visible` compares with NULL: nothing
        where.append("false")
        return where, []
    where.append(f"a.{column} = $1")
    return where, [value]


async def list_appointments(
    reader: AsyncSession | AsyncEngine,
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
        reader: a session (its connection), or an engine: a pooled connection for the
            statement alone, outside any session (`db.session.driver_fetchall`).
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
    # Plain SQL through asyncpg (`driver_fetch`), one text per combination of filters
    # (each prepared once per connection): building the expression and running it through
    # SQLAlchemy's layers cost more CPU than the query itself (bench/README.md, cpu17b).
    where, args = _scope_sql(actor)
    for column, value in (
        ("doctor_id", doctor_id),
        ("patient_id", patient_id),
        ("clinic_id", clinic_id),
    ):
        if value is not None:
            args.append(value)
            where.append(f"a.{column} = ${len(args)}")
    descending = when == "past"
    if day is not None:
        window = day_window(day, await _zone_for_filter(reader, doctor_id, clinic_id, actor))
        args += [window.start, window.end]
        where.append(f"a.starts_at >= ${len(args) - 1} AND a.starts_at < ${len(args)}")
    else:
        args.append(now)
        where.append(f"a.starts_at {'<' if descending else '>='} ${len(args)}")
    if cursor:
        at, after_id = _cursor_decode(cursor)
        args += [at, after_id]
        than = "<" if descending else ">"
        where.append(
            f"(a.starts_at {than} ${len(args) - 1}"
            f" OR (a.starts_at = ${len(args) - 1} AND a.id {than} ${len(args)}))"
        )
    order = "a.starts_at DESC, a.id DESC" if descending else "a.starts_at, a.id"
    args.append(limit + 1)
    sql = f"{_LIST_SQL} WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ${len(args)}"
    found = await _fetch(reader, sql, args)
    rows = [AppointmentRow._make(r) for r in found]
    next_cursor = _cursor_encode(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


async def _fetch(reader: AsyncSession | AsyncEngine, sql: str, args: list[Any]) -> list:
    if isinstance(reader, AsyncEngine):
        return await driver_fetchall(reader, sql, *args)
    return await driver_fetch(await reader.connection(), sql, args)


async def _zone_for_filter(
    reader: AsyncSession | AsyncEngine,
    doctor_id: int | None,
    clinic_id: int | None,
    actor: Principal,
) -> str:
    if actor.timezone is not None and _own_day(doctor_id, clinic_id, actor):
        return actor.timezone
    if doctor_id is not None:
        found = await _fetch(reader, _DOCTORS_ZONE_SQL, [doctor_id])
        return str(found[0][0]) if found else "UTC"  # as `clinic_timezone`
    clinic = clinic_id or actor.clinic_id
    if clinic is None:
        raise Invalid(gettext("a day filter needs doctor_id or clinic_id"))
    found = await _fetch(reader, "SELECT timezone FROM clinics WHERE id = $1", [clinic])
    if not found:
        raise NotFound(gettext("clinic %(clinic)s does not exist") % {"clinic": clinic})
    return str(found[0][0])


_DOCTORS_ZONE_SQL = (
    "SELECT c.timezone FROM clinics c JOIN doctors d ON d.clinic_id = c.id WHERE d.id = $1"
)


def _own_day(doctor_id: int | None, clinic_id: int | None, actor: Principal) -> bool:
    """The filter names the actor's own doctor, or (for staff of no doctor) their own
    clinic: the Principal carries that clinic's zone (the mix's doctor-days and desks'
    clinic-days, a round trip each otherwise)."""
    if doctor_id is not None:
        return doctor_id == actor.doctor_id
    return actor.doctor_id is None and (clinic_id or actor.clinic_id) == actor.clinic_id
