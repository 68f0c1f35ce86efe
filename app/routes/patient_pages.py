"""Patient pages: find a doctor, a doctor's week of free times, book, my appointments."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from litestar import Request, get, post
from litestar.enums import RequestEncodingType
from litestar.exceptions import ValidationException
from litestar.params import Body
from litestar.response import Response, Template
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.identity import Principal
from app.appointments import commands, queries
from app.appointments.rules import BookingRules
from app.errors import Conflict, DomainError
from app.live import boards
from app.live.effects import Effects
from app.routes.inputs import Id, OptionalId, check_day, check_moment
from app.routes.views import fragment, page
from app.scheduling import directory
from app.scheduling.slots import SlotCache
from app.web.guards import allow
from db.models import Doctor

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
    return start.astimezone(ZoneInfo(timezone)).strftime("%a %d %b, %H:%M")


@get("/doctors", guards=[allow()], include_in_schema=False)
async def find_doctors(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    clinic_id: str | None = None,
    specialty: str | None = None,
    name: str | None = None,
) -> Template | Response[str]:
    """The doctor directory with filters; htmx asks for the results only. The filter form
    sends `clinic_id=` for "Any clinic"."""
    try:
        clinic = int(clinic_id) if clinic_id else None
    except ValueError:
        raise ValidationException("clinic_id must be a clinic's number") from None
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


async def _week_context(
    db_session: AsyncSession,
    slot_cache: SlotCache,
    rules: BookingRules,
    now: dt.datetime,
    doctor_id: int,
    date: dt.date | None,
) -> dict[str, Any]:
    check_day(date)
    doctor, clinic = await directory.get_doctor(db_session, doctor_id)
    first = date or boards.clinic_today(clinic.timezone, now)
    _, days = await boards.doctor_days(
        slot_cache, doctor_id, first, WEEK, now + rules.min_notice, now + rules.horizon
    )
    return {
        "doctor": doctor,
        "clinic": clinic,
        "days": days,
        "first": first,
        "previous_week": first - dt.timedelta(days=WEEK),
        "next_week": first + dt.timedelta(days=WEEK),
    }


async def _reschedule_target(
    db_session: AsyncSession, actor: Principal, appointment_id: int | None
) -> dict[str, Any] | None:
    if appointment_id is None:
        return None
    appointment = await queries.get_visible(db_session, actor, appointment_id)
    timezone = await queries.clinic_timezone(db_session, appointment.doctor_id)
    return {"id": appointment.id, "label": _label(appointment.starts_at, timezone)}


@get("/doctors/{doctor_id:int}/slots", guards=[allow()], include_in_schema=False)
async def doctor_slots(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    slot_cache: SlotCache,
    rules: BookingRules,
    now: dt.datetime,
    actor: Principal,
    doctor_id: Id,
    date: dt.date | None = None,
    reschedule: OptionalId = None,
) -> Template | Response[str]:
    """A doctor's week of slots; they change state live while the page is open."""
    context = await _week_context(db_session, slot_cache, rules, now, doctor_id, date)
    context["reschedule"] = await _reschedule_target(db_session, actor, reschedule)
    return page(request, "patient/slots.html", "panel", **context)


@get(
    "/doctors/{doctor_id:int}/book",
    guards=[allow("patient")],
    include_in_schema=False,
)
async def booking_form(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    actor: Principal,
    doctor_id: Id,
    start: dt.datetime,
    reschedule: int | None = None,
    reason: str | None = None,
) -> Response[str]:
    """The confirm panel for a chosen slot (a new booking or a move); `reason` carries
    what the patient had typed in the panel it replaces."""
    doctor, clinic = await directory.get_doctor(db_session, doctor_id)
    return fragment(
        request,
        "patient/slots.html",
        "panel",
        doctor=doctor,
        clinic=clinic,
        start=start.isoformat(),
        start_label=_label(start, clinic.timezone),
        idempotency_key=secrets.token_urlsafe(16),
        reschedule=await _reschedule_target(db_session, actor, reschedule),
        reason=(reason or "")[:MAX_REASON] or None,
    )


@post(
    "/doctors/{doctor_id:int}/book",
    guards=[allow("patient")],
    include_in_schema=False,
    status_code=200,
)
async def book(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    effects: Effects,
    actor: Principal,
    rules: BookingRules,
    now: dt.datetime,
    doctor_id: Id,
    data: Annotated[dict[str, str], Form],
) -> Response[str]:
    """Book from the panel. Taken meanwhile: say so and offer the nearest free times;
    any other problem: say what, keeping what was typed."""
    doctor, clinic = await _doctor_and_clinic(db_session, doctor_id)
    context: dict[str, Any] = {"doctor": doctor, "clinic": clinic}
    reason = (data.get("reason") or "").strip() or None
    try:
        start = dt.datetime.fromisoformat(data.get("start", ""))
        check_moment(start, "start")
        result = await commands.book(
            db_session,
            effects,
            actor,
            doctor_id=doctor_id,
            start=start,
            reason=reason,
            idempotency_key=data.get("idempotency_key") or None,
            rules=rules,
            now=now,
        )
    except ValueError:
        context.update(message="Choose a time from the list.", error=True, reason=reason)
    except Conflict as exc:
        context.update(
            message="Sorry — that time was just taken by someone else.",
            error=True,
            alternatives=_alternatives(exc, clinic.timezone),
            reason=reason,
        )
    except DomainError as exc:
        context.update(
            message=exc.detail,
            error=True,
            start=data.get("start"),
            start_label=data.get("start"),
            reason=reason,
            idempotency_key=data.get("idempotency_key"),
        )
    else:
        context["booked"] = {"label": _label(result.appointment.starts_at, clinic.timezone)}
    return fragment(request, "patient/slots.html", "panel", **context)


async def _my_context(db_session: AsyncSession, actor: Principal, now: dt.datetime) -> dict:
    upcoming, _ = await queries.list_appointments(
        db_session, actor, now=now, when="upcoming", patient_id=actor.patient_id, limit=100
    )
    past, _ = await queries.list_appointments(
        db_session, actor, now=now, when="past", patient_id=actor.patient_id, limit=50
    )

    def view(row: queries.AppointmentRow) -> dict[str, Any]:
        local = row.starts_at.astimezone(ZoneInfo(row.timezone))
        return {
            "id": row.id,
            "doctor_id": row.doctor_id,
            "doctor_name": row.doctor_name,
            "status": row.status,
            "label": local.strftime("%a %d %b %Y, %H:%M"),
            "day": local.date().isoformat(),
        }

    # Cancelled visits leave the upcoming list (the page says "Cancelled." when it happens).
    return {
        "upcoming": [view(r) for r in upcoming if r.status != "cancelled"],
        "past": [view(r) for r in past],
    }


@get("/me/appointments", guards=[allow("patient")], include_in_schema=False)
async def my_appointments(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    actor: Principal,
    now: dt.datetime,
) -> Template | Response[str]:
    """The patient's upcoming and past appointments."""
    return page(
        request, "patient/appointments.html", "list", **await _my_context(db_session, actor, now)
    )


@post(
    "/me/appointments/{appointment_id:int}/cancel",
    guards=[allow("patient")],
    include_in_schema=False,
    status_code=200,
)
async def cancel(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    effects: Effects,
    actor: Principal,
    now: dt.datetime,
    appointment_id: Id,
) -> Response[str]:
    """Cancel one of my appointments; the slot is free for others at once."""
    try:
        await commands.change_status(
            db_session,
            effects,
            actor,
            appointment_id,
            status="cancelled",
            now=now,
            reason="cancelled by patient",
        )
        extra: dict[str, Any] = {"message": "Cancelled."}
    except DomainError as exc:
        extra = {"message": exc.detail, "error": True}
    context = await _my_context(db_session, actor, now)
    return fragment(request, "patient/appointments.html", "list", **context, **extra)


@post(
    "/me/appointments/{appointment_id:int}/reschedule",
    guards=[allow("patient")],
    include_in_schema=False,
    status_code=200,
)
async def reschedule(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    effects: Effects,
    actor: Principal,
    rules: BookingRules,
    now: dt.datetime,
    appointment_id: Id,
    data: Annotated[dict[str, str], Form],
) -> Response[str]:
    """Move my appointment to the chosen slot: all or nothing. When it fails the panel
    stays a reschedule panel, so a nearby time offered moves the same appointment."""
    current = await queries.get_visible(db_session, actor, appointment_id)
    doctor, clinic = await _doctor_and_clinic(db_session, current.doctor_id)
    target = {"id": current.id, "label": _label(current.starts_at, clinic.timezone)}
    context: dict[str, Any] = {"doctor": doctor, "clinic": clinic, "reschedule": target}
    try:
        start = dt.datetime.fromisoformat(data.get("start", ""))
        check_moment(start, "start")
        moved = await commands.reschedule(
            db_session, effects, actor, appointment_id, start=start, rules=rules, now=now
        )
    except ValueError:
        context.update(message="Choose a time from the list.", error=True)
    except Conflict as exc:
        context.update(
            message="Sorry — that time was just taken. Your appointment is unchanged.",
            error=True,
            alternatives=_alternatives(exc, clinic.timezone),
        )
    except DomainError as exc:
        context.update(message=exc.detail, error=True)
    else:
        label = _label(moved.appointment.starts_at, moved.timezone)
        context.update(booked={"label": label}, moved=True)
    return fragment(request, "patient/slots.html", "panel", **context)


ROUTES = [find_doctors, doctor_slots, booking_form, book, my_appointments, cancel, reschedule]
