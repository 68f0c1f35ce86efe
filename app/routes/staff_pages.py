"""Staff pages: the front desk's live board and the doctor's day."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from litestar import Request, get
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotFoundException
from litestar.params import Body
from litestar.response import Response, Template
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app import i18n
from app.access.identity import Principal
from app.appointments import commands, conflicts, walk_ins
from app.appointments.rules import BookingRules, OverTheLimit
from app.errors import DomainError
from app.i18n import N_, gettext
from app.live import boards
from app.routes.actions import Command, form_post
from app.routes.inputs import Id, OptionalId, check_day, parse_clock, parse_day, parse_id
from app.routes.views import fragment, message, page
from app.scheduling import directory
from app.scheduling.slots import SlotCache
from app.web.guards import allow, client_addr
from db.models import Clinic

Form = Body(media_type=RequestEncodingType.URL_ENCODED)
# The elements an action's message replaces (desk/board.html, doctor/day.html).
BOARD_MESSAGE, WALK_IN_MESSAGE, DAY_MESSAGE = "board-message", "walk-in-msg", "day-message"
NEW_PATIENT_MESSAGE = "new-patient-msg"
# Messages are msgids, translated into the request's language where they are shown.
NOT_VALID = N_("The selection is not valid; reload the board.")
# The walk-in form's field for staff going beyond the per-doctor limit (board.html).
OVER_THE_LIMIT = N_(
    'To book beyond it, say why in "Beyond the patient\'s booking limit because" '
    "and book again (the reason is recorded)."
)


def _done(status: str) -> str:
    return gettext(DONE[status]) if status in DONE else i18n.status_name(status)


# What the desk and the doctor are told once a status is set (else the status in words).
DONE = {"booked": N_("check-in undone")}
# A result of moving or cancelling conflicting bookings, in the board's words.
RESOLVED = {
    "moved": N_("moved"),
    "cancelled": N_("cancelled (the patient is told)"),
    "not_found": N_("not found"),
    "not_in_conflict": N_("no longer conflicting, left as it is"),
    "no_free_time": N_("no free time found: left in place"),
}


async def clinic_of(db_session: AsyncSession, actor: Principal, clinic_id: int | None) -> int:
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
    clinic_id: OptionalId = None,
) -> Template | Response[str]:
    """Today's (or `date`'s) board for the desk's clinic: doctors as columns, live."""
    check_day(date)
    clinic = await db_session.get(Clinic, await clinic_of(db_session, actor, clinic_id))
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
        conflicting=sum(c.conflict for col in columns for row in col.rows for c in row.cards),
        day=day,
        previous_day=day - dt.timedelta(days=1),
        next_day=day + dt.timedelta(days=1),
    )


@form_post("/desk/appointments/{appointment_id:int}/status", "front_desk", "admin")
async def set_status(
    request: Request[Any, Any, Any],
    command: Command,
    appointment_id: Id,
    data: Annotated[dict[str, str], Form],
) -> Response[str]:
    """Check in (or undo one), no-show or cancel from the board; every open board updates
    live."""
    status = data.get("status", "")
    try:
        await command.run(
            commands.change_status,
            appointment_id,
            status=status,
            now=command.now,
            reason="cancelled by front desk",
        )
    except DomainError as exc:
        return message(request, BOARD_MESSAGE, exc.detail, error=True)
    text = gettext("Appointment %(id)s: %(done)s.") % {"id": appointment_id, "done": _done(status)}
    return message(request, BOARD_MESSAGE, text)


def _selected_ids(form: Any) -> list[int] | None:
    """The board's ticked appointments; None when the form was tampered with."""
    try:
        return [int(v) for v in form.getall("appointment_ids")] if "appointment_ids" in form else []
    except ValueError:
        return None


@form_post("/desk/bulk-check-in", "front_desk", "admin")
async def bulk_check_in(request: Request[Any, Any, Any], command: Command) -> Response[str]:
    """Check in every selected appointment in one statement (the bulk endpoint's code)."""
    ids = _selected_ids(await request.form())
    if ids is None:
        return message(request, BOARD_MESSAGE, gettext(NOT_VALID), error=True)
    if not ids:
        text = gettext("Select the appointments to check in first.")
        return message(request, BOARD_MESSAGE, text, error=True)
    try:
        results = await command.run(commands.bulk_update, ids, status="checked_in", now=command.now)
    except DomainError as exc:
        return message(request, BOARD_MESSAGE, exc.detail, error=True)
    done = sum(r == "updated" for r in results.values())
    skipped = len(results) - done
    text = gettext("Checked in %(count)s.") % {"count": done}
    if skipped:
        text += " " + gettext("%(count)s could not be checked in.") % {"count": skipped}
    return message(request, BOARD_MESSAGE, text, error=bool(skipped))


@form_post("/desk/conflicts/{action:str}", "front_desk", "admin")
async def resolve_conflicts(
    request: Request[Any, Any, Any], command: Command, rules: BookingRules, action: str
) -> Response[str]:
    """Move the selected bookings that leave left in place to the nearest free times, or
    cancel them with a notice; one line per appointment says what became of it."""
    ids = _selected_ids(await request.form())
    if ids is None:
        return message(request, BOARD_MESSAGE, gettext(NOT_VALID), error=True)
    if not ids:
        text = gettext("Select the conflicting appointments first.")
        return message(request, BOARD_MESSAGE, text, error=True)
    try:
        results = await command.run(
            conflicts.resolve, ids, action=action, rules=rules, now=command.now
        )
    except DomainError as exc:
        return message(request, BOARD_MESSAGE, exc.detail, error=True)
    return fragment(
        request, "desk/_resolved.html", results=results, words=RESOLVED, element=BOARD_MESSAGE
    )


@get(
    "/desk/patients",
    guards=[allow("front_desk", "admin")],
    include_in_schema=False,
)
async def patient_search(
    request: Request[Any, Any, Any], db_session: AsyncSession, q: str = ""
) -> Response[str]:
    """Patients by name prefix, as radio choices for the walk-in form; when none match,
    the new-patient form is offered with the name typed."""
    hits = await boards.search_patients(db_session, q)
    return fragment(request, "desk/_patient_hits.html", hits=hits, q=" ".join(q.split()))


@form_post("/desk/patients", "front_desk", "admin")
async def register_patient(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    actor: Principal,
    now: dt.datetime,
    data: Annotated[dict[str, str], Form],
) -> Response[str]:
    """Register a walk-in new to medbook; they become the walk-in form's chosen patient."""
    clinic = await db_session.get_one(Clinic, await clinic_of(db_session, actor, None))
    try:
        born = dt.date.fromisoformat(data.get("date_of_birth", ""))
    except ValueError:
        text = gettext("Give the date of birth as a date.")
        return message(request, NEW_PATIENT_MESSAGE, text, error=True)
    try:
        patient = await walk_ins.register_patient(
            db_session,
            actor,
            full_name=data.get("full_name", ""),
            date_of_birth=born,
            today=boards.clinic_today(clinic.timezone, now),
            phone=data.get("phone"),
            email=data.get("email"),
            client_addr=client_addr(request),
        )
    except DomainError as exc:
        return message(request, NEW_PATIENT_MESSAGE, exc.detail, error=True)
    hit = boards.PatientHit(patient.id, patient.full_name, patient.date_of_birth)
    return fragment(request, "desk/_registered.html", hit=hit)


@form_post("/desk/walk-in", "front_desk", "admin")
async def walk_in(
    request: Request[Any, Any, Any],
    command: Command,
    rules: BookingRules,
    data: Annotated[dict[str, str], Form],
) -> Response[str]:
    """Book a walk-in for the patient the search shows selected, at a time on the doctor's
    grid; staff may go beyond the per-doctor limit with a reason."""
    try:
        doctor_id, patient_id = (
            parse_id(data.get("doctor_id", "")),
            parse_id(data.get("patient_id", "")),
        )
        day = parse_day(data.get("date", ""))
        clock = parse_clock(data.get("time", ""))
    except ValueError:
        text = gettext("Choose a patient, a doctor, a day and a time like 10:30.")
        return message(request, WALK_IN_MESSAGE, text, error=True)
    try:
        # The choice must still be on show: a radio left from an earlier search is not.
        name = await walk_ins.selected_patient(command.session, patient_id, data.get("q", ""))
        doctor, clinic = await directory.get_doctor(command.session, doctor_id)
    except DomainError as exc:
        return message(request, WALK_IN_MESSAGE, exc.detail, error=True)
    start = dt.datetime.combine(day, clock, tzinfo=ZoneInfo(clinic.timezone))
    # The desk books what is in front of it: the notice rule is for patients booking online,
    # and a patient who walks in a few minutes late still gets the slot that just started.
    desk_rules = BookingRules(dt.timedelta(0), rules.horizon, rules.max_future_per_doctor)
    try:
        result = await command.run(
            commands.book,
            doctor_id=doctor_id,
            start=start,
            patient_id=patient_id,
            reason=data.get("reason") or None,
            override_reason=data.get("override_reason") or None,
            rules=desk_rules,
            now=command.now - boards.WALK_IN_GRACE,
        )
    except OverTheLimit as exc:
        # In the desk's words: the form's field, not the API's name for it.
        text = f"{exc.limit.capitalize()}. {gettext(OVER_THE_LIMIT)}"
        return message(request, WALK_IN_MESSAGE, text, error=True)
    except DomainError as exc:
        return message(request, WALK_IN_MESSAGE, exc.detail, error=True)
    when = i18n.time(result.appointment.starts_at, clinic.timezone)
    text = gettext("Booked at %(time)s for %(patient)s with %(doctor)s (appointment %(id)s).") % {
        "time": when,
        "patient": name,
        "doctor": doctor.full_name,
        "id": result.appointment.id,
    }
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
    check_day(date)
    assert actor.doctor_id is not None
    doctor, clinic = await directory.get_doctor(db_session, actor.doctor_id)
    day = date or boards.clinic_today(clinic.timezone, now)
    _, _, cards = await boards.doctor_day(db_session, doctor.id, day, now)
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


@form_post("/doctor/appointments/{appointment_id:int}/status", "doctor")
async def doctor_status(
    request: Request[Any, Any, Any],
    command: Command,
    appointment_id: Id,
    data: Annotated[dict[str, str], Form],
) -> Response[str]:
    """The doctor checks in (or undoes it), completes or marks a no-show for their own
    patient."""
    status = data.get("status", "")
    try:
        await command.run(commands.change_status, appointment_id, status=status, now=command.now)
    except DomainError as exc:
        return message(request, DAY_MESSAGE, exc.detail, error=True)
    return message(request, DAY_MESSAGE, gettext("Marked %(done)s.") % {"done": _done(status)})


ROUTES = [
    board,
    set_status,
    bulk_check_in,
    resolve_conflicts,
    patient_search,
    register_patient,
    walk_in,
    doctor_day,
    doctor_status,
]
