"""Book, reschedule, change status and bulk-update appointments: one transaction each.

The no-double-booking guarantee is PostgreSQL's exclusion constraint `no_overlap` (see
docs/architecture.md); nothing here checks-then-inserts. The reads before a write only
produce good error messages (not on the grid, on leave, past, beyond the horizon); the
insert or update itself decides who gets a contested slot, and its violation becomes a
409 with the nearest free alternatives.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Select, and_, or_, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.access.identity import Principal
from app.errors import Conflict, Forbidden, Invalid, NotFound
from app.live.effects import AppointmentChange, Effects
from app.notifications import planning as notifications
from app.scheduling.availability import Interval, day_slots
from app.scheduling.slots import (
    DOCTOR_DAYS_COLUMNS,
    DoctorDays,
    doctor_days_from_row,
    doctor_days_sql,
    load_doctor_days,
    local_days,
)
from db.models import Appointment, Clinic, Doctor, Patient

# Legal status changes; anything else answers 422.
TRANSITIONS: dict[str, frozenset[str]] = {
    "booked": frozenset({"checked_in", "cancelled", "no_show"}),
    "checked_in": frozenset({"completed", "cancelled"}),
    "completed": frozenset(),
    "cancelled": frozenset(),
    "no_show": frozenset(),
}
# What each role may set. Patients cancel their own; doctors run their own day.
ROLE_TARGETS: dict[str, frozenset[str]] = {
    "patient": frozenset({"cancelled"}),
    "doctor": frozenset({"checked_in", "completed", "no_show"}),
    "front_desk": frozenset({"checked_in", "completed", "cancelled", "no_show"}),
    "admin": frozenset({"checked_in", "completed", "cancelled", "no_show"}),
}
MAX_BULK = 500
ALTERNATIVES = 3


@dataclass(frozen=True, slots=True)
class BookingRules:
    min_notice: dt.timedelta
    horizon: dt.timedelta
    max_future_per_doctor: int


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


def _find_slot(data: DoctorDays, start: dt.datetime) -> Interval:
    """The template slot starting exactly at `start`, or Invalid."""
    tz = ZoneInfo(data.timezone)
    day = start.astimezone(tz).date()
    for slot in day_slots(day, data.ranges, tz):
        if slot.start == start:
            return Interval(slot.start, slot.end)
    raise Invalid("this time is not on the doctor's slot grid")


def _check_bookable(
    data: DoctorDays, slot: Interval, rules: BookingRules, now: dt.datetime
) -> None:
    if not data.active:
        raise Invalid("this doctor is not taking appointments")
    if slot.start < now:
        raise Invalid("this time is in the past")
    if slot.start < now + rules.min_notice:
        minutes = int(rules.min_notice.total_seconds() // 60)
        raise Invalid(f"appointments need at least {minutes} minutes' notice")
    if slot.start > now + rules.horizon:
        raise Invalid(f"appointments can be booked at most {rules.horizon.days} days ahead")
    if any(slot.overlaps(b) for b in data.blocked):
        raise Invalid("the doctor is not available then (leave or closure)")


async def nearest_free(
    session: AsyncSession,
    doctor_id: int,
    around: dt.datetime,
    rules: BookingRules,
    now: dt.datetime,
    count: int = ALTERNATIVES,
) -> list[Interval]:
    """The free slots closest in time to `around`, within a week either side."""
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
        )
        if s.available
    ]
    free.sort(key=lambda s: abs((s.start - around).total_seconds()))
    return sorted(free[:count], key=lambda s: s.start)


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


def _target_patient(actor: Principal, patient_id: int | None) -> int:
    """Who the booking is for: patients book for themselves, front desks and admins for
    anyone (a front desk only with its own clinic's doctors: checked once the doctor's
    clinic is known; that the patient exists is checked with their facts)."""
    if actor.role == "patient":
        if patient_id is not None and patient_id != actor.patient_id:
            raise Forbidden("patients can book only for themselves")
        assert actor.patient_id is not None
        return actor.patient_id
    if actor.role in ("front_desk", "admin"):
        if patient_id is None:
            raise Invalid("patient_id is required when staff book")
        return patient_id
    raise Forbidden("your role may not book appointments")


def _change(
    appointment: Appointment, timezone: str, action: str, *extra: Interval
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
    )


# What a booking reads, in one round trip: the doctor's days around the slot (for the
# grid, leave and the good error messages) and, of the patient, that they exist, how many
# future appointments they hold with this doctor, and how they want to be told.
_BOOKING_FACTS_SQL = doctor_days_sql(
    """,
  (SELECT json_build_array(p.notify_by, p.email, p.phone,
            (SELECT count(*) FROM appointments h
              WHERE h.patient_id = p.id AND h.doctor_id = d.id AND h.status = 'booked'
                AND h.starts_at > :now))
     FROM patients p WHERE p.id = :patient_id) AS patient"""
)

# The booking and its outbox rows (confirmation, reminders) in one statement: one
# statement is atomic on its own, so this needs no BEGIN/COMMIT round trips. The
# exclusion constraint `no_overlap` decides who gets a contested slot, right here.
_INSERT_BOOKING_SQL = text(
    """
WITH booked AS (
  INSERT INTO appointments (doctor_id, patient_id, clinic_id, starts_at, ends_at, reason,
                            idempotency_key, idempotency_hash, booked_by)
  VALUES (:doctor_id, :patient_id, :clinic_id, :starts_at, :ends_at, :reason,
          :idempotency_key, :idempotency_hash, :booked_by)
  RETURNING *
), outbox AS (
  INSERT INTO notifications (appointment_id, channel, kind, due_at)
  SELECT booked.id, chosen.channel, plan.kind, plan.due_at
    FROM booked, unnest(CAST(:channels AS varchar[])) AS chosen(channel),
         unnest(CAST(:kinds AS text[]), CAST(:dues AS timestamptz[])) AS plan(kind, due_at)
)
SELECT * FROM booked
"""
)


@dataclass(frozen=True, slots=True)
class _PatientFacts:
    held: int  # future booked appointments with the doctor being booked
    channels: tuple[str, ...]  # where the confirmation and reminders go (none: nowhere)


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
            _BOOKING_FACTS_SQL,
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
    return data, _PatientFacts(int(held), notifications.choose_channels(notify_by, email, phone))


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
        "channels": [],
        "kinds": [],
        "dues": [],
    }
    with suppress(IntegrityError):
        async with connection.begin_nested():
            await connection.execute(_INSERT_BOOKING_SQL, nothing)


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
) -> BookingResult:
    """Book one slot. Commits, then runs the after-commit effects.

    Two round trips to PostgreSQL: what the checks need (doctor's days, patient), then
    the booking with its outbox rows as one atomic statement.

    Args:
        actor: who is booking (a patient for themself, or staff for `patient_id`).
        start: the slot's start; must be exactly on the doctor's grid.
        idempotency_key: the client's key; the same key and body return the original.

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
    target = _target_patient(actor, patient_id)
    await _one_statement_session(session)
    data, facts = await _booking_facts(session, doctor_id, start, target, now)
    if actor.role == "front_desk" and actor.clinic_id != data.clinic_id:
        raise Forbidden("front desks book only with their own clinic's doctors")
    if facts is None:
        raise Invalid(f"patient {target} does not exist")
    digest = _request_hash(doctor_id, start, target, reason)
    if idempotency_key and (
        replay := await _replay(session, actor, idempotency_key, digest, data.timezone)
    ):
        return replay
    slot = _find_slot(data, start)
    _check_bookable(data, slot, rules, now)
    if facts.held >= rules.max_future_per_doctor:
        raise Invalid(
            f"a patient may hold at most {rules.max_future_per_doctor} future appointments "
            "with one doctor"
        )
    planned = notifications.plan(slot.start, data.timezone, now) if facts.channels else []
    try:
        row = (
            await session.execute(
                _INSERT_BOOKING_SQL,
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
                    "channels": list(facts.channels),
                    "kinds": [p.kind for p in planned],
                    "dues": [p.due_at for p in planned],
                },
            )
        ).one()
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


def visible(actor: Principal) -> Any:
    """The SQL condition for the appointments `actor` may see."""
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
        raise NotFound(f"appointment {appointment_id} not found")
    return appointment


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
    if actor.role == "doctor":
        raise Forbidden("doctors do not reschedule; the front desk does")
    if appointment.status != "booked":
        raise Invalid(f"a {appointment.status} appointment cannot be rescheduled")
    data = await _load_around(session, appointment.doctor_id, start)
    slot = _find_slot(data, start)
    _check_bookable(data, slot, rules, now)
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


def _check_transition(
    actor: Principal, appointment: Appointment, target: str, now: dt.datetime
) -> None:
    if target not in ROLE_TARGETS.get(actor.role, frozenset()):
        raise Forbidden(f"your role may not mark appointments {target}")
    if target not in TRANSITIONS[appointment.status]:
        raise Invalid(f"a {appointment.status} appointment cannot become {target}")
    if target == "no_show" and now < appointment.starts_at:
        raise Invalid("a no-show can be recorded only after the start time")
    if target == "cancelled" and now >= appointment.ends_at:
        raise Invalid("a past appointment cannot be cancelled; mark it completed or no-show")


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
    """Check in, complete, cancel or mark a no-show, following the state machine.

    Raises:
        Invalid: an illegal transition (e.g. completed -> cancelled).
        Forbidden: the actor's role may not set this status.
        NotFound: not visible to the actor.
    """
    if status not in TRANSITIONS:
        raise Invalid(f"unknown status {status!r}")
    appointment, timezone = await _locked_with_timezone(session, actor, appointment_id)
    _check_transition(actor, appointment, status, now)
    appointment.status = status
    appointment.updated_at = now
    if status == "cancelled":
        appointment.cancelled_at, appointment.cancel_reason = now, reason
        appointment.cancelled_by = actor.id
    if status == "checked_in":
        appointment.checked_in_at = now
    # The outbox: unsent reminders are void; a cancellation notice is due now.
    await notifications.appointments_status_changed(session, [appointment.id], status, now)
    await session.commit()
    await effects.appointments_changed([_change(appointment, timezone, status)])
    return BookingResult(appointment, timezone, replayed=False)


async def clinic_timezone(session: AsyncSession, appointment: Appointment) -> str:
    """The time zone of the appointment's clinic (for showing its times)."""
    return await _clinic_timezone(session, appointment.doctor_id)


async def _clinic_timezone(session: AsyncSession, doctor_id: int) -> str:
    tz = await session.scalar(
        select(Clinic.timezone)
        .join(Doctor, Doctor.clinic_id == Clinic.id)
        .where(Doctor.id == doctor_id)
    )
    return tz or "UTC"


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
    if status not in TRANSITIONS:
        raise Invalid(f"unknown status {status!r}")
    if not any(status in targets for targets in TRANSITIONS.values()):
        raise Invalid(f"no appointment can be set back to {status}")
    ids = list(dict.fromkeys(appointment_ids))
    if not ids or len(ids) > MAX_BULK:
        raise Invalid(f"give between 1 and {MAX_BULK} appointment ids")
    may_set = status in ROLE_TARGETS.get(actor.role, frozenset())
    rows = (
        await session.execute(
            select(
                Appointment.id,
                Appointment.status,
                Appointment.starts_at,
                Appointment.ends_at,
                visible(actor),
            ).where(Appointment.id.in_(ids))
        )
    ).all()
    result = dict.fromkeys(ids, "not_found")
    candidates = []
    for row_id, current, starts_at, ends_at, may_see in rows:
        if not may_see:
            # Another clinic's appointment answers exactly like an unknown id: no
            # existence leak (docs/security.md, "404 or 403?").
            result[row_id] = "not_found"
        elif not may_set:  # e.g. a doctor cancelling: theirs to see, not to cancel
            result[row_id] = "forbidden"
        elif (
            status not in TRANSITIONS[current]
            or (status == "no_show" and now < starts_at)
            or (status == "cancelled" and now >= ends_at)
        ):
            result[row_id] = "invalid_transition"
        else:
            candidates.append(row_id)
    allowed_from = [s for s, targets in TRANSITIONS.items() if status in targets]
    values: dict[str, Any] = {"status": status, "updated_at": now}
    if status == "cancelled":
        values["cancelled_at"] = now
    if status == "checked_in":
        values["checked_in_at"] = now
    updated: Any = (
        await session.execute(
            update(Appointment)
            .where(
                Appointment.id.in_(candidates),
                Appointment.status.in_(allowed_from),  # re-checked: rows may have moved on
                visible(actor),
            )
            .values(**values)
            .returning(
                Appointment.id,
                Appointment.doctor_id,
                Appointment.clinic_id,
                Appointment.starts_at,
                Appointment.ends_at,
                Appointment.patient_id,
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
    timezones = await _timezones(session, {row[1] for row in changed})
    changes = []
    for row_id, doctor_id, clinic_id, starts_at, ends_at, patient_id in changed:
        result[row_id] = "updated"
        days = tuple(local_days(starts_at, ends_at, timezones[doctor_id]))
        changes.append(AppointmentChange(row_id, doctor_id, clinic_id, days, status, patient_id))
    await effects.appointments_changed(changes)
    return result


async def _timezones(session: AsyncSession, doctor_ids: set[int]) -> dict[int, str]:
    if not doctor_ids:
        return {}
    rows = await session.execute(
        select(Doctor.id, Clinic.timezone)
        .join(Clinic, Clinic.id == Doctor.clinic_id)
        .where(Doctor.id.in_(doctor_ids))
    )
    return {doctor_id: timezone for doctor_id, timezone in rows}


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
        raise Invalid("cursor is not one this API returned") from None


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
        raise Invalid("limit must be between 1 and 200")
    if when not in (None, "upcoming", "past"):
        raise Invalid("when must be upcoming or past")
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
        tz_name = await _zone_for_filter(session, doctor_id, clinic_id, actor)
        window = local_days_window(day, tz_name)
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


def local_days_window(day: dt.date, timezone: str) -> Interval:
    from app.scheduling.availability import local_day_bounds

    return local_day_bounds(day, ZoneInfo(timezone))


async def _zone_for_filter(
    session: AsyncSession, doctor_id: int | None, clinic_id: int | None, actor: Principal
) -> str:
    if doctor_id is not None:
        return await _clinic_timezone(session, doctor_id)
    clinic = clinic_id or actor.clinic_id
    if clinic is None:
        raise Invalid("a day filter needs doctor_id or clinic_id")
    tz = await session.scalar(select(Clinic.timezone).where(Clinic.id == clinic))
    if tz is None:
        raise NotFound(f"clinic {clinic} does not exist")
    return tz
