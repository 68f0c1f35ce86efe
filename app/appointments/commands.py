"""Book, reschedule, change status and bulk-update appointments: one transaction each.

The no-double-booking guarantee is PostgreSQL's exclusion constraint `no_overlap` (see
docs/architecture.md); nothing here checks-then-inserts. The reads before a write only
produce good error messages (not on the grid, on leave, past, beyond the horizon); the
insert or update itself decides who gets a contested slot, and its violation becomes a
409 with the nearest free alternatives.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.access import audit
from app.access.identity import Principal
from app.appointments import rules as booking_rules
from app.appointments.queries import nearest_free, visible
from app.appointments.rules import BookingRules
from app.appointments.statements import BOOKING_FACTS_SQL, INSERT_BOOKING_SQL
from app.errors import Conflict, Invalid, NotFound
from app.live.effects import AppointmentChange, Effects
from app.notifications import planning as notifications
from app.scheduling.availability import Interval
from app.scheduling.slots import (
    DOCTOR_DAYS_COLUMNS,
    DoctorDays,
    doctor_days_from_row,
    load_doctor_days,
    local_days,
)
from db.models import Appointment, Clinic

MAX_BULK = 500
CHECK_IN_UNDONE = "appointment.check_in_undone"
LIMIT_OVERRIDDEN = "appointment.limit_overridden"


@dataclass(frozen=True, slots=True)
class BookingResult:
    appointment: Appointment
    timezone: str  # the clinic's, for showing the times
    replayed: bool  # an Idempotency-Key retry answered with the original booking


def _constraint(exc: DBAPIError) -> str | None:
    cause = getattr(exc.orig, "__cause__", None)
    return getattr(cause, "constraint_name", None)


def _lost_the_slot(exc: DBAPIError) -> bool:
    """The write lost a contested slot: the exclusion constraint refused it, or PostgreSQL
    broke a deadlock between two writers each waiting on the other's exclusion check (this
    happens when concurrent inserts conflict; the survivor holds the slot)."""
    cause = getattr(exc.orig, "__cause__", None)
    return _constraint(exc) == "no_overlap" or getattr(cause, "sqlstate", None) == "40P01"


def _request_hash(doctor_id: int, start: dt.datetime, patient_id: int, reason: str | None) -> str:
    text = f"{doctor_id}|{start.astimezone(dt.UTC).isoformat()}|{patient_id}|{reason or ''}"
    return hashlib.sha256(text.encode()).hexdigest()


async def _load_around(session: AsyncSession, doctor_id: int, start: dt.datetime) -> DoctorDays:
    return await load_doctor_days(
        session, doctor_id, start - dt.timedelta(days=1), start + dt.timedelta(days=1)
    )


async def _taken(
    session: AsyncSession, doctor_id: int, start: dt.datetime, rules: BookingRules, now: dt.datetime
) -> Conflict:
    alternatives = await nearest_free(session, doctor_id, start, rules, now)
    return Conflict(
        "this time has just been taken",
        alternatives=[
            {"start": a.start.isoformat(), "end": a.end.isoformat()} for a in alternatives
        ],
    )


def _change(
    appointment: Appointment, timezone: str, action: str, *extra: Interval
) -> AppointmentChange:
    days = set(local_days(appointment.starts_at, appointment.ends_at, timezone))
    for interval in extra:
        days.update(local_days(interval.start, interval.end, timezone))
    return AppointmentChange(
        appointment.id, appointment.doctor_id, appointment.clinic_id, tuple(sorted(days)), action
    )


@dataclass(frozen=True, slots=True)
class _PatientFacts:
    held: int  # future booked appointments with the doctor being booked
    channel: str | None  # where the confirmation and reminders go (None: nowhere)


async def _booking_facts(
    session: AsyncSession | AsyncConnection,
    doctor_id: int,
    start: dt.datetime,
    patient_id: int,
    now: dt.datetime,
) -> tuple[DoctorDays, _PatientFacts | None]:
    """The doctor's days around `start` and the patient's facts (None: no such patient).

    Raises:
        NotFound: no such doctor.
    """
    row = (
        await session.execute(
            BOOKING_FACTS_SQL,
            {
                "doctor_id": doctor_id,
                "lo": start - dt.timedelta(days=1),
                "hi": start + dt.timedelta(days=1),
                "patient_id": patient_id,
                "now": now,
            },
        )
    ).one_or_none()
    data = doctor_days_from_row(doctor_id, row)
    assert row is not None
    raw = row[DOCTOR_DAYS_COLUMNS]
    if raw is None:
        return data, None
    notify_by, email, phone, held = json.loads(raw) if isinstance(raw, str) else raw
    return data, _PatientFacts(int(held), notifications.choose_channel(notify_by, email, phone))


async def warm_up(connection: AsyncConnection) -> None:
    """Prepare booking's two statements on a fresh pooled connection (app start): a
    connection's first booking otherwise pays for preparing them and for its backend's
    cold catalog caches (10-25 ms more, measured), which lands in booking's p99. The
    insert ends where it starts, so its check constraint refuses it (inside a savepoint)
    before the exclusion constraint is consulted: prepared, nothing written or locked.
    (A refused insert that reached the exclusion constraint would make the pool's ten
    warm-ups wait on each other.)"""
    now = dt.datetime.now(dt.UTC)
    with suppress(NotFound):
        await _booking_facts(connection, 0, now, 0, now)
    nothing = {
        "doctor_id": 0,
        "patient_id": 0,
        "clinic_id": 0,
        "starts_at": now,
        "ends_at": now,  # fails the end-after-start check before any index is touched
        "reason": None,
        "idempotency_key": None,
        "idempotency_hash": None,
        "booked_by": None,
        "channel": None,
        "kinds": [],
        "dues": [],
    }
    with suppress(IntegrityError):
        async with connection.begin_nested():
            await connection.execute(INSERT_BOOKING_SQL, nothing)


async def _one_statement_session(session: AsyncSession) -> None:
    """Run this request's statements in autocommit mode when nothing else has begun a
    transaction on the session: a booking is one atomic statement, and BEGIN and COMMIT
    would be two more round trips. (A caller that already began one keeps it; the final
    commit then commits it.)"""
    if not session.in_transaction():
        await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


async def book(
    session: AsyncSession,
    effects: Effects,
    actor: Principal,
    *,
    doctor_id: int,
    start: dt.datetime,
    rules: BookingRules,
    now: dt.datetime,
    patient_id: int | None = None,
    reason: str | None = None,
    idempotency_key: str | None = None,
    override_reason: str | None = None,
) -> BookingResult:
    """Book one slot. Commits, then runs the after-commit effects.

    Two round trips to PostgreSQL: what the checks need (doctor's days, patient), then
    the booking with its outbox rows as one atomic statement.

    Args:
        actor: who is booking (a patient for themself, or staff for `patient_id`).
        start: the slot's start; must be exactly on the doctor's grid.
        idempotency_key: the client's key; the same key and body return the original.
        override_reason: why staff book beyond the per-doctor limit; when they do, it is
            recorded in an audit event committed with the booking.

    Raises:
        Conflict: the slot is taken (with `alternatives`).
        Invalid: not on the grid, in the past, too soon, beyond the horizon, on leave,
            too many future appointments with this doctor, no such patient, or a reused
            key with another body.
        Forbidden: booking for someone the actor may not book for.
        NotFound: no such doctor.
    """
    if start.tzinfo is None:
        raise Invalid("start must include a UTC offset, e.g. 2026-06-01T09:00:00+02:00")
    start = start.astimezone(dt.UTC)
    target = booking_rules.target_patient(actor, patient_id)
    override_reason = booking_rules.check_override(actor.role, override_reason)
    if override_reason is None:  # an override adds its audit row: a transaction then
        await _one_statement_session(session)
    data, facts = await _booking_facts(session, doctor_id, start, target, now)
    booking_rules.check_desk_clinic(actor, data.clinic_id)
    if facts is None:
        raise Invalid(f"patient {target} does not exist")
    digest = _request_hash(doctor_id, start, target, reason)
    if idempotency_key and (
        replay := await _replay(session, actor, idempotency_key, digest, data.timezone)
    ):
        return replay
    slot = booking_rules.find_slot(data, start)
    booking_rules.check_bookable(data, slot, rules, now)
    beyond_limit = booking_rules.check_room_for_one_more(
        facts.held, rules, role=actor.role, override_reason=override_reason
    )
    planned = notifications.plan(slot.start, data.timezone, now) if facts.channel else []
    try:
        row = (
            await session.execute(
                INSERT_BOOKING_SQL,
                {
                    "doctor_id": doctor_id,
                    "patient_id": target,
                    "clinic_id": data.clinic_id,
                    "starts_at": slot.start,
                    "ends_at": slot.end,
                    "reason": reason,
                    "idempotency_key": idempotency_key,
                    "idempotency_hash": digest if idempotency_key else None,
                    "booked_by": actor.id,
                    "channel": facts.channel,
                    "kinds": [p.kind for p in planned],
                    "dues": [p.due_at for p in planned],
                },
            )
        ).one()
        if beyond_limit:
            await audit.record(
                session,
                actor_user_id=actor.id,
                action=LIMIT_OVERRIDDEN,
                subject_type="appointment",
                subject_id=row.id,
                patient_id=target,
                details={"reason": override_reason, "held": facts.held, "doctor_id": doctor_id},
            )
        await session.commit()
    except DBAPIError as exc:
        await session.rollback()
        if _lost_the_slot(exc):
            raise await _taken(session, doctor_id, slot.start, rules, now) from None
        # A concurrent retry with the same key won the race: answer as it did.
        if (
            _constraint(exc) == "uq_appointments_idempotency"
            and idempotency_key
            and (replay := await _replay(session, actor, idempotency_key, digest, data.timezone))
        ):
            return replay
        raise
    appointment = Appointment(**row._mapping)
    await effects.appointments_changed([_change(appointment, data.timezone, "booked")])
    return BookingResult(appointment, data.timezone, replayed=False)


async def _replay(
    session: AsyncSession, actor: Principal, key: str, digest: str, timezone: str
) -> BookingResult | None:
    existing = await session.scalar(
        select(Appointment).where(
            Appointment.booked_by == actor.id, Appointment.idempotency_key == key
        )
    )
    if existing is None:
        return None
    if existing.idempotency_hash != digest:
        raise Invalid("this Idempotency-Key was already used for a different booking")
    return BookingResult(existing, timezone, replayed=True)


async def _locked_with_timezone(
    session: AsyncSession, actor: Principal, appointment_id: int
) -> tuple[Appointment, str]:
    """The visible appointment, locked for a change, with its clinic's time zone (read in
    the same statement: asking afterwards cost a transaction of its own per change)."""
    row = (
        await session.execute(
            select(Appointment, Clinic.timezone)
            .join(Clinic, Clinic.id == Appointment.clinic_id)
            .where(Appointment.id == appointment_id, visible(actor))
            .with_for_update(of=Appointment)
        )
    ).one_or_none()
    if row is None:
        raise NotFound(f"appointment {appointment_id} not found")
    return row[0], row[1]


async def reschedule(
    session: AsyncSession,
    effects: Effects,
    actor: Principal,
    appointment_id: int,
    *,
    start: dt.datetime,
    rules: BookingRules,
    now: dt.datetime,
) -> BookingResult:
    """Move a booked appointment to another slot of the same doctor, atomically.

    Either the new slot is taken and the old one freed in one commit, or nothing changes.

    Raises:
        Conflict: the new slot is taken (with alternatives); the appointment is unchanged.
        Invalid: not booked any more, or the new time is not bookable.
        Forbidden: the actor's role may not reschedule (doctors).
        NotFound: not visible to the actor.
    """
    if start.tzinfo is None:
        raise Invalid("start must include a UTC offset")
    start = start.astimezone(dt.UTC)
    appointment, _ = await _locked_with_timezone(session, actor, appointment_id)
    booking_rules.check_reschedule(actor.role, appointment.status)
    data = await _load_around(session, appointment.doctor_id, start)
    slot = booking_rules.find_slot(data, start)
    booking_rules.check_bookable(data, slot, rules, now)
    old = Interval(appointment.starts_at, appointment.ends_at)
    doctor_id = appointment.doctor_id  # read now: after a rollback the object is expired
    appointment.starts_at, appointment.ends_at = slot.start, slot.end
    appointment.updated_at = now
    try:
        # The outbox: the old time's unsent messages give way to the new time's.
        await notifications.appointment_rescheduled(session, appointment, data.timezone, now)
        await session.commit()
    except DBAPIError as exc:
        await session.rollback()
        if _lost_the_slot(exc):
            raise await _taken(session, doctor_id, slot.start, rules, now) from None
        raise
    await effects.appointments_changed([_change(appointment, data.timezone, "rescheduled", old)])
    return BookingResult(appointment, data.timezone, replayed=False)


async def change_status(
    session: AsyncSession,
    effects: Effects,
    actor: Principal,
    appointment_id: int,
    *,
    status: str,
    now: dt.datetime,
    reason: str | None = None,
) -> BookingResult:
    """Check in, complete, cancel or mark a no-show, following the state machine; or undo
    a check-in (`booked`), which is audited.

    Raises:
        Invalid: an illegal transition (e.g. completed -> cancelled), a check-in on
            another day, an undo too late.
        Forbidden: the actor's role may not set this status.
        NotFound: not visible to the actor.
    """
    booking_rules.check_known(status)
    appointment, timezone = await _locked_with_timezone(session, actor, appointment_id)
    checked_in_at = appointment.checked_in_at
    booking_rules.check_transition(actor.role, appointment, status, now, timezone=timezone)
    for column, value in booking_rules.status_columns(status, now).items():
        setattr(appointment, column, value)
    if status == "cancelled":
        appointment.cancel_reason = reason
    if status == "booked":
        await audit.record(
            session,
            actor_user_id=actor.id,
            action=CHECK_IN_UNDONE,
            subject_type="appointment",
            subject_id=appointment.id,
            patient_id=appointment.patient_id,
            details={"checked_in_at": checked_in_at.isoformat() if checked_in_at else None},
        )
    else:
        # The outbox: unsent reminders are void; a cancellation notice is due now.
        await notifications.appointments_status_changed(session, [appointment.id], status, now)
    await session.commit()
    await effects.appointments_changed([_change(appointment, timezone, status)])
    return BookingResult(appointment, timezone, replayed=False)


async def bulk_update(
    session: AsyncSession,
    effects: Effects,
    actor: Principal,
    appointment_ids: Sequence[int],
    *,
    status: str,
    now: dt.datetime,
) -> dict[int, str]:
    """Set one status on many appointments in one set-based UPDATE (review M-3).

    Returns:
        For each id: `updated`; `not_found` (unknown, or not the actor's to see: another
        clinic's answers like an unknown id); `forbidden` (the actor's to see, but their
        role may not set this status, e.g. a doctor cancelling); `invalid_transition`.
    """
    booking_rules.check_bulk_target(status)
    ids = list(dict.fromkeys(appointment_ids))
    if not ids or len(ids) > MAX_BULK:
        raise Invalid(f"give between 1 and {MAX_BULK} appointment ids")
    rows = (
        await session.execute(
            select(
                Appointment.id,
                Appointment.status,
                Appointment.starts_at,
                Appointment.ends_at,
                Appointment.checked_in_at,
                Clinic.timezone,
                visible(actor).label("may_see"),
            )
            .join(Clinic, Clinic.id == Appointment.clinic_id)
            .where(Appointment.id.in_(ids))
        )
    ).all()
    result = dict.fromkeys(ids, "not_found")
    candidates = []
    for row in rows:
        if not row.may_see:
            # Another clinic's appointment answers exactly like an unknown id: no
            # existence leak (docs/security.md, "404 or 403?").
            result[row.id] = "not_found"
        elif why := booking_rules.refusal(actor.role, row, status, now, timezone=row.timezone):
            # forbidden: e.g. a doctor cancelling (theirs to see, not to cancel)
            result[row.id] = "forbidden" if why.kind == "forbidden" else "invalid_transition"
        else:
            candidates.append(row.id)
    updated: Any = (
        await session.execute(
            update(Appointment)
            .where(
                Appointment.id.in_(candidates),
                # re-checked: rows may have moved on since they were read
                Appointment.status.in_(booking_rules.sources(status)),
                visible(actor),
                Clinic.id == Appointment.clinic_id,
            )
            .values(booking_rules.status_columns(status, now))
            .returning(
                Appointment.id,
                Appointment.doctor_id,
                Appointment.clinic_id,
                Appointment.starts_at,
                Appointment.ends_at,
                Clinic.timezone,
            )
        )
        if candidates
        else []
    )
    changed = list(updated)
    # The outbox, set-based like the update: void unsent reminders, notify cancellations.
    await notifications.appointments_status_changed(
        session, [row[0] for row in changed], status, now
    )
    await session.commit()
    for row_id in candidates:
        result[row_id] = "invalid_transition"
    changes = []
    for row_id, doctor_id, clinic_id, starts_at, ends_at, timezone in changed:
        result[row_id] = "updated"
        days = tuple(local_days(starts_at, ends_at, timezone))
        changes.append(AppointmentChange(row_id, doctor_id, clinic_id, days, status))
    await effects.appointments_changed(changes)
    return result
