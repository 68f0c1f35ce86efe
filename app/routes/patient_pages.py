"""Patient pages: find a doctor, a doctor's week of free times, book, my appointments,
my profile (and the link that confirms a new e-mail address)."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from litestar import Request, get, post
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotAuthorizedException, ValidationException
from litestar.params import Body
from litestar.response import Response, Template
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app import i18n
from app.access import accounts
from app.access.identity import Principal
from app.appointments import commands, queries
from app.appointments.rules import MAY_BOOK_STAFF_ONLY, BookingRules
from app.errors import Conflict, DomainError, NotFound
from app.i18n import gettext
from app.live import boards
from app.routes.actions import Command, form_post
from app.routes.auth import dispatch_soon
from app.routes.inputs import Id, OptionalId, check_day, check_moment, parse_id
from app.routes.views import fragment, page
from app.scheduling import directory, visit_types
from app.scheduling.slots import SlotCache
from app.services import Services
from app.waitlist import offers as waitlist_offers
from app.web.guards import AUTH_LIMITED, PUBLIC, allow, client_addr, current_user
from app.web.i18n import clinic_default
from db.models import LANGUAGES, Appointment, Doctor, VisitType

WEEK = 7
MAX_REASON = 500  # the textarea's maxlength
Form = Body(media_type=RequestEncodingType.URL_ENCODED)


async def _doctor_and_clinic(db_session: AsyncSession, doctor_id: Id) -> tuple[Any, Any]:
    """Loaded and detached, so a booking's rollback cannot expire what the page shows."""
    doctor, clinic = await directory.get_doctor(db_session, doctor_id)
    db_session.expunge_all()
    return doctor, clinic


def _alternatives(taken: Conflict, timezone: str) -> list[dict[str, str]]:
    """The nearest free times a 409 offers, in the clinic's time like every other slot
    element's data-slot-start."""
    tz = ZoneInfo(timezone)
    starts = [dt.datetime.fromisoformat(a["start"]) for a in taken.extra.get("alternatives", [])]
    return [{"start": s.astimezone(tz).isoformat(), "label": _label(s, timezone)} for s in starts]


def _label(start: dt.datetime, timezone: str) -> str:
    """`Tue 30 Mar, 09:30` in the clinic's time, in the request's language."""
    return i18n.datetime(start, timezone, "slot")


@get("/doctors", opt=PUBLIC, include_in_schema=False)
async def find_doctors(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    clinic_id: str | None = None,
    specialty: str | None = None,
    name: str | None = None,
) -> Template | Response[str]:
    """The doctor directory with filters, open to visitors; htmx asks for the results
    only. The filter form sends `clinic_id=` for "Any clinic"."""
    try:
        clinic = int(clinic_id) if clinic_id else None
    except ValueError:
        raise ValidationException(gettext("clinic_id must be a clinic's number")) from None
    found = await directory.find_doctors(
        db_session, clinic_id=clinic, specialty=specialty or None, name=name or None
    )
    specialties = sorted(
        set(await db_session.scalars(select(Doctor.specialty).where(Doctor.active.is_(True))))
    )
    return page(
        request,
        "patient/doctors.html",
        "results",
        doctors=found,
        clinics=await directory.list_clinics(db_session),
        specialties=specialties,
        clinic_id=clinic,
        specialty=specialty,
        name=name,
    )


async def _chosen_type(
    db_session: AsyncSession, doctor_id: int, visit_type_id: int | None, *, staff: bool
) -> tuple[list[VisitType], VisitType | None]:
    """The doctor's types the viewer may see (online ones; staff also the staff-only ones,
    as the available-slots API answers) and the one whose times are shown: the one asked
    for, else the first (a doctor with types is booked by type on this page); none when
    the doctor has no such types (the weekly hours' own slots).

    Raises:
        NotFound: a type asked for that is not one of these.
    """
    offered = await visit_types.list_visit_types(db_session, doctor_id, staff_only_too=staff)
    if visit_type_id is None:
        return offered, offered[0] if offered else None
    chosen = next((t for t in offered if t.id == visit_type_id), None)
    if chosen is None:
        raise NotFound(
            gettext("visit type %(visit_type_id)s is not bookable online with this doctor")
            % {"visit_type_id": visit_type_id}
        )
    return offered, chosen


async def _week_context(
    db_session: AsyncSession,
    slot_cache: SlotCache,
    rules: BookingRules,
    now: dt.datetime,
    doctor_id: int,
    date: dt.date | None,
    visit_type_id: int | None = None,
    moving: Appointment | None = None,
    staff: bool = False,
) -> dict[str, Any]:
    """The week's slots; `moving`: an appointment being moved, whose own kind of visit
    the week shows (no choice of type); `staff`: the staff-only types may be chosen."""
    check_day(date)
    doctor, clinic = await directory.get_doctor(db_session, doctor_id)
    first = date or boards.clinic_today(clinic.timezone, now)
    if moving is not None:
        offered: list[VisitType] = []
        chosen_id = moving.visit_type_id
    else:
        offered, chosen = await _chosen_type(db_session, doctor_id, visit_type_id, staff=staff)
        chosen_id = chosen.id if chosen else None
    _, days = await boards.doctor_days(slot_cache, doctor_id, first, WEEK, rules, now, chosen_id)
    return {
        "doctor": doctor,
        "clinic": clinic,
        "days": days,
        "visit_types": offered,
        "visit_type_id": chosen_id,
        "first": first,
        "previous_week": first - dt.timedelta(days=WEEK),
        "next_week": first + dt.timedelta(days=WEEK),
    }


async def _moving(
    db_session: AsyncSession, actor: Principal | None, appointment_id: int | None
) -> Appointment | None:
    """The appointment a patient is moving, if they are (and may see it)."""
    if appointment_id is None or actor is None:
        return None
    return await queries.get_visible(db_session, actor, appointment_id)


async def _reschedule_target(
    db_session: AsyncSession, actor: Principal, appointment_id: int | None
) -> dict[str, Any] | None:
    if appointment_id is None:
        return None
    appointment = await queries.get_visible(db_session, actor, appointment_id)
    timezone = await queries.clinic_timezone(db_session, appointment.doctor_id)
    return {"id": appointment.id, "label": _label(appointment.starts_at, timezone)}


def _sign_in_url(doctor_id: int, start: dt.datetime, timezone: str) -> str:
    """The login page, coming back to this slot's week with the slot chosen."""
    day = start.astimezone(ZoneInfo(timezone)).date()
    back = f"/doctors/{doctor_id}/slots?date={day}&start={quote(start.isoformat(), safe='')}"
    return "/login?next=" + quote(back, safe="")


async def _slot_state(
    slot_cache: SlotCache,
    rules: BookingRules,
    now: dt.datetime,
    doctor_id: int,
    start: dt.datetime,
    timezone: str,
    visit_type_id: int | None,
) -> str | None:
    """The slot's state now (boards.SLOT_STATES), or None when the doctor has no such slot."""
    day = start.astimezone(ZoneInfo(timezone)).date()
    _, (view,) = await boards.doctor_days(slot_cache, doctor_id, day, 1, rules, now, visit_type_id)
    return next((s.state for s in view.slots if dt.datetime.fromisoformat(s.start) == start), None)


async def _panel(
    db_session: AsyncSession,
    slot_cache: SlotCache,
    rules: BookingRules,
    now: dt.datetime,
    user: Principal | None,
    doctor_id: int,
    timezone: str,
    start: dt.datetime,
    reschedule: int | None,
    reason: str | None,
    visit_type_id: int | None = None,
) -> dict[str, Any]:
    """What the panel shows for a chosen slot: a sign-in link for a visitor, the confirm
    form while the slot is free, else why it cannot be booked (nothing to confirm)."""
    label = _label(start, timezone)
    reason = (reason or "")[:MAX_REASON] or None
    if user is None:
        return {"sign_in": _sign_in_url(doctor_id, start, timezone), "start_label": label}
    if user.role != "patient":
        return {"message": gettext("Patients book here; the front desk books from its board.")}
    target = await _reschedule_target(db_session, user, reschedule)
    state = await _slot_state(slot_cache, rules, now, doctor_id, start, timezone, visit_type_id)
    if state != "free":
        if state == "taken":
            text = gettext(
                "Sorry — %(time)s was just taken by someone else. Choose another time."
            ) % {"time": label}
        elif state is None:
            text = gettext("Choose a time from the list.")
        else:
            text = gettext("%(time)s cannot be booked: %(why)s. Choose another time.") % {
                "time": label,
                "why": gettext(boards.SLOT_STATES[state]),
            }
        return {"message": text, "error": True, "reason": reason, "reschedule": target}
    return {
        "start": start.isoformat(),
        "start_label": label,
        "idempotency_key": secrets.token_urlsafe(16),
        "reschedule": target,
        "reason": reason,
        "visit_type_id": visit_type_id,
    }


@get("/doctors/{doctor_id:int}/slots", opt=PUBLIC, include_in_schema=False)
async def doctor_slots(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    slot_cache: SlotCache,
    rules: BookingRules,
    now: dt.datetime,
    doctor_id: Id,
    date: dt.date | None = None,
    reschedule: OptionalId = None,
    start: dt.datetime | None = None,
    visit_type_id: OptionalId = None,
) -> Template | Response[str]:
    """A doctor's week of slots (of one visit type, chosen on the page, when the doctor
    offers types), open to visitors; they change state live while the page is open.
    `start` opens the panel on that slot (back from signing in)."""
    check_moment(start, "start")
    user = current_user(request)
    if reschedule is not None and user is None:
        raise NotAuthorizedException(gettext("sign in first"))
    moving = await _moving(db_session, user, reschedule)
    staff = user is not None and user.role in MAY_BOOK_STAFF_ONLY
    context = await _week_context(
        db_session, slot_cache, rules, now, doctor_id, date, visit_type_id, moving, staff
    )
    clinic_default(request.scope, context["clinic"].timezone)
    if start is not None:
        timezone = context["clinic"].timezone
        context |= await _panel(
            db_session,
            slot_cache,
            rules,
            now,
            user,
            doctor_id,
            timezone,
            start,
            reschedule,
            None,
            context["visit_type_id"],
        )
    if user is not None and "reschedule" not in context:
        context["reschedule"] = await _reschedule_target(db_session, user, reschedule)
    return page(request, "patient/slots.html", "panel", **context)


@get("/doctors/{doctor_id:int}/book", opt=PUBLIC, include_in_schema=False)
async def booking_form(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    slot_cache: SlotCache,
    rules: BookingRules,
    now: dt.datetime,
    doctor_id: Id,
    start: dt.datetime,
    reschedule: int | None = None,
    reason: str | None = None,
    visit_type_id: OptionalId = None,
) -> Response[str]:
    """The panel for a chosen slot (a new booking or a move); `reason` carries what the
    patient had typed in the panel it replaces. Asked again by the page when the slot
    changes state while the panel is open."""
    check_moment(start, "start")
    doctor, clinic = await directory.get_doctor(db_session, doctor_id)
    user = current_user(request)
    context = await _panel(
        db_session,
        slot_cache,
        rules,
        now,
        user,
        doctor_id,
        clinic.timezone,
        start,
        reschedule,
        reason,
        visit_type_id,
    )
    return fragment(request, "patient/slots.html", "panel", doctor=doctor, clinic=clinic, **context)


@form_post("/doctors/{doctor_id:int}/book", "patient")
async def book(
    request: Request[Any, Any, Any],
    command: Command,
    rules: BookingRules,
    doctor_id: Id,
    data: Annotated[dict[str, str], Form],
) -> Response[str]:
    """Book from the panel. Taken meanwhile: say so and offer the nearest free times;
    any other problem: say what, keeping what was typed."""
    doctor, clinic = await _doctor_and_clinic(command.session, doctor_id)
    context: dict[str, Any] = {"doctor": doctor, "clinic": clinic}
    reason = (data.get("reason") or "").strip() or None
    try:
        start = dt.datetime.fromisoformat(data.get("start", ""))
        check_moment(start, "start")
        visit_type_id = parse_id(data["visit_type_id"]) if data.get("visit_type_id") else None
        context["visit_type_id"] = visit_type_id
        result = await command.run(
            commands.book,
            doctor_id=doctor_id,
            start=start,
            reason=reason,
            idempotency_key=data.get("idempotency_key") or None,
            rules=rules,
            now=command.now,
            visit_type_id=visit_type_id,
        )
    except ValueError:
        context.update(message=gettext("Choose a time from the list."), error=True, reason=reason)
    except Conflict as exc:
        context.update(
            message=gettext("Sorry — that time was just taken by someone else."),
            error=True,
            alternatives=_alternatives(exc, clinic.timezone),
            reason=reason,
        )
    except DomainError as exc:
        # Nothing to confirm again: this time cannot be booked (too late, on leave, a
        # limit); what was typed stays for the next time chosen.
        context.update(message=exc.detail, error=True, reason=reason)
    else:
        context["booked"] = {"label": _label(result.appointment.starts_at, clinic.timezone)}
    return fragment(request, "patient/slots.html", "panel", **context)


async def my_context(db_session: AsyncSession, actor: Principal, now: dt.datetime) -> dict:
    """What "my appointments" shows: appointments, open offers, waiting entries."""
    assert actor.patient_id is not None  # the routes admit patients only
    upcoming, past = await boards.my_appointments(db_session, actor.patient_id, now)
    waitlist = await waitlist_offers.patient_waitlist(db_session, actor.patient_id)
    return {"upcoming": upcoming, "past": past, **waitlist}


@get("/me/appointments", guards=[allow("patient")], include_in_schema=False)
async def my_appointments(
    request: Request[Any, Any, Any], db_session: AsyncSession, actor: Principal, now: dt.datetime
) -> Template | Response[str]:
    """The patient's coming and past appointments, kept current over the live socket."""
    return page(
        request, "patient/appointments.html", "list", **await my_context(db_session, actor, now)
    )


@form_post("/me/appointments/{appointment_id:int}/cancel", "patient")
async def cancel(
    request: Request[Any, Any, Any], command: Command, appointment_id: Id
) -> Response[str]:
    """Cancel one of my appointments; the slot is free for others at once."""
    try:
        await command.run(
            commands.change_status,
            appointment_id,
            status="cancelled",
            now=command.now,
            reason="cancelled by patient",
        )
        extra: dict[str, Any] = {"message": gettext("Cancelled.")}
    except DomainError as exc:
        extra = {"message": exc.detail, "error": True}
    context = await my_context(command.session, command.actor, command.now)
    return fragment(request, "patient/appointments.html", "answer", **context, **extra)


@form_post("/me/appointments/{appointment_id:int}/reschedule", "patient")
async def reschedule(
    request: Request[Any, Any, Any],
    command: Command,
    rules: BookingRules,
    appointment_id: Id,
    data: Annotated[dict[str, str], Form],
) -> Response[str]:
    """Move my appointment to the chosen slot: all or nothing. When it fails the panel
    stays a reschedule panel, so a nearby time offered moves the same appointment."""
    current = await queries.get_visible(command.session, command.actor, appointment_id)
    doctor, clinic = await _doctor_and_clinic(command.session, current.doctor_id)
    target = {"id": current.id, "label": _label(current.starts_at, clinic.timezone)}
    context: dict[str, Any] = {"doctor": doctor, "clinic": clinic, "reschedule": target}
    try:
        start = dt.datetime.fromisoformat(data.get("start", ""))
        check_moment(start, "start")
        moved = await command.run(
            commands.reschedule, appointment_id, start=start, rules=rules, now=command.now
        )
    except ValueError:
        context.update(message=gettext("Choose a time from the list."), error=True)
    except Conflict as exc:
        context.update(
            message=gettext("Sorry — that time was just taken. Your appointment is unchanged."),
            error=True,
            alternatives=_alternatives(exc, clinic.timezone),
        )
    except DomainError as exc:
        context.update(message=exc.detail, error=True)
    else:
        label = _label(moved.appointment.starts_at, moved.timezone)
        context.update(booked={"label": label}, moved=True)
    return fragment(request, "patient/slots.html", "panel", **context)


@dataclass
class ProfileForm:
    full_name: str = ""
    email: str = ""
    phone: str = ""
    language: str = "en"
    by_email: bool = False
    by_sms: bool = False


def _profile_page(profile: accounts.Profile | ProfileForm, **context: Any) -> Template:
    return Template("patient/profile.html", context={"profile": profile, **context})


@get("/me/profile", guards=[allow("patient")], include_in_schema=False)
async def profile_page(db_session: AsyncSession, actor: Principal) -> Template:
    """My name, e-mail, phone, language and how I get messages."""
    profile = await accounts.get_profile(db_session, actor.id)
    return _profile_page(profile, languages=LANGUAGES)


@form_post("/me/profile", "patient")
async def save_profile(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    actor: Principal,
    now: dt.datetime,
    data: Annotated[ProfileForm, Form],
) -> Template:
    """Save the profile; errors keep what was typed and save nothing."""
    try:
        verify = await accounts.save_profile(
            db_session,
            Services.of(request.app).redis,
            user_id=actor.id,
            full_name=data.full_name,
            email=data.email,
            phone=data.phone,
            language=data.language,
            by_email=data.by_email,
            by_sms=data.by_sms,
            now=now,
            client_addr=client_addr(request),
        )
    except DomainError as exc:
        await db_session.rollback()
        return _profile_page(data, languages=LANGUAGES, error=exc.detail, typed=True)
    if verify:
        await dispatch_soon(request)
    profile = await accounts.get_profile(db_session, actor.id)
    return _profile_page(profile, languages=LANGUAGES, saved=True, verify=verify)


@get("/email-verify/{token:str}", opt=PUBLIC, include_in_schema=False)
async def email_verify_page(token: str) -> Template:
    """Confirm a new address: a button, since mail scanners open links on their own."""
    return Template("patient/email_verify.html", context={"token": token})


@post("/email-verify/{token:str}", opt=AUTH_LIMITED, include_in_schema=False, status_code=200)
async def email_verify(
    request: Request[Any, Any, Any], db_session: AsyncSession, token: str
) -> Template:
    """The pending address becomes the account's."""
    try:
        email = await accounts.confirm_email_change(
            db_session,
            Services.of(request.app).redis,
            token=token,
            client_addr=client_addr(request),
        )
    except DomainError as exc:
        return Template("patient/email_verify.html", context={"token": token, "error": exc.detail})
    return Template("patient/email_verify.html", context={"done": email})


ROUTES = [
    find_doctors,
    doctor_slots,
    booking_form,
    book,
    my_appointments,
    cancel,
    reschedule,
    profile_page,
    save_profile,
    email_verify_page,
    email_verify,
]
