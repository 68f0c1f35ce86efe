"""Doctors' weekly templates and schedule exceptions (leave, holidays, closures)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Invalid, NotFound
from app.live.effects import AppointmentChange, Effects
from app.notifications import planning as notifications
from app.scheduling.slots import local_days
from db.models import (
    EXCEPTION_KINDS,
    Appointment,
    Clinic,
    Doctor,
    ScheduleException,
    ScheduleTemplate,
)

# Days of cache to forget when a template changes: everything bookable, plus a margin.
INVALIDATE_DAYS_BACK = 1


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
            raise Invalid(f"ranges[{i}]: weekday must be 0 (Monday) to 6 (Sunday)")
        if r.end <= r.start:
            raise Invalid(f"ranges[{i}]: end must be after start")
        if not 5 <= r.slot_minutes <= 240:
            raise Invalid(f"ranges[{i}]: slot_minutes must be between 5 and 240")
        length = dt.datetime.combine(dt.date.min, r.end) - dt.datetime.combine(dt.date.min, r.start)
        if length < dt.timedelta(minutes=r.slot_minutes):
            raise Invalid(f"ranges[{i}]: the range is shorter than one slot")
        if r.valid_from and r.valid_to and r.valid_to < r.valid_from:
            raise Invalid(f"ranges[{i}]: valid_to is before valid_from")
    for i, a in enumerate(ranges):
        for j in range(i + 1, len(ranges)):
            b = ranges[j]
            if a.weekday != b.weekday or not (a.start < b.end and b.start < a.end):
                continue
            a_from, a_to = a.valid_from or dt.date.min, a.valid_to or dt.date.max
            b_from, b_to = b.valid_from or dt.date.min, b.valid_to or dt.date.max
            if a_from <= b_to and b_from <= a_to:
                raise Invalid(f"ranges[{i}] and ranges[{j}] overlap")


async def get_schedule(session: AsyncSession, doctor_id: int) -> tuple[str, list[RangeIn]]:
    """The doctor's clinic time zone and weekly ranges, ordered by weekday and start."""
    tz = await session.scalar(
        select(Clinic.timezone)
        .join(Doctor, Doctor.clinic_id == Clinic.id)
        .where(Doctor.id == doctor_id)
    )
    if tz is None:
        raise NotFound(f"doctor {doctor_id} does not exist")
    rows = await session.scalars(
        select(ScheduleTemplate)
        .where(ScheduleTemplate.doctor_id == doctor_id)
        .order_by(ScheduleTemplate.weekday, ScheduleTemplate.start_time)
    )
    return tz, [
        RangeIn(r.weekday, r.start_time, r.end_time, r.slot_minutes, r.valid_from, r.valid_to)
        for r in rows
    ]


async def replace_schedule(
    session: AsyncSession,
    effects: Effects,
    doctor_id: int,
    ranges: Sequence[RangeIn],
    *,
    today: dt.date,
    horizon_days: int,
) -> list[RangeIn]:
    """Replace the doctor's whole weekly template in one transaction. Commits.

    Existing appointments are kept even if they fall outside the new hours: the front
    desk sees them and decides (a template change is not a cancellation).
    """
    validate_ranges(ranges)
    if await session.get(Doctor, doctor_id) is None:
        raise NotFound(f"doctor {doctor_id} does not exist")
    await session.execute(delete(ScheduleTemplate).where(ScheduleTemplate.doctor_id == doctor_id))
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
    await session.commit()
    first = today - dt.timedelta(days=INVALIDATE_DAYS_BACK)
    days = [first + dt.timedelta(days=i) for i in range(horizon_days + 3)]
    await effects.schedule_changed([(doctor_id, d) for d in days])
    return list(ranges)


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
    """Add leave or a closure (doctor_id None = the whole clinic). Commits unless preview.

    Args:
        cancel_affected: cancel the active bookings it covers (else they are only reported).
        preview: report what it would hit, change nothing.

    Returns:
        The exception and the active appointments it overlaps.
    """
    if kind not in EXCEPTION_KINDS:
        raise Invalid(f"kind must be one of {', '.join(EXCEPTION_KINDS)}")
    if starts_at.tzinfo is None or ends_at.tzinfo is None:
        raise Invalid("starts_at and ends_at must include a UTC offset")
    if ends_at <= starts_at:
        raise Invalid("ends_at must be after starts_at")
    clinic = await session.get(Clinic, clinic_id)
    if clinic is None:
        raise NotFound(f"clinic {clinic_id} does not exist")
    scope = Appointment.clinic_id == clinic_id
    if doctor_id is not None:
        doctor = await session.get(Doctor, doctor_id)
        if doctor is None or doctor.clinic_id != clinic_id:
            raise NotFound(f"doctor {doctor_id} does not exist")
        scope = Appointment.doctor_id == doctor_id
    affected = list(
        await session.scalars(
            select(Appointment)
            .where(
                scope,
                Appointment.status.in_(("booked", "checked_in")),
                Appointment.starts_at < ends_at,
                Appointment.ends_at > starts_at,
            )
            .order_by(Appointment.starts_at)
            .with_for_update()
        )
    )
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
    cancel = cancel_affected and bool(affected)
    if cancel:
        # Their patients are told: an `exception` notice each, in this same transaction.
        await session.execute(
            update(Appointment)
            .where(Appointment.id.in_([a.id for a in affected]))
            .values(
                status="cancelled",
                cancelled_at=now,
                updated_at=now,
                cancel_reason=f"doctor unavailable ({kind})",
            )
        )
        await notifications.appointments_status_changed(
            session, [a.id for a in affected], "cancelled", now, notice="exception"
        )
    await session.commit()
    doctors = (
        [doctor_id]
        if doctor_id is not None
        else list(await session.scalars(select(Doctor.id).where(Doctor.clinic_id == clinic_id)))
    )
    days = local_days(starts_at, ends_at, clinic.timezone)
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
