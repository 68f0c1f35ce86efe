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
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import literal_column, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from app.access import audit
from app.access.identity import Principal
from app.appointments import rules as booking_rules
from app.appointments.queries import nearest_free, visible
from app.appointments.rules import BookingRules
from app.appointments.statements import (
    BOOK_SQL,
    BOOKING_FACTS_SQL,
    CHANGE_STATUS_SQL,
    held_lock,
)
from app.errors import Conflict, Invalid, NotFound
from app.i18n import gettext
from app.live.effects import AppointmentChange, Effects
from app.notifications import planning as notifications
from app.scheduling.availability import Interval, Visit
from app.scheduling.slots import (
    DOCTOR_DAYS_COLUMNS,
    DoctorDays,
    doctor_days_from_row,
    local_days,
)
from db.models import Appointment, Clinic
from db.session import (
    DriverStatements,
    NativeStatement,
    connection_statements,
    driver_fetch,
    driver_fetchall,
    driver_fetchmany,
    pooled_statements,
)

MAX_BULK = 500
# The foreign key from a booking to its visit type (app/scheduling/visit_types.py).
VISIT_TYPE_KEY = "fk_appointments_visit_type_id_visit_types"
# The audit events of an undone check-in and of staff booking beyond the limit.
CHECK_IN_UNDONE = audit.APPOINTMENT_CHECK_IN_UNDONE
LIMIT_OVERRIDDEN = audit.APPOINTMENT_LIMIT_OVERRIDDEN


@dataclass(frozen=True, slots=True)
class BookingResult:
    appointment: Appointment
    timezone: str  # the clinic's, for showing the times
    replayed: bool  # an Idempotency-Key retry answered with the original booking


def _server_error(exc: Exception) -> Any:
    """PostgreSQL's error as asyncpg raised it, also from inside SQLAlchemy's wrapper."""
    return getattr(exc.orig, "__cause__", None) if isinstance(exc, DBAPIError) else exc


def _constraint(exc: Exception) -> str | None:
    return getattr(_server_error(exc), "constraint_name", None)


def _lost_the_slot(exc: Exception) -> bool:
    """The write lost a contested slot: the exclusion constraint refused it, or PostgreSQL
    broke a deadlock between two writers each waiting on the other's exclusion check (this
    happens when concurrent inserts conflict; the survivor holds the slot)."""
    sqlstate = getattr(_server_error(exc), "sqlstate", None)
    return _constraint(exc) == "no_overlap" or sqlstate == "40P01"


def _request_hash(
    doctor_id: int,
    start: dt.datetime,
    patient_id: int,
    reason: str | None,
    visit_type_id: int | None = None,
) -> str:
    text = f"{doctor_id}|{start.astimezone(dt.UTC).isoformat()}|{patient_id}|{reason or ''}"
    if visit_type_id is not None:  # untyped bookings keep the hash they always had
        text += f"|{visit_type_id}"
    return hashlib.sha256(text.encode()).hexdigest()


async def _taken(
    session: AsyncSession,
    doctor_id: int,
    start: dt.datetime,
    rules: BookingRules,
    now: dt.datetime,
    visit: Visit | None = None,
) -> Conflict:
    alternatives = await nearest_free(session, doctor_id, start, rules, now, visit=visit)
    return Conflict(
        "this time has just been taken",
        alternatives=[
            {"start": a.start.isoformat(), "end": a.end.isoformat()} for a in alternatives
        ],
    )


def _change(
    appointment: Appointment,
    timezone: str,
    action: str,
    *extra: Interval,
    someone_waits: bool = True,
) -> AppointmentChange:
    days = set(local_days(appointment.starts_at, appointment.ends_at, timezone))
    for interval in extra:
        days.update(local_days(interval.start, interval.end, timezone))
    return AppointmentChange(
        appointment.id,
        appointment.doctor_id,
        appointment.clinic_id,
        tuple(sorted(days)),
        action,
        appointment.patient_id,
        someone_waits,
    )


@dataclass(frozen=True, slots=True)
class _PatientFacts:
    held: int  # future booked appointments with the doctor being booked
    channels: tuple[str, ...]  # where the confirmation and reminders go (none: nowhere)


async def _booking_facts(
    session: AsyncSession | AsyncConnection | DriverStatements,
    doctor_id: int,
    start: dt.datetime,
    patient_id: int,
    now: dt.datetime,
    visit_type_id: int | None = None,
) -> tuple[DoctorDays, _PatientFacts | None]:
    """The doctor's days around `start` (with the visit type asked for) and the patient's
    facts (None: no such patient).

    Raises:
        NotFound: no such doctor, or the visit type is not theirs.
    """
    if isinstance(session, DriverStatements):
        run = session
    else:
        connection = await session.connection() if isinstance(session, AsyncSession) else session
        run = await connection_statements(connection)
    rows = await run.fetch(
        _BOOKING_FACTS.sql,
        _BOOKING_FACTS.args(
            {
                "doctor_id": doctor_id,
                "lo": start - dt.timedelta(days=1),
                "hi": start + dt.timedelta(days=1),
                "patient_id": patient_id,
                "now": now,
                "visit_type_id": visit_type_id,
            }
        ),
    )
    row = rows[0] if rows else None
    data = doctor_days_from_row(doctor_id, row, visit_type_id)
    assert row is not None
    raw = row[DOCTOR_DAYS_COLUMNS]
    if raw is None:
        return data, None
    notify_by, email, phone, held = json.loads(raw) if isinstance(raw, str) else raw
    return data, _PatientFacts(int(held), notifications.choose_channels(notify_by, email, phone))


# Through asyncpg, as CHANGE_STATUS_SQL (`_CHANGE_STATUS`).
_BOOKING_FACTS = NativeStatement.of(BOOKING_FACTS_SQL)


async def warm_up(connection: AsyncConnection) -> None:
    """Prepare booking's two statements on a fresh pooled connection (app start): a
    connection's first booking otherwise pays for preparing them and for its backend's
    cold catalog caches (bench/README.md), which lands in booking's p99. The
    insert ends where it starts, so its check constraint refuses it (inside a savepoint)
    before the exclusion constraint is consulted: prepared, nothing written. (A refused
    insert that reached the exclusion constraint, or one lock for all, would make the
    pool's ten warm-ups wait on each other: each locks a patient id of its own, its
    backend's negated pid.)"""
    now = dt.datetime.now(dt.UTC)
    with suppress(NotFound):
        await _booking_facts(connection, 0, now, 0, now)
    driver = (await connection.get_raw_connection()).driver_connection
    assert driver is not None
    patient = -driver.get_server_pid()
    empty: list[Any] = []
    # starts_at == ends_at fails the end-after-start check before any index is touched
    nothing = (0, patient, 0, now, now, None, None, None, None, empty, empty, empty, 1, now)
    untyped = (None, 0, 0)
    with suppress(asyncpg.CheckViolationError):
        async with connection.begin_nested():
            await driver_fetchmany(
                connection,
                BOOK_SQL,
                [(*nothing, False, None, *untyped), (*nothing, True, None, *untyped)],
            )


@asynccontextmanager
async def _session_statements(session: AsyncSession) -> AsyncIterator[DriverStatements]:
    """Statements straight through asyncpg on the session's connection (its transaction)."""
    yield await connection_statements(await session.connection())


def _statement_target(session: AsyncSession) -> AsyncSession | AsyncEngine:
    """Where a change that is one statement runs: when nothing has begun a transaction on
    the session, on a pooled connection of its engine, outside the session (autocommit:
    PostgreSQL runs the lone statement in a transaction of its own), which spares the
    session's Connection and transaction bookkeeping around it (bench/README.md,
    cpu17b); else in the session's transaction, committed by the caller."""
    bind = session.bind
    if not session.in_transaction() and isinstance(bind, AsyncEngine):
        return bind
    return session


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
    visit_type_id: int | None = None,
) -> BookingResult:
    """Book one slot. Commits, then runs the after-commit effects.

    Two round trips to PostgreSQL: what the checks need (doctor's days, patient), then
    the booking with its outbox rows, atomically (`statements.BOOK_SQL`). The second
    takes a lock on the patient's bookings with this doctor and counts them under it, so
    parallel requests cannot take a patient past the limit; concurrent retries with one
    Idempotency-Key queue on the same lock and get the first one's booking.

    Args:
        actor: who is booking (a patient for themself, or staff for `patient_id`).
        start: the slot's start; must be exactly on the doctor's grid.
        idempotency_key: the client's key; the same key and body return the original.
        override_reason: why staff book beyond the per-doctor limit; when they do, it is
            recorded in an audit event committed with the booking.
        visit_type_id: one of the doctor's visit types: its length, its buffers (which
            the exclusion constraint keeps free of other visits) and its notice and
            horizon; None: the template's slot, no buffers.

    Raises:
        Conflict: the slot is taken (with `alternatives`).
        Invalid: not on the grid, in the past, too soon, beyond the horizon, on leave,
            too many future appointments with this doctor, no such patient, or a reused
            key with another body.
        Forbidden: booking for someone the actor may not book for, or a patient booking
            a staff-only visit type.
        NotFound: no such doctor, or the visit type is not theirs.
    """
    if start.tzinfo is None:
        raise Invalid(gettext("start must include a UTC offset, e.g. 2026-06-01T09:00:00+02:00"))
    start = start.astimezone(dt.UTC)
    target = booking_rules.target_patient(actor, patient_id)
    override_reason = booking_rules.check_override(actor.role, override_reason)
    # Outside a transaction the two statements run on a pooled connection, outside the
    # session (bench/README.md, cpu17b); a caller's transaction keeps them in it.
    lender = _statement_target(session)
    failed: asyncpg.PostgresError | None = None
    async with (
        pooled_statements(lender)
        if isinstance(lender, AsyncEngine)
        else _session_statements(session)
    ) as run:
        data, facts = await _booking_facts(run, doctor_id, start, target, now, visit_type_id)
        booking_rules.check_desk_clinic(actor, data.clinic_id)
        booking_rules.check_may_book_type(actor.role, data.visit_type)
        if facts is None:
            raise Invalid(gettext("patient %(target)s does not exist") % {"target": target})
        digest = _request_hash(doctor_id, start, target, reason, visit_type_id)
        if idempotency_key and (
            replay := await _replay(session, actor, idempotency_key, digest, data.timezone)
        ):
            return replay
        visit = data.visit_type.visit if data.visit_type is not None else None
        rules = booking_rules.for_visit_type(rules, data.visit_type)
        slot = booking_rules.find_slot(data, start, visit)
        booking_rules.check_bookable(data, slot, rules, now, visit)
        # Beyond the limit only on staff's reason; the booking statement counts again under
        # its lock and writes the audit event of an override with the booking.
        booking_rules.check_room_for_one_more(
            facts.held, rules, role=actor.role, override_reason=override_reason
        )
        planned = notifications.plan(slot.start, data.timezone, now) if facts.channels else []
        values = (
            doctor_id,
            target,
            data.clinic_id,
            slot.start,
            slot.end,
            reason,
            idempotency_key,
            digest if idempotency_key else None,
            actor.id,
            list(facts.channels),
            [p.kind for p in planned],
            [p.due_at for p in planned],
            rules.max_future_per_doctor,
            now,
        )
        typed = (
            visit_type_id,
            visit.buffer_before if visit else 0,
            visit.buffer_after if visit else 0,
        )
        try:
            rows = await run.fetchmany(
                BOOK_SQL,
                [
                    (*values, False, override_reason, *typed),
                    (*values, True, override_reason, *typed),
                ],
            )
        except asyncpg.PostgresError as exc:
            failed = exc
    # The connection lent for the two statements is back in the pool before any of this.
    if failed is not None:
        await session.rollback()
        if _lost_the_slot(failed):
            raise await _taken(session, doctor_id, slot.start, rules, now, visit) from None
        if _constraint(failed) == VISIT_TYPE_KEY:  # deleted while this booking waited on it
            raise NotFound(
                gettext("visit type %(visit_type_id)s no longer exists")
                % {"visit_type_id": visit_type_id}
            ) from None
        # The same key with another body, booked at this moment (another doctor, so not
        # queued behind this one on the lock): answer as a later retry would.
        if (
            _constraint(failed) == "uq_appointments_idempotency"
            and idempotency_key
            and (replay := await _replay(session, actor, idempotency_key, digest, data.timezone))
        ):
            return replay
        raise failed
    if lender is session:
        await session.commit()
    if not rows:  # counted under the lock: parallel bookings got there first
        raise booking_rules.over_the_limit(rules, role=actor.role)
    columns = dict(rows[0])
    replayed = columns.pop("replayed")
    appointment = Appointment(**columns)
    if replayed:  # a retry queued behind its first attempt: answer as it did
        return _replayed(appointment, digest, data.timezone)
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
    return None if existing is None else _replayed(existing, digest, timezone)


def _replayed(earlier: Appointment, digest: str, timezone: str) -> BookingResult:
    """The booking made earlier under the request's key, if the request is the same."""
    if earlier.idempotency_hash != digest:
        raise Invalid(gettext("this Idempotency-Key was already used for a different booking"))
    return BookingResult(earlier, timezone, replayed=True)


async def _locked_with_timezone(
    session: AsyncSession, actor: Principal, appointment_id: int, *, held: bool = False
) -> tuple[Appointment, str]:
    """The visible appointment, locked for a change, with its clinic's time zone (read in
    the same statement: asking afterwards cost a transaction of its own per change).

    Args:
        held: also take the lock on what its patient holds with its doctor, as booking
            does, so that statements after this one count their bookings race-free.
    """
    query = (
        select(Appointment, Clinic.timezone)
        .join(Clinic, Clinic.id == Appointment.clinic_id)
        .where(Appointment.id == appointment_id, visible(actor))
        .with_for_update(of=Appointment)
    )
    if held:
        lock = held_lock("appointments.patient_id", "appointments.doctor_id")
        query = query.add_columns(literal_column(lock))
    row = (await session.execute(query)).one_or_none()
    if row is None:
        raise NotFound(
            gettext("appointment %(appointment_id)s not found") % {"appointment_id": appointment_id}
        )
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
    reason: str | None = None,
) -> BookingResult:
    """Move a booked appointment to another slot of the same doctor, atomically.

    Either the new slot is taken and the old one freed in one commit, or nothing changes;
    the row records who moved it and why, the audit trail the times before and after.
    A booking that has already begun counts toward the patient's limit again once moved
    into the future, so the move counts under the same lock as booking.

    Raises:
        Conflict: the new slot is taken (with alternatives); the appointment is unchanged.
        Invalid: not booked any more, or the new time is not bookable.
        Forbidden: the actor's role may not reschedule (doctors).
        NotFound: not visible to the actor.
    """
    if start.tzinfo is None:
        raise Invalid(gettext("start must include a UTC offset"))
    start = start.astimezone(dt.UTC)
    appointment, _ = await _locked_with_timezone(session, actor, appointment_id, held=True)
    booking_rules.check_reschedule(actor.role, appointment.status)
    data, facts = await _booking_facts(
        session,
        appointment.doctor_id,
        start,
        appointment.patient_id,
        now,
        appointment.visit_type_id,
    )
    assert facts is not None  # the appointment's patient
    # A visit of a type moves with the length and buffers it was booked with.
    visit = booking_rules.booked_visit(
        appointment.starts_at,
        appointment.ends_at,
        appointment.visit_type_id,
        appointment.buffer_before_minutes,
        appointment.buffer_after_minutes,
    )
    rules = booking_rules.for_visit_type(rules, data.visit_type)
    slot = booking_rules.find_slot(data, start, visit)
    booking_rules.check_bookable(data, slot, rules, now, visit)
    booking_rules.check_room_to_move(facts.held, appointment.starts_at, now, rules)
    old = Interval(appointment.starts_at, appointment.ends_at)
    doctor_id = appointment.doctor_id  # read now: after a rollback the object is expired
    appointment.starts_at, appointment.ends_at = slot.start, slot.end
    appointment.updated_at = now
    appointment.changed_by, appointment.change_reason = actor.id, reason
    try:
        # The outbox: the old time's unsent messages give way to the new time's.
        await notifications.appointment_rescheduled(session, appointment, data.timezone, now)
        await audit.record(
            session,
            actor_user_id=actor.id,
            action=audit.APPOINTMENT_RESCHEDULED,
            subject_type="appointment",
            subject_id=appointment.id,
            patient_id=appointment.patient_id,
            details={
                "from": [old.start.isoformat(), old.end.isoformat()],
                "to": [slot.start.isoformat(), slot.end.isoformat()],
                "reason": reason,
            },
        )
        await session.commit()
    except DBAPIError as exc:
        await session.rollback()
        if _lost_the_slot(exc):
            raise await _taken(session, doctor_id, slot.start, rules, now, visit) from None
        raise
    await effects.appointments_changed([_change(appointment, data.timezone, "rescheduled", old)])
    return BookingResult(appointment, data.timezone, replayed=False)


@dataclass(frozen=True, slots=True)
class _Found:
    """An appointment as the change found it (what `rules.refusal` reads)."""

    status: str
    starts_at: dt.datetime
    ends_at: dt.datetime
    checked_in_at: dt.datetime | None


def _found(row: Any) -> _Found:
    """What a row of `set_status` says the appointment was before the change."""
    return _Found(row.found_status, row.found_starts_at, row.found_ends_at, row.found_checked_in_at)


def _seen_by(actor: Principal) -> dict[str, int | None]:
    """`queries.visible` as the statement's parameters (None: any)."""
    see: dict[str, int | None] = dict.fromkeys(("see_clinic", "see_doctor", "see_patient"))
    if actor.role == "front_desk":
        see["see_clinic"] = actor.clinic_id if actor.clinic_id is not None else -1
    elif actor.role == "doctor":
        see["see_doctor"] = actor.doctor_id if actor.doctor_id is not None else -1
    elif actor.role != "admin":
        see["see_patient"] = actor.patient_id if actor.patient_id is not None else -1
    return see


async def set_status(
    session: AsyncSession | AsyncConnection | AsyncEngine,
    appointment_ids: Sequence[int],
    status: str,
    *,
    setter: str,
    actor_user_id: int | None,
    now: dt.datetime,
    seen: dict[str, int | None],
    reason: str | None = None,
    notice: str = "cancellation",
    details: dict[str, Any] | None = None,
) -> list[Any]:
    """Set `status` on those of the appointments the rules let `setter` change, with their
    outbox and audit rows, in one statement (CHANGE_STATUS_SQL); joins the caller's
    transaction, or is one on its own in autocommit (given an engine: on a pooled
    connection, outside any session).

    Args:
        setter: the actor's role, or `rules.SCHEDULE` for leave and closures.
        seen: which appointments the actor may see (`_seen_by`).
        notice: the notice a cancellation sends (`cancellation`, or `exception`).
        details: more for each audit event (e.g. which schedule exception).

    Returns:
        A row per appointment found (see CHANGE_STATUS_SQL); `id` is None for those
        left unchanged.
    """
    guard = booking_rules.guard(setter, status, now)
    columns = booking_rules.status_columns(status, now)
    args = _CHANGE_STATUS.args(
        {
            **seen,
            "ids": list(appointment_ids),
            "status": status,
            "now": now,
            "cancelled_at": columns.get("cancelled_at"),
            "checked_in_at": columns.get("checked_in_at"),
            # an undone check-in clears its stamp (`status_columns` sets it to None)
            "clear_checked_in": "checked_in_at" in columns and columns["checked_in_at"] is None,
            "reason": reason,
            "actor": actor_user_id,
            "allowed_from": list(guard.allowed_from),
            "started_by": guard.started_by,
            "ends_after": guard.ends_after,
            "on_day_of": guard.on_day_of,
            "checked_in_since": guard.checked_in_since,
            "announcements": list(notifications.ANNOUNCEMENTS),
            "unsent": list(notifications.UNSENT),
            "notice": notice,
            # An undone check-in has an event of its own, saying when the check-in was.
            "action": CHECK_IN_UNDONE if status == "booked" else audit.APPOINTMENT_STATUS_CHANGED,
            "details": json.dumps(details or {}),
        }
    )
    if isinstance(session, AsyncEngine):
        rows = await driver_fetchall(session, _CHANGE_STATUS.sql, *args)
    else:
        if isinstance(session, AsyncSession):
            if session.new or session.dirty or session.deleted:
                await session.flush()  # as session.execute would: the statement sees them
            connection = await session.connection()
        else:
            connection = session
        rows = await driver_fetch(connection, _CHANGE_STATUS.sql, args)
    return [StatusRow(row) for row in rows]


class StatusRow:
    """A row of CHANGE_STATUS_SQL read like SQLAlchemy's rows: by attribute, or by name
    through `_mapping`."""

    __slots__ = ("_mapping",)

    def __init__(self, record: Any) -> None:
        self._mapping = record

    def __getattr__(self, name: str) -> Any:
        try:
            return self._mapping[name]
        except KeyError:
            raise AttributeError(name) from None


# Run through asyncpg (`driver_fetch`): SQLAlchemy's layers around this one statement
# cost more CPU than the driver's own work (bench/README.md, cpu17b).
_CHANGE_STATUS = NativeStatement.of(CHANGE_STATUS_SQL)


def changed_appointment(row: Any) -> Appointment:
    """The appointment as a changed row of `set_status` left it (detached)."""
    mapping = row._mapping
    return Appointment(**{name: mapping[name] for name in _COLUMNS})


_COLUMNS = tuple(Appointment.__table__.columns.keys())


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
    """Check in, complete, cancel or mark a no-show, following the state machine, or undo
    a check-in (`booked`): one statement, with the outbox and audit rows (`set_status`).
    Commits.

    Raises:
        Invalid: an illegal transition (e.g. completed -> cancelled), a check-in on
            another day, an undo too late.
        Forbidden: the actor's role may not set this status.
        NotFound: not visible to the actor.
    """
    booking_rules.check_known(status)
    target = _statement_target(session)
    for _ in range(2):
        rows = await set_status(
            target,
            [appointment_id],
            status,
            setter=actor.role,
            actor_user_id=actor.id,
            now=now,
            seen=_seen_by(actor),
            reason=reason,
        )
        if target is session:
            await session.commit()
        if not rows or not rows[0].may_see:
            raise NotFound(
                gettext("appointment %(appointment_id)s not found")
                % {"appointment_id": appointment_id}
            )
        row = rows[0]
        if row.id is not None:
            appointment = changed_appointment(row)
            change = _change(appointment, row.timezone, status, someone_waits=row.someone_waits)
            await effects.appointments_changed([change])
            return BookingResult(appointment, row.timezone, replayed=False)
        booking_rules.check_transition(actor.role, _found(row), status, now, timezone=row.timezone)
        # Allowed as it was read, refused once locked: another change came first. The
        # second pass reads what it did and answers with the reason.
    raise Conflict(gettext("the appointment has just been changed; reload it"))


async def bulk_update(
    session: AsyncSession,
    effects: Effects,
    actor: Principal,
    appointment_ids: Sequence[int],
    *,
    status: str,
    now: dt.datetime,
) -> dict[int, str]:
    """Set one status on many appointments in one statement (review M-3), with their
    outbox and audit rows (`set_status`). Commits.

    Returns:
        For each id: `updated`; `not_found` (unknown, or not the actor's to see: another
        clinic's answers like an unknown id); `forbidden` (the actor's to see, but their
        role may not set this status, e.g. a doctor cancelling); `invalid_transition`.
    """
    booking_rules.check_bulk_target(status)
    ids = list(dict.fromkeys(appointment_ids))
    if not ids or len(ids) > MAX_BULK:
        raise Invalid(
            gettext("give between 1 and %(max_bulk)s appointment ids") % {"max_bulk": MAX_BULK}
        )
    target = _statement_target(session)
    rows = await set_status(
        target,
        ids,
        status,
        setter=actor.role,
        actor_user_id=actor.id,
        now=now,
        seen=_seen_by(actor),
        details={"bulk": True},
    )
    if target is session:
        await session.commit()
    result = dict.fromkeys(ids, "not_found")
    changes = []
    for row in rows:
        if row.id is not None:
            result[row.id] = "updated"
            days = tuple(local_days(row.starts_at, row.ends_at, row.timezone))
            changes.append(
                AppointmentChange(
                    row.id,
                    row.doctor_id,
                    row.clinic_id,
                    days,
                    status,
                    row.patient_id,
                    someone_waits=row.someone_waits,
                )
            )
        elif not row.may_see:
            # Another clinic's appointment answers exactly like an unknown id: no
            # existence leak (docs/security.md, "404 or 403?").
            result[row.found_id] = "not_found"
        else:
            why = booking_rules.refusal(actor.role, _found(row), status, now, timezone=row.timezone)
            # forbidden: e.g. a doctor cancelling (theirs to see, not to cancel); no
            # reason as read: another change came first.
            forbidden = why is not None and why.kind == "forbidden"
            result[row.found_id] = "forbidden" if forbidden else "invalid_transition"
    await effects.appointments_changed(changes)
    return result
