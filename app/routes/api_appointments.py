"""JSON API: availability, booking, changes, bulk updates and lists of appointments."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, get, patch, post
from litestar.background_tasks import BackgroundTask, BackgroundTasks
from litestar.params import HeaderParameter, Parameter
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.identity import Principal
from app.appointments import commands, conflicts, queries
from app.appointments.queries import AppointmentRow
from app.appointments.rules import BookingRules, check_may_book_type, for_visit_type
from app.errors import Invalid
from app.i18n import gettext
from app.routes import deps
from app.routes.actions import Command
from app.routes.inputs import (
    Id,
    IdField,
    Ids,
    Moment,
    OptionalId,
    OptionalQueryDay,
    QueryDay,
    Reason,
    Text,
    check_day,
    check_moment,
)
from app.routes.responses import BOOKING, BY_ID, BY_ID_RULES, RULES
from app.scheduling import slots
from app.scheduling.slots import MAX_DAYS, DaySlots
from app.services import Services
from app.web.guards import allow, current_user, prefetched
from app.zones import zone
from db.models import Appointment

# What a status change may ask for (app.appointments.rules.TRANSITIONS has their sources).
Status = Literal["booked", "checked_in", "completed", "no_show", "cancelled"]
# What a bulk update may set (rules.check_bulk_target: never back to booked).
BulkStatus = Literal["checked_in", "completed", "no_show", "cancelled"]


class BookingIn(msgspec.Struct, forbid_unknown_fields=True):
    doctor_id: IdField
    start: Moment
    patient_id: IdField | None = None
    reason: Text | None = None
    # Staff only: why this patient may hold more future bookings with the doctor than
    # BOOKING_MAX_FUTURE_PER_DOCTOR (recorded in the audit trail).
    override_reason: Reason | None = None
    # One of the doctor's visit types (GET /api/doctors/{id}/visit-types); absent: the
    # template's slot, as before visit types existed.
    visit_type_id: IdField | None = None


class AppointmentPatch(msgspec.Struct, forbid_unknown_fields=True):
    status: Status | None = None
    start: Moment | None = None
    reason: Text | None = None


class BulkIn(msgspec.Struct, forbid_unknown_fields=True):
    appointment_ids: Ids
    status: BulkStatus


class ConflictsIn(msgspec.Struct, forbid_unknown_fields=True):
    appointment_ids: Ids
    action: Literal["move", "cancel"]


def slots_out(day: DaySlots, lo: dt.datetime, hi: dt.datetime) -> list[dict]:
    """Slots as the API shows them: clinic-local ISO 8601; bookable within [lo, hi]."""
    first, last = lo.timestamp(), hi.timestamp()
    return [
        {
            "start": s.start_local,
            "end": s.end_local,
            "available": not s.taken and first <= s.starts <= last,
        }
        for s in day.slots
    ]


def appointment_out(a: Appointment, timezone: str) -> dict[str, Any]:
    tz = zone(timezone)
    return {
        "id": a.id,
        "doctor_id": a.doctor_id,
        "patient_id": a.patient_id,
        "clinic_id": a.clinic_id,
        "start": a.starts_at.astimezone(tz).isoformat(),
        "end": a.ends_at.astimezone(tz).isoformat(),
        "status": a.status,
        "reason": a.reason,
        "visit_type_id": a.visit_type_id,
    }


def rows_out(rows: list[AppointmentRow]) -> list[dict[str, Any]]:
    """A list's appointments as the API shows them: times in their clinic's zone, each
    instant converted once per list (a day's appointments end where the next begin)."""
    local: dict[tuple[dt.datetime, str], str] = {}

    def shown(at: dt.datetime, timezone: str) -> str:
        text = local.get((at, timezone))
        if text is None:
            text = local[(at, timezone)] = at.astimezone(zone(timezone)).isoformat()
        return text

    return [
        {
            "id": r.id,
            "doctor_id": r.doctor_id,
            "doctor_name": r.doctor_name,
            "patient_id": r.patient_id,
            "patient_name": r.patient_name,
            "clinic_id": r.clinic_id,
            "start": shown(r.starts_at, r.timezone),
            "end": shown(r.ends_at, r.timezone),
            "status": r.status,
            "reason": r.reason,
        }
        for r in rows
    ]


class AppointmentController(Controller):
    path = "/api/appointments"
    tags = ["appointments"]

    @get(
        "/available-slots",
        guards=[allow()],
        opt={"prefetch": slots.prefetch_keys},
        responses=BY_ID_RULES,
    )
    async def available_slots(
        self,
        request: Request[Any, Any, Any],
        doctor_id: Id,
        date: QueryDay,
        days: Annotated[int, Parameter(ge=1, le=MAX_DAYS)] = 1,
        visit_type_id: OptionalId = None,
    ) -> Response[dict[str, Any]]:
        """A doctor's slots for a day (or `days` days from `date`), each with `available`;
        with `visit_type_id`, the start times of that visit type (its length, with its
        buffers free, on the template's grid; its own notice and horizon).

        The busiest route reads its services with `Services.of` instead of taking them as
        dependencies: Litestar resolves several dependencies in an anyio task group per
        request, which cost a tenth of this route's CPU (measured with py-spy). On a cache
        miss the computed days are stored in Redis after the answer has been sent.
        """
        check_day(date)
        services = Services.of(request.app)
        slot_cache = services.slot_cache
        rules, now = deps.booking_rules(services.settings), deps.provide_now()
        later: list[Callable[[], Awaitable[None]]] = []
        timezone, found, visit_type = await slot_cache.days(
            doctor_id, date, days, prefetched(request), later=later, visit_type_id=visit_type_id
        )
        user = current_user(request)
        check_may_book_type(user.role if user else "patient", visit_type)
        rules = for_visit_type(rules, visit_type)
        lo, hi = now + rules.min_notice, now + rules.horizon
        body: dict[str, Any] = {"doctor_id": doctor_id, "date": date, "timezone": timezone}
        if visit_type is not None:
            body["visit_type_id"] = visit_type.id
        if days == 1:
            body["slots"] = slots_out(found[0], lo, hi)
        else:
            body["days"] = [{"date": d.day, "slots": slots_out(d, lo, hi)} for d in found]
        background = BackgroundTasks([BackgroundTask(f) for f in later]) if later else None
        return Response(body, background=background)

    @post("", guards=[allow("patient", "front_desk", "admin")], responses=BOOKING)
    async def book(
        self,
        command: Command,
        rules: BookingRules,
        data: BookingIn,
        idempotency_key: Annotated[
            str | None, HeaderParameter(name="Idempotency-Key", max_length=200)
        ] = None,
    ) -> Response[dict[str, Any]]:
        """Book a slot: 201, or 409 with `alternatives` when it has just been taken."""
        check_moment(data.start, "start")
        result = await command.run(
            commands.book,
            doctor_id=data.doctor_id,
            start=data.start,
            patient_id=data.patient_id,
            reason=data.reason,
            idempotency_key=idempotency_key,
            override_reason=data.override_reason,
            rules=rules,
            now=command.now,
            visit_type_id=data.visit_type_id,
        )
        body = appointment_out(result.appointment, result.timezone)
        headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
        return Response(body, status_code=201, headers=headers)

    @get("", guards=[allow()], responses=RULES)
    async def list_appointments(
        self,
        request: Request[Any, Any, Any],
        actor: Principal,
        now: dt.datetime,
        doctor_id: OptionalId = None,
        patient_id: OptionalId = None,
        clinic_id: OptionalId = None,
        date: OptionalQueryDay = None,
        when: Literal["upcoming", "past"] | None = None,
        cursor: Annotated[str | None, Parameter(max_length=200)] = None,
        limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
    ) -> dict[str, Any]:
        """The caller's appointments, filtered; `next_cursor` fetches the next page.

        Its statements run on pooled connections outside any session (no session is made
        for it): bench/README.md, cpu17b."""
        check_day(date)
        rows, next_cursor = await queries.list_appointments(
            Services.of(request.app).engine,
            actor,
            now=now,
            doctor_id=doctor_id,
            patient_id=patient_id,
            clinic_id=clinic_id,
            day=date,
            when=when,
            cursor=cursor,
            limit=limit,
        )
        return {"items": rows_out(rows), "next_cursor": next_cursor}

    @get("/{appointment_id:int}", guards=[allow()], responses=BY_ID)
    async def get_appointment(
        self, read_session: AsyncSession, actor: Principal, appointment_id: Id
    ) -> dict[str, Any]:
        """One appointment the caller may see (404 otherwise)."""
        appointment = await queries.get_visible(read_session, actor, appointment_id)
        timezone = await queries.clinic_timezone(read_session, appointment.doctor_id)
        return appointment_out(appointment, timezone)

    @patch("/{appointment_id:int}", guards=[allow()], responses=BOOKING)
    async def change(
        self, command: Command, rules: BookingRules, appointment_id: Id, data: AppointmentPatch
    ) -> dict[str, Any]:
        """Reschedule (`start`) or change status (`status`: cancelled, checked_in, …)."""
        if (data.status is None) == (data.start is None):
            raise Invalid(gettext("give either status or start"))
        check_moment(data.start, "start")
        if data.start is not None:
            result = await command.run(
                commands.reschedule,
                appointment_id,
                start=data.start,
                rules=rules,
                now=command.now,
                reason=data.reason,
            )
        else:
            assert data.status is not None
            result = await command.run(
                commands.change_status,
                appointment_id,
                status=data.status,
                now=command.now,
                reason=data.reason,
            )
        return appointment_out(result.appointment, result.timezone)

    @post(
        "/bulk-update",
        guards=[allow("doctor", "front_desk", "admin")],
        status_code=200,
        responses=RULES,
    )
    async def bulk_update(self, command: Command, data: BulkIn) -> dict[str, Any]:
        """One status for many appointments in one statement; a result per id."""
        results = await command.run(
            commands.bulk_update, data.appointment_ids, status=data.status, now=command.now
        )
        return {"results": [{"id": i, "result": r} for i, r in results.items()]}

    @post("/conflicts", guards=[allow("front_desk", "admin")], status_code=200, responses=RULES)
    async def resolve_conflicts(
        self, command: Command, rules: BookingRules, data: ConflictsIn
    ) -> dict[str, Any]:
        """Move (`move`: each to its doctor's first free time from its day on) or cancel
        with a notice (`cancel`) bookings that leave or a closure left in place; each one
        on its own, a result per id."""
        results = await command.run(
            conflicts.resolve,
            data.appointment_ids,
            action=data.action,
            rules=rules,
            now=command.now,
        )
        return {
            "results": [
                {
                    "id": r.id,
                    "result": r.result,
                    "start": r.start.isoformat() if r.start else None,
                    "detail": r.detail,
                }
                for r in results
            ]
        }
