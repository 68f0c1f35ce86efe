"""JSON API: the waitlist (entries) and the offers made from it."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Response, delete, get, post
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.identity import Principal
from app.appointments.rules import BookingRules
from app.errors import Invalid
from app.live.effects import Effects
from app.routes.api_appointments import appointment_out
from app.routes.inputs import Clock, Day, Id, IdField, OptionalId, check_day, parse_clock
from app.routes.responses import BOOKING, BY_ID, BY_ID_RULES, READ
from app.waitlist import entries, offers
from app.waitlist.entries import Wish
from app.web.guards import allow

Specialty = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Weekday = Annotated[int, msgspec.Meta(ge=0, le=6)]
LocalMoment = Annotated[str, msgspec.Meta(description="ISO 8601 in the clinic's time zone")]
Moment = Annotated[str, msgspec.Meta(description="ISO 8601 in UTC")]


class WaitlistIn(msgspec.Struct, forbid_unknown_fields=True):
    first_day: Day = msgspec.field(name="from")
    last_day: Day = msgspec.field(name="to")
    doctor_id: IdField | None = None
    clinic_id: IdField | None = None
    specialty: Specialty | None = None
    earliest: Clock | None = None
    latest: Clock | None = None
    weekdays: Annotated[list[Weekday], msgspec.Meta(min_length=1, max_length=7)] | None = None
    visit_type_id: IdField | None = None  # one of the doctor's types; none: plain slots
    patient_id: IdField | None = None  # staff: for whom


class EntryOut(msgspec.Struct, rename={"first_day": "from", "last_day": "to"}):
    """A waitlist entry as the API shows it (what `WaitlistIn` asked for, and its state)."""

    id: int
    patient_id: int
    clinic_id: int
    doctor_id: int | None
    specialty: str | None
    first_day: str  # a date, the first of the clinic-local days waited for
    last_day: str
    earliest: str | None  # HH:MM
    latest: str | None
    weekdays: list[int] | None  # 0 Monday .. 6 Sunday
    visit_type_id: int | None
    status: Literal["waiting", "booked", "left"]
    created_at: Moment


class EntriesOut(msgspec.Struct):
    items: list[EntryOut]


class LeftOut(msgspec.Struct):
    id: int
    status: Literal["left"]


class OfferOut(msgspec.Struct):
    """A slot held for the patient until `expires_at` (`status` open), or what became of
    it. `visit_type_id` and `visit_type_name`: the kind of visit held (none: a plain slot)."""

    id: int
    doctor_id: int
    start: LocalMoment
    end: LocalMoment
    expires_at: Moment
    status: Literal["open", "accepted", "declined", "expired"]
    visit_type_id: int | None
    visit_type_name: str | None


class OffersOut(msgspec.Struct):
    items: list[OfferOut]


class DeclinedOut(msgspec.Struct):
    id: int
    status: Literal["declined"]


def entry_out(entry: entries.EntryView) -> EntryOut:
    return msgspec.convert(entry.as_json(), EntryOut)


class WaitlistController(Controller):
    path = "/api"
    tags = ["waitlist"]

    @post("/waitlist", guards=[allow("patient", "front_desk", "admin")], responses=BY_ID_RULES)
    async def join(
        self,
        db_session: AsyncSession,
        effects: Effects,
        actor: Principal,
        rules: BookingRules,
        now: dt.datetime,
        data: WaitlistIn,
    ) -> Response[EntryOut]:
        """Join the waitlist (a patient for themself, the desk with `patient_id`): 201."""
        check_day(data.first_day, "from")
        check_day(data.last_day, "to")
        try:
            earliest, latest = (parse_clock(t) if t else None for t in (data.earliest, data.latest))
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        wish = Wish(
            data.first_day,
            data.last_day,
            data.doctor_id,
            data.clinic_id,
            data.specialty,
            earliest,
            latest,
            tuple(data.weekdays) if data.weekdays is not None else None,
            data.visit_type_id,
        )
        entry = await entries.join(
            db_session,
            effects,
            actor,
            wish,
            patient_id=data.patient_id,
            horizon=rules.horizon,
            now=now,
        )
        return Response(entry_out(entry), status_code=201)

    @get("/waitlist", guards=[allow("patient", "front_desk", "admin")], responses=READ)
    async def listed(
        self, db_session: AsyncSession, actor: Principal, patient_id: OptionalId = None
    ) -> EntriesOut:
        """The waiting entries: a patient's own; the desk's clinic's, first in line first."""
        found = await entries.listed(db_session, actor, patient_id=patient_id)
        return EntriesOut([entry_out(e) for e in found])

    @delete(
        "/waitlist/{entry_id:int}",
        guards=[allow("patient", "front_desk", "admin")],
        status_code=200,
        responses=BY_ID,
    )
    async def leave(
        self,
        db_session: AsyncSession,
        effects: Effects,
        actor: Principal,
        now: dt.datetime,
        entry_id: Id,
    ) -> LeftOut:
        """Leave the waitlist; an open offer of the entry goes to the next in line."""
        await offers.leave(db_session, effects, actor, entry_id, now=now)
        return LeftOut(entry_id, "left")

    @get("/offers", guards=[allow("patient")], responses=READ)
    async def offers_listed(self, db_session: AsyncSession, actor: Principal) -> OffersOut:
        """The patient's offers, newest first."""
        assert actor.patient_id is not None
        found = await offers.listed(db_session, actor.patient_id)
        return OffersOut([msgspec.convert(o.as_json(), OfferOut) for o in found])

    @post("/offers/{offer_id:int}/accept", guards=[allow("patient")], responses=BOOKING)
    async def accept(
        self,
        db_session: AsyncSession,
        effects: Effects,
        actor: Principal,
        rules: BookingRules,
        now: dt.datetime,
        offer_id: Id,
    ) -> Response[dict[str, Any]]:
        """Book the held slot: 201 with the appointment; 409 once the offer is not open."""
        accepted = await offers.accept(db_session, effects, actor, offer_id, rules=rules, now=now)
        return Response(appointment_out(accepted.appointment, accepted.timezone), status_code=201)

    @post(
        "/offers/{offer_id:int}/decline",
        guards=[allow("patient")],
        status_code=200,
        responses=BOOKING,
    )
    async def decline(
        self,
        db_session: AsyncSession,
        effects: Effects,
        actor: Principal,
        now: dt.datetime,
        offer_id: Id,
    ) -> DeclinedOut:
        """Let the next patient have the slot; the entry keeps waiting."""
        await offers.decline(db_session, effects, actor, offer_id, now=now)
        return DeclinedOut(offer_id, "declined")
