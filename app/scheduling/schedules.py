"""Doctors' weekly templates and schedule exceptions (leave, holidays, closures)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, ColumnElement, Text, delete, insert, literal, select
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from app.access import audit
from app.appointments import commands, rules
from app.errors import Conflict, Invalid, NotFound
from app.i18n import gettext
from app.live.effects import AppointmentChange, Effects
from app.scheduling.slots import local_days
from app.scheduling.visit_types import MAX_HORIZON_DAYS
from db.models import (
    EXCEPTION_KINDS,
    Appointment,
    Clinic,
    Doctor,
    ScheduleException,
    ScheduleTemplate,
    ScheduleTemplateHistory,
)

# Days of cache to forget when a template changes: everything bookable, plus a margin.
INVALIDATE_DAYS_BACK = 1


def changed_days(
    starts_at: dt.datetime, ends_at: dt.datetime, timezone: str, now: dt.datetime
) -> list[dt.date]:
    """The clinic-local days of leave or a closure whose cached slots and open pages must
    hear of it: those it touches from INVALIDATE_DAYS_BACK before today to the longest
    booking horizon a visit type may have.

    Nothing can be booked beyond that horizon, so a later day only shows hours, and one
    cached in the last minutes lives out the cache's TTL. Unbounded, every covered day
    of every doctor cost three Redis commands and a message after the commit: a fuzzed
    closure over centuries took over a second of CPU (docs/testing.md, suite16g)."""
    today = now.astimezone(ZoneInfo(timezone)).date()
    window_start = dt.datetime.combine(
        today - dt.timedelta(days=INVALIDATE_DAYS_BACK), dt.time(), ZoneInfo(timezone)
    )
    window_end = dt.datetime.combine(
        today + dt.timedelta(days=MAX_HORIZON_DAYS + 1), dt.time(), ZoneInfo(timezone)
    )
    start, end = max(starts_at, window_start), min(ends_at, window_end)
    return local_days(start, end, timezone) if start < end else []


@dataclass(frozen=True, slots=True)
class RangeIn:
    """One weekly range as given by an admin, in clinic-local wall time."""

    weekday: int
    start: dt.time
    end: dt.time
    slot_minutes: int
    valid_from: dt.date | None = None
    valid_to: dt.date | None = None


def validate_ranges(ranges: Sequence[RangeIn]) -> None:
    """Reject ranges that are malformed or overlap on a weekday while both are valid.

    Raises:
        Invalid: naming the first offending range (0-based position).
    """
    for i, r in enumerate(ranges):
        if not 0 <= r.weekday <= 6:
            raise Invalid(
                gettext("ranges[%(i)s]: weekday must be 0 (Monday) to 6 (Sunday)") % {"i": i}
            )
        if r.end <= r.start:
            raise Invalid(gettext("ranges[%(i)s]: end must be after start") % {"i": i})
        if not 5 <= r.slot_minutes <= 240:
            raise Invalid(
                gettext("ranges[%(i)s]: slot_minutes must be between 5 and 240") % {"i": i}
            )
        length = dt.datetime.combine(dt.date.min, r.end) - dt.datetime.combine(dt.date.min, r.start)
        if length < dt.timedelta(minutes=r.slot_minutes):
            raise Invalid(gettext("ranges[%(i)s]: the range is shorter than one slot") % {"i": i})
        if r.valid_from and r.valid_to and r.valid_to < r.valid_from:
            raise Invalid(gettext("ranges[%(i)s]: valid_to is before valid_from") % {"i": i})
    for i, a in enumerate(ranges):
        for j in range(i + 1, len(ranges)):
            b = ranges[j]
            if a.weekday != b.weekday or not (a.start < b.end and b.start < a.end):
                continue
            a_from, a_to = a.valid_from or dt.date.min, a.valid_to or dt.date.max
            b_from, b_to = b.valid_from or dt.date.min, b.valid_to or dt.date.max
            if a_from <= b_to and b_from <= a_to:
                raise Invalid(gettext("ranges[%(i)s] and ranges[%(j)s] overlap") % {"i": i, "j": j})


async def get_schedule(session: AsyncSession, doctor_id: int) -> tuple[str, list[RangeIn]]:
    """The doctor's clinic time zone and weekly ranges, ordered by weekday and start."""
    tz = await session.scalar(
        select(Clinic.timezone)
        .join(Doctor, Doctor.clinic_id == Clinic.id)
        .where(Doctor.id == doctor_id)
    )
    if tz is None:
        raise NotFound(gettext("doctor %(doctor_id)s does not exist") % {"doctor_id": doctor_id})
    rows = await session.scalars(
        select(ScheduleTemplate)
        .where(ScheduleTemplate.doctor_id == doctor_id)
        .order_by(ScheduleTemplate.weekday, ScheduleTemplate.start_time)
    )
    return tz, [
        RangeIn(r.weekday, r.start_time, r.end_time, r.slot_minutes, r.valid_from, r.valid_to)
        for r in rows
    ]


# The live ranges a replacement moves to the history, in the history's column order.
_KEPT = ("weekday", "start_time", "end_time", "slot_minutes", "valid_from", "valid_to")


async def replace_schedule(
    session: AsyncSession,
    effects: Effects,
    doctor_id: int,
    ranges: Sequence[RangeIn],
    *,
    today: dt.date,
    horizon_days: int,
    actor_user_id: int | None,
    reason: str | None = None,
) -> list[RangeIn]:
    """Replace the doctor's whole weekly template in one transaction. Commits.

    The replaced ranges move to doctor_schedule_template_history, stamped with the actor,
    the instant and the reason, and a `schedule.replaced` audit event commits with them.
    Existing appointments are kept even if they fall outside the new hours: the front
    desk sees them and decides (a template change is not a cancellation).

    Args:
        actor_user_id: who replaced it (None only for a command-line tool).
        reason: why, when the caller asked for one.
    """
    validate_ranges(ranges)
    if await session.get(Doctor, doctor_id) is None:
        raise NotFound(gettext("doctor %(doctor_id)s does not exist") % {"doctor_id": doctor_id})
    replaced_at = dt.datetime.now(dt.UTC)
    live = ScheduleTemplate.doctor_id == doctor_id
    kept = await session.execute(
        insert(ScheduleTemplateHistory).from_select(
            ["doctor_id", *_KEPT, "replaced_at", "replaced_by", "reason"],
            select(
                ScheduleTemplate.doctor_id,
                *(getattr(ScheduleTemplate, column) for column in _KEPT),
                literal(replaced_at),
                literal(actor_user_id, BigInteger),
                literal(reason, Text),
            )
            .where(live)
            .order_by(ScheduleTemplate.weekday, ScheduleTemplate.start_time),
        )
    )
    await session.execute(delete(ScheduleTemplate).where(live))
    session.add_all(
        ScheduleTemplate(
            doctor_id=doctor_id,
            weekday=r.weekday,
            start_time=r.start,
            end_time=r.end,
            slot_minutes=r.slot_minutes,
            valid_from=r.valid_from,
            valid_to=r.valid_to,
        )
        for r in ranges
    )
    await audit.record(
        session,
        actor_user_id=actor_user_id,
        action=audit.SCHEDULE_REPLACED,
        subject_type="doctor",
        subject_id=doctor_id,
        details={
            "replaced_at": replaced_at.isoformat(),  # its rows in the history table
            "ranges_before": _rowcount(kept),
            "ranges_after": len(ranges),
            "reason": reason,
        },
    )
    await session.commit()
    first = today - dt.timedelta(days=INVALIDATE_DAYS_BACK)
    days = [first + dt.timedelta(days=i) for i in range(horizon_days + 3)]
    await effects.schedule_changed([(doctor_id, d) for d in days])
    return list(ranges)


def _rowcount(result: object) -> int:
    return result.rowcount if isinstance(result, CursorResult) else 0


@dataclass(frozen=True, slots=True)
class ReplacedTemplate:
    """A weekly template as it was until an admin replaced it."""

    replaced_at: dt.datetime
    replaced_by: int | None
    reason: str | None
    ranges: list[RangeIn]


async def schedule_history(session: AsyncSession, doctor_id: int) -> list[ReplacedTemplate]:
    """Every replaced version of the doctor's template, newest first."""
    rows = await session.scalars(
        select(ScheduleTemplateHistory)
        .where(ScheduleTemplateHistory.doctor_id == doctor_id)
        .order_by(
            ScheduleTemplateHistory.replaced_at.desc(),
            ScheduleTemplateHistory.weekday,
            ScheduleTemplateHistory.start_time,
        )
    )
    versions: dict[dt.datetime, ReplacedTemplate] = {}
    for r in rows:
        version = versions.get(r.replaced_at)
        if version is None:
            version = versions[r.replaced_at] = ReplacedTemplate(
                r.replaced_at, r.replaced_by, r.reason, []
            )
        version.ranges.append(
            RangeIn(r.weekday, r.start_time, r.end_time, r.slot_minutes, r.valid_from, r.valid_to)
        )
    return list(versions.values())


@dataclass(frozen=True, slots=True)
class ExceptionResult:
    exception: ScheduleException | None  # None for a preview
    affected: list[Appointment]
    cancelled: bool


async def add_exception(
    session: AsyncSession,
    effects: Effects,
    *,
    clinic_id: int,
    doctor_id: int | None,
    kind: str,
    starts_at: dt.datetime,
    ends_at: dt.datetime,
    note: str | None,
    created_by: int | None,
    cancel_affected: bool,
    preview: bool,
    now: dt.datetime,
) -> ExceptionResult:
    """Add leave or a closure (doctor_id None = the whole clinic). Commits unless preview,
    with a `schedule.exception_added` audit event naming the actor and every appointment
    it cancelled.

    Args:
        cancel_affected: cancel the active bookings it covers (else they are only reported).
        preview: report what it would hit, change nothing.

    Returns:
        The exception and the active appointments it overlaps.
    """
    _check_window(kind, starts_at, ends_at)
    clinic = await session.get(Clinic, clinic_id)
    if clinic is None:
        raise NotFound(gettext("clinic %(clinic_id)s does not exist") % {"clinic_id": clinic_id})
    scope = Appointment.clinic_id == clinic_id
    if doctor_id is not None:
        doctor = await session.get(Doctor, doctor_id)
        if doctor is None or doctor.clinic_id != clinic_id:
            raise NotFound(
                gettext("doctor %(doctor_id)s does not exist") % {"doctor_id": doctor_id}
            )
        scope = Appointment.doctor_id == doctor_id
    affected = await _covered(session, scope, starts_at, ends_at)
    if preview:
        for appointment in affected:  # a rollback expires what the session holds
            session.expunge(appointment)
        await session.rollback()
        return ExceptionResult(None, affected, cancelled=False)
    exception = ScheduleException(
        clinic_id=clinic_id,
        doctor_id=doctor_id,
        kind=kind,
        starts_at=starts_at,
        ends_at=ends_at,
        note=note,
        created_by=created_by,
    )
    session.add(exception)
    await session.flush()  # its id, for the audit event
    cancel = cancel_affected and bool(affected)
    if cancel:
        for a in affected:  # leave and closures cancel what they cover, ended or not
            rules.check_transition(rules.SCHEDULE, a, "cancelled", now)
        await session.flush()  # the exception's id, for the audit events
        # In this same transaction: each row records who and why, its patient gets an
        # `exception` notice, the audit trail an event per appointment.
        rows = await commands.set_status(
            session,
            [a.id for a in affected],
            "cancelled",
            setter=rules.SCHEDULE,
            actor_user_id=created_by,
            now=now,
            seen={"see_clinic": clinic_id, "see_doctor": None, "see_patient": None},
            reason=f"doctor unavailable ({kind})",
            notice="exception",
            details={"schedule_exception_id": exception.id, "kind": kind},
        )
        changed = {row.id: commands.changed_appointment(row) for row in rows if row.id}
        affected = [changed.get(a.id, a) for a in affected]
    await audit.record(
        session,
        actor_user_id=created_by,
        action=audit.EXCEPTION_ADDED,
        subject_type="schedule_exception",
        subject_id=exception.id,
        details={
            "clinic_id": clinic_id,
            "doctor_id": doctor_id,
            "kind": kind,
            "starts_at": starts_at.isoformat(),
            "ends_at": ends_at.isoformat(),
            "note": note,
            # What it did to bookings: cancelled them (each told), or only reported them.
            "cancelled_appointment_ids": [a.id for a in affected] if cancel else [],
            "overlapping_appointment_ids": [a.id for a in affected],
        },
    )
    await session.commit()
    doctors = (
        [doctor_id]
        if doctor_id is not None
        else list(await session.scalars(select(Doctor.id).where(Doctor.clinic_id == clinic_id)))
    )
    days = changed_days(starts_at, ends_at, clinic.timezone, now)
    await effects.schedule_changed([(d, day) for d in doctors for day in days])
    if cancel:
        await effects.appointments_changed(
            [
                AppointmentChange(
                    a.id,
                    a.doctor_id,
                    a.clinic_id,
                    tuple(local_days(a.starts_at, a.ends_at, clinic.timezone)),
                    "cancelled",
                    a.patient_id,
                )
                for a in affected
            ]
        )
    return ExceptionResult(exception, affected, cancelled=cancel)


@dataclass(frozen=True, slots=True)
class ExceptionEdit:
    """What an admin changes in leave or a closure: None keeps a field, a note of "" clears
    it."""

    kind: str | None = None
    starts_at: dt.datetime | None = None
    ends_at: dt.datetime | None = None
    note: str | None = None


async def change_exception(
    session: AsyncSession,
    effects: Effects,
    *,
    exception_id: int,
    doctor_id: int,
    edit: ExceptionEdit,
    actor_id: int | None,
    preview: bool,
    now: dt.datetime,
) -> ExceptionResult:
    """Change the dates, kind or note of a doctor's leave that is not over yet. Commits
    unless preview; audited.

    Bookings in the new time are reported, never cancelled: a longer leave over booked
    appointments is for the front desk to settle, as when leave is added.

    Returns:
        The changed exception and the active appointments its new time overlaps.

    Raises:
        NotFound: no such exception of this doctor.
        Conflict: it is over; its record stays as it was.
    """
    exception, timezone = await _planned(session, exception_id, doctor_id, now)
    before = (exception.starts_at, exception.ends_at)
    kind = edit.kind or exception.kind
    starts_at = edit.starts_at or exception.starts_at
    ends_at = edit.ends_at or exception.ends_at
    note = exception.note if edit.note is None else edit.note.strip() or None
    _check_window(kind, starts_at, ends_at)
    affected = await _covered(session, Appointment.doctor_id == doctor_id, starts_at, ends_at)
    if preview:
        for appointment in affected:
            session.expunge(appointment)
        await session.rollback()
        return ExceptionResult(None, affected, cancelled=False)
    changes = {
        name: [_text(old), _text(new)]
        for name, old, new in (
            ("kind", exception.kind, kind),
            ("starts_at", exception.starts_at, starts_at),
            ("ends_at", exception.ends_at, ends_at),
            ("note", exception.note, note),
        )
        if old != new
    }
    exception.kind, exception.starts_at, exception.ends_at = kind, starts_at, ends_at
    exception.note = note
    await audit.record(
        session,
        actor_user_id=actor_id,
        action=audit.SCHEDULE_EXCEPTION_CHANGED,
        subject_type="schedule_exception",
        subject_id=exception.id,
        details={"doctor_id": doctor_id, **changes},
    )
    await session.commit()
    days = sorted(
        set(changed_days(*before, timezone, now))
        | set(changed_days(starts_at, ends_at, timezone, now))
    )
    await effects.schedule_changed([(doctor_id, day) for day in days])
    return ExceptionResult(exception, affected, cancelled=False)


async def withdraw_exception(
    session: AsyncSession,
    effects: Effects,
    *,
    exception_id: int,
    doctor_id: int,
    actor_id: int | None,
    now: dt.datetime,
) -> None:
    """Withdraw a doctor's leave that is not over: its slots reopen. Commits; audited with
    what was withdrawn.

    Raises:
        NotFound: no such exception of this doctor.
        Conflict: it is over; its record stays.
    """
    exception, timezone = await _planned(session, exception_id, doctor_id, now)
    days = changed_days(exception.starts_at, exception.ends_at, timezone, now)
    await audit.record(
        session,
        actor_user_id=actor_id,
        action=audit.SCHEDULE_EXCEPTION_WITHDRAWN,
        subject_type="schedule_exception",
        subject_id=exception.id,
        details={
            "doctor_id": doctor_id,
            "kind": exception.kind,
            "starts_at": _text(exception.starts_at),
            "ends_at": _text(exception.ends_at),
            "note": exception.note,
        },
    )
    await session.delete(exception)
    await session.commit()
    await effects.schedule_changed([(doctor_id, day) for day in days])


def _check_window(kind: str, starts_at: dt.datetime, ends_at: dt.datetime) -> None:
    if kind not in EXCEPTION_KINDS:
        raise Invalid(
            gettext("kind must be one of %(choices)s") % {"choices": ", ".join(EXCEPTION_KINDS)}
        )
    if starts_at.tzinfo is None or ends_at.tzinfo is None:
        raise Invalid(gettext("starts_at and ends_at must include a UTC offset"))
    if ends_at <= starts_at:
        raise Invalid(gettext("ends_at must be after starts_at"))


async def _covered(
    session: AsyncSession,
    scope: ColumnElement[bool],
    starts_at: dt.datetime,
    ends_at: dt.datetime,
) -> list[Appointment]:
    """The appointments in `scope` overlapping the time that leave may cancel (by the
    state machine), locked until commit."""
    return list(
        await session.scalars(
            select(Appointment)
            .where(
                scope,
                Appointment.status.in_(rules.sources("cancelled")),
                Appointment.starts_at < ends_at,
                Appointment.ends_at > starts_at,
            )
            # Id breaks ties: a stable order for the preview and the same order of locks
            # in every transaction (two closures cancelling together cannot deadlock).
            .order_by(Appointment.starts_at, Appointment.id)
            .with_for_update()
        )
    )


async def _planned(
    session: AsyncSession, exception_id: int, doctor_id: int, now: dt.datetime
) -> tuple[ScheduleException, str]:
    """The doctor's exception (locked) with its clinic's time zone, if it is not over."""
    row = (
        await session.execute(
            select(ScheduleException, Clinic.timezone)
            .join(Clinic, Clinic.id == ScheduleException.clinic_id)
            .where(
                ScheduleException.id == exception_id,
                ScheduleException.doctor_id == doctor_id,
            )
            .with_for_update(of=ScheduleException)
        )
    ).one_or_none()
    if row is None:
        raise NotFound(
            gettext("exception %(exception_id)s does not exist here")
            % {"exception_id": exception_id}
        )
    exception, timezone = row
    if exception.ends_at <= now:
        raise Conflict(gettext("this time off is over and stays on record; it cannot be changed"))
    return exception, timezone


def _text(value: object) -> object:
    """An audit detail: instants in UTC, so a change of offset alone is not a change."""
    return value.astimezone(dt.UTC).isoformat() if isinstance(value, dt.datetime) else value
