"""`Appointment/$hold` and `$book` of a hold: a free candidate held for a patient until
it lapses, as the same `held` appointments row a waitlist offer makes, then booked in one
statement; and the release of lapsed holds (a SAQ job, tasks/fhir_holds.py).

Why a hold can never meet a booking or another hold: it is an `appointments` row in the
exclusion constraint `no_overlap` (app/waitlist/statements.py says the same of offers);
PostgreSQL decides who gets a contested slot. A hold of this module has no waitlist offer;
those of offers are accepted, declined and released through app/waitlist/ only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.identity import Principal
from app.appointments import rules as booking_rules
from app.appointments.rules import BookingRules
from app.appointments.statements import held_lock
from app.errors import Conflict, Invalid
from app.fhir.resources import AppointmentView
from app.live.effects import AppointmentChange, Effects
from app.notifications import planning as notifications
from app.scheduling.slots import load_doctor_days, local_days
from db.models import Patient

# The live-update actions of a hold made and released (as the waitlist's offers name them).
HELD = "offered"
RELEASED = "released"

_NOT_HOLDABLE = "this time is taken or held; choose another"
_NO_HOLD = "there is no such hold of yours to book: it was booked, or it lapsed"

# Take the lock on what one patient holds with one doctor (as booking does), so the count
# in the next statement, on a snapshot taken after the lock, sees every booking and hold
# committed before it.
LOCK_SQL = text(f"SELECT {held_lock('CAST(:patient_id AS bigint)', 'CAST(:doctor_id AS bigint)')}")

# Hold a slot: below the per-doctor limit, counting the patient's future bookings and
# unlapsed holds with the doctor. Returns the hold, or no row (the limit).
HOLD_SQL = text(
    """
INSERT INTO appointments (doctor_id, patient_id, clinic_id, starts_at, ends_at, status,
                          hold_expires_at, visit_type_id, buffer_before_minutes,
                          buffer_after_minutes, reason, booked_by, created_at, updated_at)
SELECT :doctor_id, :patient_id, :clinic_id, :starts_at, :ends_at, 'held', :expires_at,
       :visit_type_id, :buffer_before, :buffer_after, :reason, :actor, :now, :now
 WHERE (SELECT count(*) FROM appointments h
         WHERE h.patient_id = :patient_id AND h.doctor_id = :doctor_id
           AND h.status IN ('booked', 'held') AND h.starts_at > :now
           AND (h.status = 'booked' OR h.hold_expires_at > :now)) < :limit
RETURNING id, hold_expires_at
"""
)

# What booking a hold reads first: the row (held, or already booked by this actor: a
# retry), its clinic's zone, the patient's channels, and whether a waitlist offer owns it.
HOLD_FACTS_SQL = text(
    """
SELECT a.id, a.status, a.doctor_id, a.patient_id, a.clinic_id, a.starts_at, a.ends_at,
       a.hold_expires_at, a.booked_by, a.reason, a.cancel_reason, a.visit_type_id,
       c.timezone, p.notify_by, p.email, p.phone,
       EXISTS (SELECT FROM waitlist_offers o WHERE o.appointment_id = a.id) AS offered
  FROM appointments a
  JOIN clinics c ON c.id = a.clinic_id
  JOIN patients p ON p.id = a.patient_id
 WHERE a.id = :appointment_id
"""
)

# Book a hold: the row becomes the appointment in one statement, guarded as
# `rules.guard(ACCEPT_OFFER, "booked", now)` (held, not lapsed), below the per-doctor
# limit counted under the lock LOCK_SQL took, with its confirmation and reminders queued.
BOOK_HOLD_SQL = text(
    """
WITH held AS (
  SELECT count(*) AS n FROM appointments h
   WHERE h.patient_id = :patient_id AND h.doctor_id = :doctor_id AND h.status = 'booked'
     AND h.starts_at > :now
), booked AS (
  UPDATE appointments a
     SET status = 'booked', hold_expires_at = NULL, created_at = :now, updated_at = :now,
         booked_by = :actor, changed_by = :actor, reason = coalesce(:reason, a.reason)
   WHERE a.id = :appointment_id AND a.patient_id = :patient_id
     AND a.status = ANY(CAST(:allowed_from AS text[]))
     AND a.hold_expires_at > :held_until_after
     AND NOT EXISTS (SELECT FROM waitlist_offers o WHERE o.appointment_id = a.id)
     AND (SELECT n FROM held) < :limit
  RETURNING a.*
), outbox AS (
  INSERT INTO notifications (appointment_id, channel, kind, due_at)
  SELECT booked.id, chosen.channel, plan.kind, plan.due_at
    FROM booked, unnest(CAST(:channels AS varchar[])) AS chosen(channel),
         unnest(CAST(:kinds AS text[]), CAST(:due AS timestamptz[])) AS plan(kind, due_at)
)
SELECT booked.* FROM booked
"""
)

# The caller's own unlapsed hold of exactly this slot for this patient: a retried $hold
# (its answer lost on the way) gets it back instead of a 409 from its own hold.
OWN_HOLD_SQL = text(
    """
SELECT a.id, a.hold_expires_at FROM appointments a
 WHERE a.doctor_id = :doctor_id AND a.starts_at = :starts_at AND a.ends_at = :ends_at
   AND a.patient_id = :patient_id AND a.booked_by = :actor AND a.status = 'held'
   AND a.visit_type_id IS NOT DISTINCT FROM CAST(:visit_type_id AS bigint)
   AND a.hold_expires_at > :now
   AND NOT EXISTS (SELECT FROM waitlist_offers o WHERE o.appointment_id = a.id)
"""
)

# Release lapsed holds of $hold (a waitlist offer's are the waitlist's to release): all,
# one, or one doctor's. Returns each released slot.
RELEASE_SQL = text(
    """
DELETE FROM appointments a USING clinics c
 WHERE c.id = a.clinic_id AND a.status = 'held' AND a.hold_expires_at <= :now
   AND (CAST(:appointment_id AS bigint) IS NULL OR a.id = CAST(:appointment_id AS bigint))
   AND (CAST(:doctor_id AS bigint) IS NULL OR a.doctor_id = CAST(:doctor_id AS bigint))
   AND NOT EXISTS (SELECT FROM waitlist_offers o WHERE o.appointment_id = a.id)
RETURNING a.id, a.doctor_id, a.clinic_id, a.starts_at, a.ends_at, a.patient_id, c.timezone
"""
)


@dataclass(frozen=True, slots=True)
class Held:
    """A hold made or booked: what its Appointment shows, and whether it is a retry."""

    view: AppointmentView
    replayed: bool = False


def _change(row: Any, timezone: str, action: str) -> AppointmentChange:
    return AppointmentChange(
        row.id,
        row.doctor_id,
        row.clinic_id,
        tuple(local_days(row.starts_at, row.ends_at, timezone)),
        action,
        row.patient_id,
    )


def _lost_the_slot(exc: DBAPIError) -> bool:
    """The exclusion constraint refused the hold, or PostgreSQL broke a deadlock between
    two writers of one slot (the survivor holds it)."""
    cause = getattr(exc.orig, "__cause__", None)
    return (
        getattr(cause, "constraint_name", None) == "no_overlap"
        or getattr(cause, "sqlstate", None) == "40P01"
    )


async def hold(
    session: AsyncSession,
    effects: Effects,
    actor: Principal,
    *,
    doctor_id: int,
    start: dt.datetime,
    patient_id: int | None,
    reason: str | None,
    visit_type_id: int | None,
    rules: BookingRules,
    now: dt.datetime,
    hold_for: dt.timedelta,
) -> Held:
    """Hold a free slot (a visit of `visit_type_id`, or a plain one) for a patient until
    `now + hold_for`, under the booking's rules: a patient for themself, a desk with its
    clinic's doctors, on the grid, in the booking window, below the per-doctor limit
    (bookings and holds). Commits, then runs the after-commit effects.

    Returns:
        The hold; a retry (the caller's own unlapsed hold of this very slot for this
        patient) gets that hold back, `replayed`.

    Raises:
        Conflict: the slot is booked or held (by anyone else).
        Invalid: what booking refuses (off the grid, past, too soon, beyond the horizon,
            on leave, over the limit, no such patient).
        Forbidden: for another patient (patients), another clinic (desks), a staff-only
            type (patients).
        NotFound: no such doctor, or the visit type is not theirs.
    """
    start = start.astimezone(dt.UTC)
    target = booking_rules.target_patient(actor, patient_id)
    day = dt.timedelta(days=1)
    data = await load_doctor_days(session, doctor_id, start - day, start + day, visit_type_id)
    booking_rules.check_desk_clinic(actor, data.clinic_id)
    booking_rules.check_may_book_type(actor.role, data.visit_type)
    if await session.get(Patient, target) is None:
        raise Invalid(f"patient {target} does not exist")
    visit = data.visit_type.visit if data.visit_type is not None else None
    rules = booking_rules.for_visit_type(rules, data.visit_type)
    slot = booking_rules.find_slot(data, start, visit)
    booking_rules.check_bookable(data, slot, rules, now, visit)
    values = {
        "doctor_id": doctor_id,
        "patient_id": target,
        "clinic_id": data.clinic_id,
        "starts_at": slot.start,
        "ends_at": slot.end,
        "expires_at": now + hold_for,
        "visit_type_id": visit_type_id,
        "buffer_before": visit.buffer_before if visit else 0,
        "buffer_after": visit.buffer_after if visit else 0,
        "reason": reason,
        "actor": actor.id,
        "limit": rules.max_future_per_doctor,
        "now": now,
    }
    # A lapsed hold of this doctor that the sweeper has not reached yet goes first, in a
    # transaction of its own (a deleted row left locked while this one waits for the
    # slot would make other writers of the slot wait on it): it must not stand in the
    # way (nor count) a moment after its time.
    released = list(await session.execute(RELEASE_SQL, _release(now, doctor_id=doctor_id)))
    await session.commit()
    await effects.appointments_changed([_change(r, r.timezone, RELEASED) for r in released])
    at_limit = False
    try:
        await session.execute(LOCK_SQL, values)
        row = (await session.execute(HOLD_SQL, values)).one_or_none()
        await session.commit()
        at_limit = row is None
    except DBAPIError as exc:
        await session.rollback()
        if not _lost_the_slot(exc):
            raise
        row = None
    replayed = row is None
    if replayed:  # held or booked, or the limit: a retry finds its own hold
        row = (await session.execute(OWN_HOLD_SQL, values)).one_or_none()
        await session.rollback()
        if row is None and at_limit:
            raise booking_rules.over_the_limit(rules)
        if row is None:
            raise Conflict(_NOT_HOLDABLE)
    assert row is not None
    view = AppointmentView(
        row.id,
        doctor_id,
        target,
        data.clinic_id,
        slot.start,
        slot.end,
        "held",
        reason,
        None,
        data.timezone,
        visit_type_id=visit_type_id,
        hold_expires_at=row.hold_expires_at,
    )
    if replayed:
        return Held(view, replayed=True)
    await effects.appointments_changed([_change(view, data.timezone, HELD)])
    return Held(view)


def _view(row: Any, timezone: str) -> AppointmentView:
    return AppointmentView(
        row.id,
        row.doctor_id,
        row.patient_id,
        row.clinic_id,
        row.starts_at,
        row.ends_at,
        row.status,
        row.reason,
        row.cancel_reason,
        timezone,
        visit_type_id=row.visit_type_id,
    )


async def book_held(
    session: AsyncSession,
    effects: Effects,
    actor: Principal,
    appointment_id: int,
    *,
    doctor_id: int,
    start: dt.datetime,
    reason: str | None,
    rules: BookingRules,
    now: dt.datetime,
) -> Held:
    """Book a hold of `$hold`: the row becomes the appointment in one statement (the
    constraint never sees two rows), with its confirmation and reminders. The hold must be
    one the actor may book (a patient's own, a desk's clinic's, any for an admin), for the
    slot named, and not lapsed. A retry of a booking this actor made answers it again.
    Commits, then runs the after-commit effects.

    Raises:
        Conflict: no such hold the actor may book (someone else's, a waitlist offer's,
            lapsed, or booked by another), in the same words.
        Invalid: the slot named is not the hold's, or the per-doctor limit.
    """
    facts = (
        await session.execute(HOLD_FACTS_SQL, {"appointment_id": appointment_id})
    ).one_or_none()
    if facts is None or not _may_book(actor, facts):
        await session.rollback()
        raise Conflict(_NO_HOLD)
    if facts.doctor_id != doctor_id or facts.starts_at != start.astimezone(dt.UTC):
        await session.rollback()
        raise Invalid(f"hold {appointment_id} is for another doctor or time than the slot named")
    if facts.status == "booked" and facts.booked_by == actor.id:
        await session.rollback()
        return Held(_view(facts, facts.timezone), replayed=True)
    if facts.status != "held" or facts.offered:
        await session.rollback()
        raise Conflict(_NO_HOLD)
    guard = booking_rules.guard(booking_rules.ACCEPT_OFFER, "booked", now)
    channels = notifications.choose_channels(facts.notify_by, facts.email, facts.phone)
    planned = notifications.plan(facts.starts_at, facts.timezone, now) if channels else []
    values = {
        "appointment_id": appointment_id,
        "patient_id": facts.patient_id,
        "doctor_id": facts.doctor_id,
        "actor": actor.id,
        "reason": reason,
        "allowed_from": list(guard.allowed_from),
        "held_until_after": guard.held_until_after,
        "limit": rules.max_future_per_doctor,
        "channels": list(channels),
        "kinds": [p.kind for p in planned],
        "due": [p.due_at for p in planned],
        "now": now,
    }
    await session.execute(LOCK_SQL, values)
    row = (await session.execute(BOOK_HOLD_SQL, values)).one_or_none()
    if row is None:
        status = await session.scalar(
            text("SELECT status FROM appointments WHERE id = :id"), {"id": appointment_id}
        )
        await session.rollback()
        if status == "held" and facts.hold_expires_at > now:
            raise booking_rules.over_the_limit(rules)
        raise Conflict(_NO_HOLD)
    await session.commit()
    await effects.appointments_changed([_change(row, facts.timezone, "booked")])
    return Held(_view(row, facts.timezone))


def _release(
    now: dt.datetime, *, appointment_id: int | None = None, doctor_id: int | None = None
) -> dict[str, Any]:
    return {"now": now, "appointment_id": appointment_id, "doctor_id": doctor_id}


def _may_book(actor: Principal, facts: Any) -> bool:
    if actor.role == "admin":
        return True
    if actor.role == "front_desk":
        return bool(facts.clinic_id == actor.clinic_id)
    return actor.role == "patient" and facts.patient_id == actor.patient_id


async def release_lapsed(
    session: AsyncSession,
    effects: Effects,
    *,
    now: dt.datetime,
    appointment_id: int | None = None,
) -> list[int]:
    """Release the holds of `$hold` that lapsed by `now` (one, or all): their rows are
    deleted, so the slots are free again (and offered to the waitlist by the refill the
    release asks for). Commits.

    Returns:
        The ids of the holds released (none when booked first).
    """
    rows = list(await session.execute(RELEASE_SQL, _release(now, appointment_id=appointment_id)))
    await session.commit()
    await effects.appointments_changed([_change(r, r.timezone, RELEASED) for r in rows])
    return [r.id for r in rows]
