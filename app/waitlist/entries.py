"""Waitlist entries: who waits for what (join, leave, the patient's and the clinic's lists).

An entry asks for one doctor, or any doctor of a clinic with a specialty, on clinic-local
days from `first_day` to `last_day`, optionally only on some weekdays and within a
time-of-day window (a slot matches when it starts at or after `earliest` and ends by
`latest`). The clinic serves entries first come, first served (`created_at`). An entry is
`booked` once one of its offers is accepted and `left` when the patient (or the desk)
takes it off; only `waiting` ones get offers. An entry for a doctor may name one of their
visit types: it is then offered only visits of that type (its length, buffers, notice and
horizon); without one, the template's plain slots, as before visit types.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.access import audit
from app.access.identity import Principal
from app.appointments import rules as booking_rules
from app.errors import Forbidden, Invalid, NotFound
from app.i18n import gettext
from app.live.effects import Effects
from app.scheduling import visit_types
from db.models import Clinic, Doctor, Patient, VisitType, WaitlistEntry, WaitlistOffer

# A patient waits in at most this many entries at once: enough for every doctor they would
# see sooner, few enough that one patient cannot crowd a clinic's list.
MAX_WAITING_PER_PATIENT = 10
# How far ahead an entry may reach: no further than one can book.
WEEKDAYS = range(7)


@dataclass(frozen=True, slots=True)
class Wish:
    """What a patient waits for, as given (validated by `check_wish`)."""

    first_day: dt.date
    last_day: dt.date
    doctor_id: int | None = None
    clinic_id: int | None = None
    specialty: str | None = None
    earliest: dt.time | None = None
    latest: dt.time | None = None
    weekdays: tuple[int, ...] | None = None
    visit_type_id: int | None = None


def check_wish(wish: Wish, today: dt.date, horizon: dt.timedelta) -> Wish:
    """The wish tidied (specialty trimmed, weekdays sorted), or Invalid saying what is wrong.

    Pure: the doctor and clinic are checked against the database by `join`.
    """
    specialty = " ".join((wish.specialty or "").split()) or None
    if (wish.doctor_id is None) == (wish.clinic_id is None or specialty is None):
        raise Invalid(gettext("give either doctor_id, or clinic_id with specialty"))
    if wish.doctor_id is not None and (wish.clinic_id is not None or specialty is not None):
        raise Invalid(gettext("give either doctor_id, or clinic_id with specialty, not both"))
    if wish.visit_type_id is not None and wish.doctor_id is None:
        raise Invalid(gettext("a visit type is a doctor's: give doctor_id with visit_type_id"))
    if wish.last_day < wish.first_day:
        raise Invalid(gettext("'to' must not be before 'from'"))
    if wish.last_day < today:
        raise Invalid(gettext("the range is already over"))
    if wish.first_day > today + horizon:
        raise Invalid(gettext("the range must start within %(days)s days") % {"days": horizon.days})
    if wish.earliest is not None and wish.latest is not None and wish.latest <= wish.earliest:
        raise Invalid(gettext("'latest' must be after 'earliest'"))
    weekdays = None
    if wish.weekdays is not None:
        if not wish.weekdays or any(d not in WEEKDAYS for d in wish.weekdays):
            raise Invalid(gettext("weekdays are 0 (Monday) to 6 (Sunday), at least one"))
        weekdays = tuple(sorted(set(wish.weekdays)))
    return Wish(
        max(wish.first_day, today),
        wish.last_day,
        wish.doctor_id,
        wish.clinic_id,
        specialty,
        wish.earliest,
        wish.latest,
        weekdays,
        wish.visit_type_id,
    )


@dataclass(frozen=True, slots=True)
class EntryView:
    """An entry as the patient, the desk and the API show it."""

    id: int
    patient_id: int
    patient_name: str
    clinic_id: int
    clinic_name: str
    doctor_id: int | None
    doctor_name: str | None
    specialty: str | None
    first_day: dt.date
    last_day: dt.date
    earliest: dt.time | None
    latest: dt.time | None
    weekdays: tuple[int, ...] | None
    status: str
    created_at: dt.datetime
    visit_type_id: int | None = None
    visit_type_name: str | None = None  # what the lists show (the API gives the id)
    offered_until: dt.datetime | None = None  # an open offer's end (the desk's list)

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "patient_id": self.patient_id,
            "clinic_id": self.clinic_id,
            "doctor_id": self.doctor_id,
            "specialty": self.specialty,
            "from": self.first_day.isoformat(),
            "to": self.last_day.isoformat(),
            "earliest": self.earliest.strftime("%H:%M") if self.earliest else None,
            "latest": self.latest.strftime("%H:%M") if self.latest else None,
            "weekdays": list(self.weekdays) if self.weekdays is not None else None,
            "visit_type_id": self.visit_type_id,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
        }


_PATIENT_LOCK = text(
    "SELECT pg_advisory_xact_lock(hashtextextended('waitlist entries:'"
    " || CAST(CAST(:p AS bigint) AS text), 0))"
)


async def join(
    session: AsyncSession,
    effects: Effects,
    actor: Principal,
    wish: Wish,
    *,
    patient_id: int | None,
    horizon: dt.timedelta,
    now: dt.datetime,
) -> EntryView:
    """Put a patient on the waitlist (a patient themself, the desk or an admin for
    `patient_id`). Commits. The count against MAX_WAITING_PER_PATIENT is taken under a
    lock on the patient, so parallel joins cannot pass it.

    Raises:
        Invalid: a bad wish, no such patient, an inactive doctor, too many entries.
        Forbidden: a doctor, a desk for another clinic's doctor, or a patient asking for
            a visit type booked by staff only.
        NotFound: no such doctor or clinic, or a visit type not the doctor's.
    """
    target = booking_rules.target_patient(actor, patient_id)
    wish = check_wish(wish, now.date() - dt.timedelta(days=1), horizon)
    if wish.doctor_id is not None:
        doctor = await session.get(Doctor, wish.doctor_id)
        if doctor is None:
            raise NotFound(
                gettext("doctor %(doctor_id)s not found") % {"doctor_id": wish.doctor_id}
            )
        if not doctor.active:
            raise Invalid(gettext("this doctor is not taking appointments"))
        if wish.visit_type_id is not None:
            kind = await visit_types.get_visit_type(session, doctor.id, wish.visit_type_id)
            if not kind.online and actor.role not in booking_rules.MAY_BOOK_STAFF_ONLY:
                raise Forbidden(
                    gettext("%(name)s is booked by the clinic's staff only") % {"name": kind.name}
                )
        clinic_id = doctor.clinic_id
    else:
        assert wish.clinic_id is not None
        if await session.get(Clinic, wish.clinic_id) is None:
            raise NotFound(
                gettext("clinic %(clinic_id)s not found") % {"clinic_id": wish.clinic_id}
            )
        clinic_id = wish.clinic_id
    booking_rules.check_desk_clinic(actor, clinic_id)
    if await session.get(Patient, target) is None:
        raise Invalid(gettext("patient %(target)s does not exist") % {"target": target})
    await session.execute(_PATIENT_LOCK, {"p": target})
    waiting = await session.scalar(
        select(func.count()).where(
            WaitlistEntry.patient_id == target, WaitlistEntry.status == "waiting"
        )
    )
    if (waiting or 0) >= MAX_WAITING_PER_PATIENT:
        await session.rollback()
        raise Invalid(
            gettext("a patient may wait in at most %(max_waiting_per_patient)s entries at once")
            % {"max_waiting_per_patient": MAX_WAITING_PER_PATIENT}
        )
    entry = WaitlistEntry(
        patient_id=target,
        clinic_id=clinic_id,
        doctor_id=wish.doctor_id,
        specialty=None if wish.doctor_id is not None else wish.specialty,
        first_day=wish.first_day,
        last_day=wish.last_day,
        earliest=wish.earliest,
        latest=wish.latest,
        weekdays=list(wish.weekdays) if wish.weekdays is not None else None,
        visit_type_id=wish.visit_type_id,
        created_by=actor.id,
        created_at=now,
        updated_at=now,
    )
    session.add(entry)
    await session.flush()
    await audit.record(
        session,
        actor_user_id=actor.id,
        action=audit.WAITLIST_JOINED,
        subject_type="waitlist_entry",
        subject_id=entry.id,
        patient_id=target,
    )
    entry_id = entry.id
    await session.commit()
    await effects.waitlist_changed([clinic_id])
    (view,) = await _views(session, WaitlistEntry.id == entry_id)
    return view


def _may_manage(actor: Principal) -> object:
    """The entries `actor` may see and take off: a patient their own, a desk its clinic's."""
    if actor.role == "patient":
        return WaitlistEntry.patient_id == (actor.patient_id or -1)
    if actor.role == "front_desk":
        return WaitlistEntry.clinic_id == (actor.clinic_id or -1)
    if actor.role == "admin":
        return WaitlistEntry.id.is_not(None)
    raise Forbidden(gettext("your role has no waitlist"))


async def leave(
    session: AsyncSession, actor: Principal, entry_id: int, *, now: dt.datetime
) -> tuple[int | None, int]:
    """Take an entry off the waitlist (idempotent: leaving twice is fine). Does not commit:
    the caller releases the entry's open offer in the same transaction (offers.leave).

    Returns:
        The id of the entry's open offer, if it has one (to be released with it), and
        the entry's clinic (whose waitlist changed).

    Raises:
        NotFound: not an entry the actor may see.
    """
    entry = await session.scalar(
        select(WaitlistEntry)
        .where(WaitlistEntry.id == entry_id, _may_manage(actor))  # type: ignore[arg-type]
        .with_for_update()
    )
    if entry is None:
        raise NotFound(gettext("waitlist entry %(entry_id)s not found") % {"entry_id": entry_id})
    if entry.status == "waiting":
        entry.status, entry.updated_at = "left", now
        await audit.record(
            session,
            actor_user_id=actor.id,
            action=audit.WAITLIST_LEFT,
            subject_type="waitlist_entry",
            subject_id=entry.id,
            patient_id=entry.patient_id,
        )
    open_offer = await session.scalar(
        text("SELECT id FROM waitlist_offers WHERE entry_id = :e AND status = 'open'"),
        {"e": entry_id},
    )
    return open_offer, entry.clinic_id


async def listed(
    session: AsyncSession,
    actor: Principal,
    *,
    patient_id: int | None = None,
    clinic_id: int | None = None,
) -> list[EntryView]:
    """The waiting entries the actor may see, first in line first: a patient's own, a
    desk's clinic's (optionally one patient's, or one clinic's for an admin)."""
    where = [_may_manage(actor), WaitlistEntry.status == "waiting"]
    if patient_id is not None:
        where.append(WaitlistEntry.patient_id == patient_id)
    if clinic_id is not None:
        where.append(WaitlistEntry.clinic_id == clinic_id)
    return await _views(session, *where)


async def waiting_of(session: AsyncSession, patient_id: int) -> list[EntryView]:
    """A patient's waiting entries (their own page)."""
    return await _views(
        session, WaitlistEntry.patient_id == patient_id, WaitlistEntry.status == "waiting"
    )


async def _views(session: AsyncSession, *where: object) -> list[EntryView]:
    rows = await session.execute(
        select(
            WaitlistEntry.id,
            WaitlistEntry.patient_id,
            Patient.full_name,
            WaitlistEntry.clinic_id,
            Clinic.name,
            WaitlistEntry.doctor_id,
            Doctor.full_name,
            WaitlistEntry.specialty,
            WaitlistEntry.first_day,
            WaitlistEntry.last_day,
            WaitlistEntry.earliest,
            WaitlistEntry.latest,
            WaitlistEntry.weekdays,
            WaitlistEntry.status,
            WaitlistEntry.created_at,
            WaitlistEntry.visit_type_id,
            VisitType.name,
            select(WaitlistOffer.expires_at)
            .where(WaitlistOffer.entry_id == WaitlistEntry.id, WaitlistOffer.status == "open")
            .scalar_subquery(),
        )
        .join(Patient, Patient.id == WaitlistEntry.patient_id)
        .join(Clinic, Clinic.id == WaitlistEntry.clinic_id)
        .outerjoin(Doctor, Doctor.id == WaitlistEntry.doctor_id)
        .outerjoin(VisitType, VisitType.id == WaitlistEntry.visit_type_id)
        .where(*where)  # type: ignore[arg-type]
        .order_by(WaitlistEntry.created_at, WaitlistEntry.id)
        .limit(500)
    )
    return [_view(row) for row in rows]


def _view(row: Any) -> EntryView:
    values = list(row)
    if values[12] is not None:
        values[12] = tuple(values[12])
    return EntryView(*values)


async def clinic_waiting(session: AsyncSession, clinic_id: int) -> list[EntryView]:
    """A clinic's waiting entries, first in line first (the desk's live list; the caller
    has checked who may see it)."""
    return await _views(
        session, WaitlistEntry.clinic_id == clinic_id, WaitlistEntry.status == "waiting"
    )
