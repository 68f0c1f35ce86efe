"""Staff pages: the front desk's live board and the doctor's day."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from litestar import Request, get, post
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotFoundException
from litestar.params import Body
from litestar.response import Response, Template
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.identity import Principal
from app.appointments import commands
from app.appointments.rules import BookingRules
from app.errors import DomainError
from app.live import boards
from app.live.effects import Effects
from app.routes.views import fragment, message, page
from app.scheduling import directory
from app.scheduling.slots import SlotCache
from app.web.guards import allow
from db.models import Clinic

Form = Body(media_type=RequestEncodingType.URL_ENCODED)
# The elements an action's message replaces (desk/board.html, doctor/day.html).
BOARD_MESSAGE, WALK_IN_MESSAGE, DAY_MESSAGE = "board-message", "walk-in-msg", "day-message"


async def _clinic_of(db_session: AsyncSession, actor: Principal, clinic_id: int | None) -> int:
    """A desk sees its own clinic; an admin any (the first one unless they choose)."""
    if actor.role == "front_desk":
        assert actor.clinic_id is not None
        return actor.clinic_id
    if clinic_id is None:
        clinic_id = await db_session.scalar(select(func.min(Clinic.id)))
        if clinic_id is None:
            raise NotFoundException("there is no clinic yet: add one under Clinics")
    return clinic_id


@get("/desk", guards=[allow("front_desk", "admin")], include_in_schema=False)
async def board(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    slot_cache: SlotCache,
    actor: Principal,
    now: dt.datetime,
    date: dt.date | None = None,
    clinic_id: int | None = None,
) -> Template | Response[str]:
    """Today's (or `date`'s) board for the desk's clinic: doctors as columns, live."""
    clinic = await db_session.get(Clinic, await _clinic_of(db_session, actor, clinic_id))
    if clinic is None:
        raise NotFoundException("no such clinic")
    day = date or boards.clinic_today(clinic.timezone, now)
    clinic, columns = await boards.clinic_board(db_session, slot_cache, clinic.id, day, now=now)
    # An admin chooses the clinic; the desk's date links then keep it.
    clinics = await directory.list_clinics(db_session) if actor.role == "admin" else []
    return page(
        request,
        "desk/board.html",
        "content",
        clinic=clinic,
        clinics=clinics,
        keep_clinic=f"&clinic_id={clinic.id}" if actor.role == "admin" else "",
        columns=columns,
        day=day,
        previous_day=day - dt.timedelta(days=1),
        next_day=day + dt.timedelta(days=1),
    )


@post(
    "/desk/appointments/{appointment_id:int}/status",
    guards=[allow("front_desk", "admin")],
    include_in_schema=False,
    status_code=200,
)
async def set_status(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    effects: Effects,
    actor: Principal,
    now: dt.datetime,
    appointment_id: int,
    data: Annotated[dict[str, str], Form],
) -> Response[str]:
    """Check in, no-show or cancel from the board; every open board updates live."""
    status = data.get("status", "")
    try:
        await commands.change_status(
            db_session,
            effects,
            actor,
            appointment_id,
            status=status,
            now=now,
            reason="cancelled by front desk",
        )
    except DomainError as exc:
        return message(request, BOARD_MESSAGE, exc.detail, error=True)
    return message(
        request, BOARD_MESSAGE, f"Appointment {appointment_id}: {status.replace('_', ' ')}."
    )


@post(
    "/desk/bulk-check-in",
    guards=[allow("front_desk", "admin")],
    include_in_schema=False,
    status_code=200,
)
async def bulk_check_in(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    effects: Effects,
    actor: Principal,
    now: dt.datetime,
) -> Response[str]:
    """Check in every selected appointment in one statement (the bulk endpoint's code)."""
    form = await request.form()
    try:
        ids = [int(v) for v in form.getall("appointment_ids")] if "appointment_ids" in form else []
    except ValueError:
        text = "The selection is not valid; reload the board."
        return message(request, BOARD_MESSAGE, text, error=True)
    if not ids:
        text = "Select the appointments to check in first."
        return message(request, BOARD_MESSAGE, text, error=True)
    try:
        results = await commands.bulk_update(
            db_session, effects, actor, ids, status="checked_in", now=now
        )
    except DomainError as exc:
        return message(request, BOARD_MESSAGE, exc.detail, error=True)
    done = sum(r == "updated" for r in results.values())
    skipped = len(results) - done
    text = f"Checked in {done}." + (f" {skipped} could not be checked in." if skipped else "")
    return message(request, BOARD_MESSAGE, text, error=bool(skipped))


@get(
    "/desk/patients",
    guards=[allow("front_desk", "admin")],
    include_in_schema=False,
)
async def patient_search(
    request: Request[Any, Any, Any], db_session: AsyncSession, q: str = ""
) -> Response[str]:
    """Patients by name prefix, as radio choices for the walk-in form."""
    hits = await boards.search_patients(db_session, q)
    return fragment(request, "desk/_patient_hits.html", hits=hits)


@post(
    "/desk/walk-in", guards=[allow("front_desk", "admin")], include_in_schema=False, status_code=200
)
async def walk_in(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    effects: Effects,
    actor: Principal,
    rules: BookingRules,
    now: dt.datetime,
    data: Annotated[dict[str, str], Form],
) -> Response[str]:
    """Book a walk-in for a found patient at a time on the doctor's grid."""
    try:
        doctor_id, patient_id = int(data.get("doctor_id", "")), int(data.get("patient_id", ""))
        day = dt.date.fromisoformat(data.get("date", ""))
        hour, minute = (int(part) for part in data.get("time", "").split(":"))
    except ValueError:
        text = "Choose a patient, a doctor and a time like 10:30."
        return message(request, WALK_IN_MESSAGE, text, error=True)
    _, clinic = await directory.get_doctor(db_session, doctor_id)
    start = dt.datetime.combine(day, dt.time(hour, minute), tzinfo=ZoneInfo(clinic.timezone))
    # The desk books what is in front of it: the notice rule is for patients booking online,
    # and a patient who walks in a few minutes late still gets the slot that just started.
    desk_rules = BookingRules(dt.timedelta(0), rules.horizon, rules.max_future_per_doctor)
    try:
        result = await commands.book(
            db_session,
            effects,
            actor,
            doctor_id=doctor_id,
            start=start,
            patient_id=patient_id,
            reason=data.get("reason") or None,
            rules=desk_rules,
            now=now - boards.WALK_IN_GRACE,
        )
    except DomainError as exc:
        return message(request, WALK_IN_MESSAGE, exc.detail, error=True)
    text = f"Booked at {data['time']} (appointment {result.appointment.id})."
    return message(request, WALK_IN_MESSAGE, text)


@get("/doctor/day", guards=[allow("doctor")], include_in_schema=False)
async def doctor_day(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    actor: Principal,
    now: dt.datetime,
    date: dt.date | None = None,
) -> Template | Response[str]:
    """The doctor's appointments of the day with their status, live."""
    assert actor.doctor_id is not None
    doctor, clinic = await directory.get_doctor(db_session, actor.doctor_id)
    day = date or boards.clinic_today(clinic.timezone, now)
    _, _, cards = await boards.doctor_day(db_session, doctor.id, day)
    return page(
        request,
        "doctor/day.html",
        "content",
        doctor=doctor,
        clinic=clinic,
        day=day,
        cards=cards,
        previous_day=day - dt.timedelta(days=1),
        next_day=day + dt.timedelta(days=1),
    )


@post(
    "/doctor/appointments/{appointment_id:int}/status",
    guards=[allow("doctor")],
    include_in_schema=False,
    status_code=200,
)
async def doctor_status(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    effects: Effects,
    actor: Principal,
    now: dt.datetime,
    appointment_id: int,
    data: Annotated[dict[str, str], Form],
) -> Response[str]:
    """The doctor checks in, completes or marks a no-show for their own patient."""
    status = data.get("status", "")
    try:
        await commands.change_status(
            db_session, effects, actor, appointment_id, status=status, now=now
        )
    except DomainError as exc:
        return message(request, DAY_MESSAGE, exc.detail, error=True)
    return message(request, DAY_MESSAGE, f"Marked {status.replace('_', ' ')}.")


ROUTES = [board, set_status, bulk_check_in, patient_search, walk_in, doctor_day, doctor_status]
