"""Offers: a freed slot held for the first matching waitlister, accepted, declined or lapsed.

`refill` (a SAQ job, tasks/waitlist.py) offers each free slot of a doctor-day to the first
matching entry: the hold is an appointments row `held` for that patient until
`hold_expires_at`, so nobody else can book it or be offered it (statements.py says why).
`accept` turns the hold into the appointment in one statement; `decline` and
`release_lapsed` delete the hold, and the released slot's `released` change makes the
next refill offer it to the next entry. Every function commits and then runs the
after-commit effects (cache, live pages, the next jobs).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app import i18n
from app.access.identity import Principal
from app.appointments import rules as booking_rules
from app.appointments.commands import changed_appointment
from app.appointments.rules import BookingRules
from app.errors import Conflict, Forbidden, NotFound
from app.i18n import gettext
from app.live.effects import AppointmentChange, Effects
from app.notifications import planning as notifications
from app.scheduling.availability import day_slots, local_day_bounds
from app.scheduling.slots import load_doctor_days, local_days
from app.waitlist import entries
from app.waitlist.statements import (
    ACCEPT_FACTS_SQL,
    ACCEPT_SQL,
    OFFER_SQL,
    RECENTLY_FREED_SQL,
    REFILL_LOCK_SQL,
    RELEASE_SQL,
    WAITED_TYPES_SQL,
)
from db.models import Appointment, Clinic, Doctor, VisitType, WaitlistEntry, WaitlistOffer

log = logging.getLogger(__name__)

OFFERED = "offered"  # the change a new hold makes (live pages; the offer's messages)
RELEASED = "released"  # a hold declined, lapsed or left: the slot is free again


@dataclass(frozen=True, slots=True)
class Offered:
    offer_id: int
    appointment_id: int
    patient_id: int
    expires_at: dt.datetime
    starts_at: dt.datetime
    ends_at: dt.datetime


def _change(row: Any, timezone: str, action: str, appointment_id: int) -> AppointmentChange:
    return AppointmentChange(
        appointment_id,
        row.doctor_id,
        row.clinic_id,
        tuple(local_days(row.starts_at, row.ends_at, timezone)),
        action,
        row.patient_id,
    )


async def refill(
    session: AsyncSession,
    effects: Effects,
    *,
    doctor_id: int,
    day: dt.date,
    rules: BookingRules,
    hold: dt.timedelta,
    now: dt.datetime,
    freed_at: dt.datetime | None = None,
) -> list[Offered]:
    """Offer every free, bookable slot of the doctor's clinic-local `day` to the first
    waiting entry that matches it (one offer per slot and per entry at a time). Commits.

    Entries asking for a visit type are offered visits of that type (its length on the
    template's grid, its buffers free, its notice and horizon); the others the template's
    plain slots. Each kind asked for is served in turn, the longest-waiting entry's first.

    A slot someone books meanwhile is skipped (the exclusion constraint refuses the hold);
    so is an entry a concurrent refill is offering something else. Refills of one doctor
    take turns on a lock, so running this twice at once is harmless.

    Args:
        freed_at: when the slot was freed (its cancellation), for "freed to rebooked".
    """
    await session.execute(REFILL_LOCK_SQL, {"doctor_id": doctor_id})
    doctor = await session.get(Doctor, doctor_id)
    if doctor is None or not doctor.active:
        await session.rollback()
        return []
    timezone = await session.scalar(select(Clinic.timezone).where(Clinic.id == doctor.clinic_id))
    assert timezone is not None
    kinds = await session.scalars(
        WAITED_TYPES_SQL,
        {"doctor_id": doctor_id, "clinic_id": doctor.clinic_id, "specialty": doctor.specialty},
    )
    made: list[Offered] = []
    for visit_type_id in list(kinds):
        made += await _offer_kind(
            session,
            doctor,
            timezone,
            day,
            visit_type_id,
            rules=rules,
            expires=now + hold,
            now=now,
            freed_at=freed_at or now,
        )
    await session.commit()
    await effects.appointments_changed(
        [
            AppointmentChange(
                o.appointment_id,
                doctor_id,
                doctor.clinic_id,
                tuple(local_days(o.starts_at, o.ends_at, timezone)),
                OFFERED,
                o.patient_id,
            )
            for o in made
        ]
    )
    if made:
        await effects.waitlist_changed([doctor.clinic_id])
    return made


async def _offer_kind(
    session: AsyncSession,
    doctor: Doctor,
    timezone: str,
    day: dt.date,
    visit_type_id: int | None,
    *,
    rules: BookingRules,
    expires: dt.datetime,
    now: dt.datetime,
    freed_at: dt.datetime,
) -> list[Offered]:
    """Offer the day's free visits of one kind (a visit type, or None: plain slots) to the
    entries waiting for that kind; each hold in its own savepoint. Does not commit."""
    tz = ZoneInfo(timezone)
    bounds = local_day_bounds(day, tz)
    try:
        data = await load_doctor_days(session, doctor.id, bounds.start, bounds.end, visit_type_id)
    except NotFound:  # the type was deleted since: its entries now wait for plain slots
        return []
    kind = data.visit_type
    kind_rules = booking_rules.for_visit_type(rules, kind)
    free = [
        slot
        for slot in day_slots(
            day,
            data.ranges,
            tz,
            booked=data.booked,
            blocked=data.blocked,
            not_before=now + kind_rules.min_notice,
            not_after=now + kind_rules.horizon,
            visit=kind.visit if kind is not None else None,
        )
        if slot.available
    ]
    made: list[Offered] = []
    for slot in free:
        local_start, local_end = slot.start.astimezone(tz), slot.end.astimezone(tz)
        values = {
            "doctor_id": doctor.id,
            "clinic_id": doctor.clinic_id,
            "specialty": doctor.specialty,
            "visit_type_id": visit_type_id,
            "buffer_before": kind.buffer_before if kind is not None else 0,
            "buffer_after": kind.buffer_after if kind is not None else 0,
            "day": day,
            "weekday": day.weekday(),
            "local_start": local_start.time(),
            # a slot ending at midnight ends at the end of the window's day
            "local_end": local_end.time() if local_end.date() == day else dt.time.max,
            "starts_at": slot.start,
            "ends_at": slot.end,
            "expires_at": expires,
            "freed_at": freed_at,
            "now": now,
        }
        try:
            async with session.begin_nested():
                row = (await session.execute(OFFER_SQL, values)).one_or_none()
        except (IntegrityError, DBAPIError) as exc:
            # Booked (or held by a concurrent refill) since we read it: not ours to offer.
            log.info("slot %s of doctor %s not offered: %s", slot.start, doctor.id, exc.orig)
            continue
        if row is not None:
            made.append(
                Offered(
                    row.offer_id, row.appointment_id, row.patient_id, expires, slot.start, slot.end
                )
            )
    return made


@dataclass(frozen=True, slots=True)
class Accepted:
    appointment: Appointment
    timezone: str


async def accept(
    session: AsyncSession,
    effects: Effects,
    actor: Principal,
    offer_id: int,
    *,
    rules: BookingRules,
    now: dt.datetime,
) -> Accepted:
    """Book the held slot of the patient's open offer: the hold becomes the appointment in
    one statement (statements.ACCEPT_SQL, guarded as `rules.guard(ACCEPT_OFFER, ...)`),
    with its confirmation and reminders. Commits.

    Raises:
        Forbidden: not a patient.
        NotFound: not this patient's offer.
        Conflict: the offer is no longer open (accepted, declined or lapsed).
        Invalid: the patient already holds the most future bookings with this doctor.
    """
    if actor.role != "patient" or actor.patient_id is None:
        raise Forbidden(gettext("only the patient an offer is made to may accept it"))
    facts = (
        await session.execute(
            ACCEPT_FACTS_SQL, {"offer_id": offer_id, "patient_id": actor.patient_id}
        )
    ).one_or_none()
    if facts is None:
        await session.rollback()
        raise NotFound(gettext("offer %(offer_id)s not found") % {"offer_id": offer_id})
    if facts.status != "open" or facts.appointment_id is None:
        await session.rollback()
        raise Conflict(
            gettext("this offer is %(status)s; it can no longer be accepted")
            % {"status": facts.status}
        )
    guard = booking_rules.guard(booking_rules.ACCEPT_OFFER, "booked", now)
    channels = notifications.choose_channels(facts.notify_by, facts.email, facts.phone)
    planned = notifications.plan(facts.starts_at, facts.timezone, now) if channels else []
    row = (
        await session.execute(
            ACCEPT_SQL,
            {
                "offer_id": offer_id,
                "appointment_id": facts.appointment_id,
                "patient_id": actor.patient_id,
                "doctor_id": facts.doctor_id,
                "actor": actor.id,
                "allowed_from": list(guard.allowed_from),
                "held_until_after": guard.held_until_after,
                "limit": rules.max_future_per_doctor,
                "channels": list(channels),
                "kinds": [p.kind for p in planned],
                "due": [p.due_at for p in planned],
                "now": now,
            },
        )
    ).one_or_none()
    if row is None:  # declined, lapsed or accepted meanwhile, or the limit: say which
        status = await session.scalar(
            select(WaitlistOffer.status).where(WaitlistOffer.id == offer_id)
        )
        await session.rollback()
        if status != "open":
            raise Conflict(
                gettext("this offer is %(status)s; it can no longer be accepted")
                % {"status": status}
            )
        why = booking_rules.refusal(
            booking_rules.ACCEPT_OFFER,
            _Hold(facts.starts_at, facts.ends_at, facts.expires_at),
            "booked",
            now,
        )
        if why is not None:
            raise Conflict(why.message)
        raise booking_rules.over_the_limit(rules)
    await session.commit()
    appointment = changed_appointment(row)
    await effects.appointments_changed([_change(appointment, facts.timezone, "booked", row.id)])
    await effects.waitlist_changed([appointment.clinic_id])  # the entry is satisfied
    return Accepted(appointment, facts.timezone)


@dataclass(frozen=True, slots=True)
class _Hold:
    """An open hold as `rules.refusal` reads it."""

    starts_at: dt.datetime
    ends_at: dt.datetime
    hold_expires_at: dt.datetime
    status: str = "held"
    checked_in_at: dt.datetime | None = None


async def _release(
    session: AsyncSession,
    effects: Effects,
    *,
    now: dt.datetime,
    offer_id: int | None = None,
    patient_id: int | None = None,
    decline: bool = False,
    actor_user_id: int | None = None,
) -> list[int]:
    rows = list(
        await session.execute(
            RELEASE_SQL,
            {
                "offer_id": offer_id,
                "patient_id": patient_id,
                "decline": decline,
                "actor": actor_user_id,
                "now": now,
            },
        )
    )
    await session.commit()
    await effects.appointments_changed([_change(r, r.timezone, RELEASED, r.id) for r in rows])
    await effects.waitlist_changed([r.clinic_id for r in rows])
    return [r.offer_id for r in rows]


async def decline(
    session: AsyncSession, effects: Effects, actor: Principal, offer_id: int, *, now: dt.datetime
) -> None:
    """Decline the patient's open offer: the hold is released (and offered to the next
    entry by the refill its release asks for). The entry keeps waiting. Commits.

    Raises:
        Forbidden: not a patient.
        NotFound: not this patient's offer.
        Conflict: the offer is no longer open.
    """
    if actor.role != "patient" or actor.patient_id is None:
        raise Forbidden(gettext("only the patient an offer is made to may decline it"))
    status = await session.scalar(
        select(WaitlistOffer.status).where(
            WaitlistOffer.id == offer_id, WaitlistOffer.patient_id == actor.patient_id
        )
    )
    if status is None:
        raise NotFound(gettext("offer %(offer_id)s not found") % {"offer_id": offer_id})
    released = await _release(
        session,
        effects,
        now=now,
        offer_id=offer_id,
        patient_id=actor.patient_id,
        decline=True,
        actor_user_id=actor.id,
    )
    if not released:
        raise Conflict(
            gettext("this offer is %(status)s; it can no longer be declined") % {"status": status}
        )


async def release_lapsed(
    session: AsyncSession, effects: Effects, *, now: dt.datetime, offer_id: int | None = None
) -> list[int]:
    """Release the holds whose offers lapsed by `now` (one offer's, or all). Commits.

    Returns:
        The ids of the offers that expired (none when it was accepted or declined first).
    """
    return await _release(session, effects, now=now, offer_id=offer_id)


async def leave(
    session: AsyncSession, effects: Effects, actor: Principal, entry_id: int, *, now: dt.datetime
) -> None:
    """Take an entry off the waitlist; its open offer, if any, is released with it (the
    slot goes to the next in line). Commits."""
    open_offer, clinic_id = await entries.leave(session, actor, entry_id, now=now)
    if open_offer is None:
        await session.commit()
        await effects.waitlist_changed([clinic_id])
        return
    await _release(
        session, effects, now=now, offer_id=open_offer, decline=True, actor_user_id=actor.id
    )


@dataclass(frozen=True, slots=True)
class OfferView:
    id: int
    doctor_id: int
    doctor_name: str
    clinic_name: str
    timezone: str
    starts_at: dt.datetime
    ends_at: dt.datetime
    expires_at: dt.datetime
    status: str
    visit_type_id: int | None = None  # the kind of visit held (the entry's), if typed
    visit_type_name: str | None = None

    @property
    def label(self) -> str:
        return i18n.moment(self.starts_at, self.timezone)

    @property
    def expires_label(self) -> str:
        return i18n.time(self.expires_at, self.timezone)

    def as_json(self) -> dict[str, object]:
        tz = ZoneInfo(self.timezone)
        return {
            "id": self.id,
            "doctor_id": self.doctor_id,
            "start": self.starts_at.astimezone(tz).isoformat(),
            "end": self.ends_at.astimezone(tz).isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "status": self.status,
            "visit_type_id": self.visit_type_id,  # additive: not in the contract's fields
            "visit_type_name": self.visit_type_name,
        }


async def listed(
    session: AsyncSession, patient_id: int, *, open_only: bool = False, limit: int = 100
) -> list[OfferView]:
    """A patient's offers, newest first (only the open ones with `open_only`). An open
    offer whose time has passed reads `expired` even before the sweeper releases it."""
    query = (
        select(
            WaitlistOffer.id,
            WaitlistOffer.doctor_id,
            Doctor.full_name,
            Clinic.name,
            Clinic.timezone,
            WaitlistOffer.starts_at,
            WaitlistOffer.ends_at,
            WaitlistOffer.expires_at,
            WaitlistOffer.status,
            WaitlistEntry.visit_type_id,
            VisitType.name,
        )
        .join(Doctor, Doctor.id == WaitlistOffer.doctor_id)
        .join(Clinic, Clinic.id == WaitlistOffer.clinic_id)
        # an offer holds a visit of its entry's kind (statements.OFFER_SQL matches on it)
        .join(WaitlistEntry, WaitlistEntry.id == WaitlistOffer.entry_id)
        .outerjoin(VisitType, VisitType.id == WaitlistEntry.visit_type_id)
        .where(WaitlistOffer.patient_id == patient_id)
        .order_by(WaitlistOffer.created_at.desc(), WaitlistOffer.id.desc())
        .limit(limit)
    )
    if open_only:
        query = query.where(WaitlistOffer.status == "open")
    now = dt.datetime.now(dt.UTC)
    views = []
    for row in await session.execute(query):
        view = OfferView(*row)
        if view.status == "open" and view.expires_at <= now:
            view = replace(view, status="expired")
        if not (open_only and view.status != "open"):
            views.append(view)
    return views


async def patient_waitlist(session: AsyncSession, patient_id: int) -> dict[str, list[Any]]:
    """What "my appointments" shows of the waitlist: open offers and waiting entries."""
    return {
        "offers": await listed(session, patient_id, open_only=True),
        "entries": await entries.waiting_of(session, patient_id),
    }


async def recently_freed(
    session: AsyncSession, *, since: dt.datetime, now: dt.datetime
) -> Sequence[tuple[int, dt.date]]:
    """Doctor-days with a cancellation since `since` in a clinic where someone waits."""
    rows = await session.execute(RECENTLY_FREED_SQL, {"since": since, "now": now})
    return [(r.doctor_id, r.day) for r in rows]
