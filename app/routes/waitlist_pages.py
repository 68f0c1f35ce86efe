"""Waitlist pages: a patient joins and leaves on "my appointments" and answers offers there;
the desk keeps its clinic's ordered list and joins patients to it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Request, get
from litestar.datastructures import FormMultiDict
from litestar.response import Response, Template
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.identity import Principal
from app.appointments.rules import MAY_BOOK_STAFF_ONLY, BookingRules
from app.errors import DomainError, Invalid
from app.i18n import gettext
from app.routes.actions import Command, form_post
from app.routes.inputs import Id, OptionalId, parse_clock, parse_day, parse_id
from app.routes.patient_pages import my_context
from app.routes.staff_pages import clinic_of
from app.routes.views import fragment, page
from app.scheduling import directory, visit_types
from app.waitlist import entries, offers
from app.waitlist.entries import Wish
from app.web.guards import allow

DESK = "desk/waitlist.html"
OFFER_BANNER = "waitlist/_offer_banner.html"
WEEKDAY_NAMES = tuple(range(7))  # Monday first; the template names them in the language


def _optional(form: FormMultiDict, name: str) -> str | None:
    value = str(form.get(name) or "").strip()
    return value or None


def wish_from_form(form: FormMultiDict) -> tuple[Wish, int | None]:
    """The wish a join form describes, and the patient it names (desk forms).

    Raises:
        Invalid: a field that does not parse, said in words.
    """
    try:
        doctor = _optional(form, "doctor_id")
        clinic = _optional(form, "clinic_id")
        patient = _optional(form, "patient_id")
        kind = _optional(form, "visit_type_id")
        earliest, latest = _optional(form, "earliest"), _optional(form, "latest")
        weekdays = tuple(int(d) for d in form.getall("weekdays", []))
        wish = Wish(
            parse_day(str(form.get("from") or "")),
            parse_day(str(form.get("to") or "")),
            parse_id(doctor) if doctor else None,
            # The desk's form always carries its clinic: with a doctor, the doctor's.
            parse_id(clinic) if clinic and not doctor else None,
            _optional(form, "specialty"),
            parse_clock(earliest) if earliest else None,
            parse_clock(latest) if latest else None,
            weekdays or None,
            parse_id(kind) if kind else None,
        )
    except ValueError as exc:
        raise Invalid(gettext("check the form: %(exc)s") % {"exc": exc}) from None
    return wish, parse_id(patient) if patient else None


async def _chooser(
    db_session: AsyncSession, actor: Principal, doctor_id: int | None
) -> dict[str, Any]:
    """The join form's doctor and that doctor's visit types (a patient: the online ones);
    the form's visit-type chooser reloads from its own URL when the doctor changes."""
    kinds = []
    if doctor_id is not None:
        staff = actor.role in MAY_BOOK_STAFF_ONLY
        kinds = await visit_types.list_visit_types(db_session, doctor_id, staff_only_too=staff)
    return {"doctor_id": doctor_id, "kinds": kinds, "weekdays": WEEKDAY_NAMES}


@get("/me/waitlist/join", guards=[allow("patient")], include_in_schema=False)
async def join_form(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    actor: Principal,
    now: dt.datetime,
    doctor_id: OptionalId = None,
) -> Response[str]:
    """The join form of "my appointments" (loaded into the page by htmx), with the visit
    types of `doctor_id` (default: the first doctor listed)."""
    doctors = await directory.find_doctors(db_session)
    if doctor_id is None and doctors:
        doctor_id = doctors[0].id
    chooser = await _chooser(db_session, actor, doctor_id)
    return fragment(request, "waitlist/_join.html", doctors=doctors, today=now.date(), **chooser)


@form_post("/me/waitlist", "patient")
async def join(
    request: Request[Any, Any, Any], command: Command, rules: BookingRules
) -> Response[str]:
    """Join the waitlist; the list says so (or why not)."""

    async def action() -> None:
        wish, _ = wish_from_form(await request.form())
        await _join(command, rules, wish, patient_id=None)

    done = gettext("You are on the waitlist: we will offer you a time.")
    return await _answer(request, command, action, done)


async def _join(
    command: Command, rules: BookingRules, wish: Wish, *, patient_id: int | None
) -> None:
    """A patient joins (`patient_id` None) or the desk adds one (`patient_id`)."""
    await entries.join(
        command.session,
        command.effects,
        command.actor,
        wish,
        patient_id=patient_id,
        horizon=rules.horizon,
        now=command.now,
    )


async def _attempt(
    db_session: AsyncSession, action: Callable[[], Awaitable[None]], done: str
) -> dict[str, Any]:
    """Run `action`; what the page then says: `done`, or why it could not be done."""
    try:
        await action()
    except DomainError as exc:
        await db_session.rollback()
        return {"message": exc.detail, "error": True}
    return {"message": done}


async def _my_list(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    actor: Principal,
    now: dt.datetime,
    extra: dict[str, Any],
) -> Response[str]:
    """My appointments' answer: what was just done, then the list (into #my-answer, as
    a cancel answers: no out-of-band part a live push could orphan)."""
    context = await my_context(db_session, actor, now)
    return fragment(request, "patient/appointments.html", "answer", **context, **extra)


async def _answer(
    request: Request[Any, Any, Any],
    command: Command,
    action: Callable[[], Awaitable[None]],
    done: str,
) -> Response[str]:
    """What was done and the list it changed: the offer banner's (an answer to the banner
    any page carries), else "my appointments"."""
    extra = await _attempt(command.session, action, done)
    if request.headers.get("hx-target") == "offer-answer":
        assert command.actor.patient_id is not None  # patients only (the routes' guard)
        found = await offers.listed(command.session, command.actor.patient_id, open_only=True)
        return fragment(request, OFFER_BANNER, "answer", offers=found, **extra)
    return await _my_list(request, command.session, command.actor, command.now, extra)


@form_post("/me/waitlist/{entry_id:int}/leave", "patient")
async def leave(request: Request[Any, Any, Any], command: Command, entry_id: Id) -> Response[str]:
    """Leave the waitlist (an open offer of the entry goes to the next in line)."""

    async def action() -> None:
        await command.run(offers.leave, entry_id, now=command.now)

    return await _answer(request, command, action, gettext("You left the waitlist."))


@form_post("/me/offers/{offer_id:int}/accept", "patient")
async def accept(
    request: Request[Any, Any, Any], command: Command, rules: BookingRules, offer_id: Id
) -> Response[str]:
    """Take the offered time: it is booked at once."""

    async def action() -> None:
        await command.run(offers.accept, offer_id, rules=rules, now=command.now)

    return await _answer(request, command, action, gettext("Booked: the time is yours."))


@form_post("/me/offers/{offer_id:int}/decline", "patient")
async def decline(request: Request[Any, Any, Any], command: Command, offer_id: Id) -> Response[str]:
    """Let the next patient have the offered time; keep waiting."""

    async def action() -> None:
        await command.run(offers.decline, offer_id, now=command.now)

    done = gettext("Declined: the time goes to the next patient. You are still on the waitlist.")
    return await _answer(request, command, action, done)


async def _desk_context(
    db_session: AsyncSession,
    actor: Principal,
    clinic_id: int | None,
    now: dt.datetime,
    doctor_id: int | None = None,
) -> dict[str, Any]:
    clinic = await clinic_of(db_session, actor, clinic_id)
    return {
        "today": now.date(),
        "clinic_id": clinic,
        "entries": await entries.listed(db_session, actor, clinic_id=clinic),
        "doctors": await directory.find_doctors(db_session, clinic_id=clinic),
        **await _chooser(db_session, actor, doctor_id),
    }


@get("/desk/waitlist", guards=[allow("front_desk", "admin")], include_in_schema=False)
async def desk_waitlist(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    actor: Principal,
    now: dt.datetime,
    clinic_id: OptionalId = None,
    doctor_id: OptionalId = None,
) -> Template | Response[str]:
    """The clinic's waitlist, first in line first, and a form to add a patient (with
    `doctor_id`'s visit types to choose from)."""
    context = await _desk_context(db_session, actor, clinic_id, now, doctor_id)
    return page(request, DESK, "list", **context)


@form_post("/desk/waitlist", "front_desk", "admin")
async def desk_join(
    request: Request[Any, Any, Any],
    command: Command,
    rules: BookingRules,
    clinic_id: OptionalId = None,
) -> Response[str]:
    """Put a patient on the clinic's waitlist."""

    async def action() -> None:
        wish, patient = wish_from_form(await request.form())
        if patient is None:
            raise Invalid(gettext("give the patient's number"))
        await _join(command, rules, wish, patient_id=patient)

    extra = await _attempt(command.session, action, gettext("Added to the waitlist."))
    context = await _desk_context(command.session, command.actor, clinic_id, command.now)
    return fragment(request, DESK, "list", **context, **extra)


@form_post("/desk/waitlist/{entry_id:int}/remove", "front_desk", "admin")
async def desk_remove(
    request: Request[Any, Any, Any], command: Command, entry_id: Id, clinic_id: OptionalId = None
) -> Response[str]:
    """Take a patient off the clinic's waitlist."""

    async def action() -> None:
        await command.run(offers.leave, entry_id, now=command.now)

    extra = await _attempt(command.session, action, gettext("Removed from the waitlist."))
    context = await _desk_context(command.session, command.actor, clinic_id, command.now)
    return fragment(request, DESK, "list", **context, **extra)


ROUTES = [join_form, join, leave, accept, decline, desk_waitlist, desk_join, desk_remove]
