"""JSON API: clinics, doctors, weekly schedules and exceptions."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import msgspec
from litestar import Controller, delete, get, patch, post, put
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.identity import Principal
from app.live.effects import Effects
from app.routes.inputs import (
    SEARCH_MAX,
    Clock,
    Day,
    Email,
    ExceptionKind,
    Id,
    IdField,
    Moment,
    Name,
    OptionalId,
    Text,
    TimeZone,
    check_day,
    check_moment,
)
from app.routes.responses import BY_ID, BY_ID_RULES, READ, RULES, SIGNED_IN, answers
from app.scheduling import directory, schedules
from app.settings import Settings
from app.web.guards import allow
from db.models import Appointment, Clinic, Doctor

# Changing or withdrawing leave: also 409 when it is already over.
LEAVE_CHANGE = answers(
    *SIGNED_IN, 404, 409, 422, _409="the leave is over and stays on record; it cannot change"
)
MAX_RANGES = 100  # a week of opening hours, generously: the overlap check is quadratic
SlotMinutes = Annotated[int, msgspec.Meta(ge=5, le=240)]  # directory's and schedules' bound
Search = Annotated[str | None, Parameter(max_length=SEARCH_MAX)]


class ClinicIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    timezone: TimeZone
    address: Text | None = None


class DoctorIn(msgspec.Struct, forbid_unknown_fields=True):
    clinic_id: IdField
    name: Name
    specialty: Name
    email: Email | None = None
    default_slot_minutes: SlotMinutes = 30


class RangeBody(msgspec.Struct, forbid_unknown_fields=True):
    weekday: Annotated[int, msgspec.Meta(ge=0, le=6)]
    start: Clock
    end: Clock
    slot_minutes: SlotMinutes
    valid_from: Day | None = None
    valid_to: Day | None = None


class ScheduleIn(msgspec.Struct, forbid_unknown_fields=True):
    ranges: Annotated[list[RangeBody], msgspec.Meta(max_length=MAX_RANGES)]
    reason: Text | None = None  # kept with the replaced ranges and in the audit event


class ExceptionPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Only the fields given change; a note of "" clears it."""

    starts_at: Moment | None = None
    ends_at: Moment | None = None
    kind: ExceptionKind | None = None
    note: Text | None = None
    preview: bool = False


class ExceptionIn(msgspec.Struct, forbid_unknown_fields=True):
    starts_at: Moment
    ends_at: Moment
    kind: ExceptionKind = "leave"
    note: Text | None = None
    cancel_affected: bool = False
    preview: bool = False


def clinic_out(clinic: Clinic) -> dict[str, Any]:
    return {
        "id": clinic.id,
        "name": clinic.name,
        "timezone": clinic.timezone,
        "address": clinic.address,
    }


def doctor_out(doctor: Doctor) -> dict[str, Any]:
    return {
        "id": doctor.id,
        "clinic_id": doctor.clinic_id,
        "name": doctor.full_name,
        "specialty": doctor.specialty,
        "email": doctor.email,
        "default_slot_minutes": doctor.default_slot_minutes,
    }


def _ranges(body: ScheduleIn) -> list[schedules.RangeIn]:
    for i, r in enumerate(body.ranges):
        check_day(r.valid_from, f"ranges[{i}].valid_from")
        check_day(r.valid_to, f"ranges[{i}].valid_to")
    return [
        schedules.RangeIn(
            r.weekday,
            dt.time.fromisoformat(r.start),  # the schema's Clock pattern: always a time
            dt.time.fromisoformat(r.end),
            r.slot_minutes,
            r.valid_from,
            r.valid_to,
        )
        for i, r in enumerate(body.ranges)
    ]


def schedule_out(doctor_id: int, timezone: str, ranges: list[schedules.RangeIn]) -> dict[str, Any]:
    return {
        "doctor_id": doctor_id,
        "timezone": timezone,
        "ranges": [
            {
                "weekday": r.weekday,
                "start": r.start.strftime("%H:%M"),
                "end": r.end.strftime("%H:%M"),
                "slot_minutes": r.slot_minutes,
                "valid_from": r.valid_from,
                "valid_to": r.valid_to,
            }
            for r in ranges
        ],
    }


def affected_out(appointment: Appointment) -> dict[str, Any]:
    return {
        "id": appointment.id,
        "doctor_id": appointment.doctor_id,
        "patient_id": appointment.patient_id,
        "start": appointment.starts_at.isoformat(),
        "end": appointment.ends_at.isoformat(),
    }


class DirectoryController(Controller):
    path = "/api"
    tags = ["directory"]

    @get("/clinics", guards=[allow()], responses=READ)
    async def clinics(self, read_session: AsyncSession) -> list[dict[str, Any]]:
        """All clinics."""
        return [clinic_out(c) for c in await directory.list_clinics(read_session)]

    @post(
        "/clinics",
        guards=[allow("admin")],
        responses=answers(*SIGNED_IN, 409, 422, _409="a clinic with a name alike exists"),
    )
    async def create_clinic(self, db_session: AsyncSession, data: ClinicIn) -> dict[str, Any]:
        """Add a clinic (admins)."""
        clinic = await directory.create_clinic(
            db_session, name=data.name, timezone=data.timezone, address=data.address
        )
        return clinic_out(clinic)

    @get("/doctors", guards=[allow()], responses=READ)
    async def doctors(
        self,
        read_session: AsyncSession,
        clinic_id: OptionalId = None,
        specialty: Search = None,
        name: Search = None,
    ) -> list[dict[str, Any]]:
        """Active doctors, by clinic, specialty or part of the name."""
        found = await directory.find_doctors(
            read_session, clinic_id=clinic_id, specialty=specialty, name=name
        )
        return [
            {
                "id": d.id,
                "clinic_id": d.clinic_id,
                "clinic_name": d.clinic_name,
                "name": d.name,
                "specialty": d.specialty,
                "timezone": d.timezone,
            }
            for d in found
        ]

    @post("/doctors", guards=[allow("admin")], responses=RULES)
    async def create_doctor(self, db_session: AsyncSession, data: DoctorIn) -> dict[str, Any]:
        """Add a doctor to a clinic (admins)."""
        doctor = await directory.create_doctor(
            db_session,
            clinic_id=data.clinic_id,
            name=data.name,
            specialty=data.specialty,
            email=data.email,
            default_slot_minutes=data.default_slot_minutes,
        )
        return doctor_out(doctor)

    @get("/doctors/{doctor_id:int}/schedule", guards=[allow()], responses=BY_ID)
    async def schedule(self, read_session: AsyncSession, doctor_id: Id) -> dict[str, Any]:
        """The doctor's weekly ranges in clinic-local time."""
        timezone, ranges = await schedules.get_schedule(read_session, doctor_id)
        return schedule_out(doctor_id, timezone, ranges)

    @put("/doctors/{doctor_id:int}/schedule", guards=[allow("admin")], responses=BY_ID_RULES)
    async def replace_schedule(
        self,
        db_session: AsyncSession,
        effects: Effects,
        actor: Principal,
        doctor_id: Id,
        data: ScheduleIn,
        now: dt.datetime,
        settings: Settings,
    ) -> dict[str, Any]:
        """Replace the doctor's weekly template (admins)."""
        await schedules.replace_schedule(
            db_session,
            effects,
            doctor_id,
            _ranges(data),
            today=now.date(),
            horizon_days=settings.booking_horizon_days,
            actor_user_id=actor.id,
            reason=(data.reason or "").strip() or None,
        )
        timezone, ranges = await schedules.get_schedule(db_session, doctor_id)
        return schedule_out(doctor_id, timezone, ranges)

    @post("/doctors/{doctor_id:int}/exceptions", guards=[allow("admin")], responses=BY_ID_RULES)
    async def doctor_exception(
        self,
        db_session: AsyncSession,
        effects: Effects,
        actor: Principal,
        doctor_id: Id,
        data: ExceptionIn,
        now: dt.datetime,
    ) -> dict[str, Any]:
        """Leave for one doctor; reports (and optionally cancels) the bookings it covers."""
        doctor, _ = await directory.get_doctor(db_session, doctor_id)
        return await _exception(db_session, effects, actor, doctor.clinic_id, doctor_id, data, now)

    @patch(
        "/doctors/{doctor_id:int}/exceptions/{exception_id:int}",
        guards=[allow("admin")],
        responses=LEAVE_CHANGE,
    )
    async def change_doctor_exception(
        self,
        db_session: AsyncSession,
        effects: Effects,
        actor: Principal,
        doctor_id: Id,
        exception_id: Id,
        data: ExceptionPatch,
        now: dt.datetime,
    ) -> dict[str, Any]:
        """Change the dates, kind or note of a doctor's leave that is not over; reports the
        bookings its new time covers (they are kept)."""
        check_moment(data.starts_at, "starts_at")
        check_moment(data.ends_at, "ends_at")
        result = await schedules.change_exception(
            db_session,
            effects,
            exception_id=exception_id,
            doctor_id=doctor_id,
            edit=schedules.ExceptionEdit(data.kind, data.starts_at, data.ends_at, data.note),
            actor_id=actor.id,
            preview=data.preview,
            now=now,
        )
        return exception_result_out(result)

    @delete(
        "/doctors/{doctor_id:int}/exceptions/{exception_id:int}",
        guards=[allow("admin")],
        status_code=204,
        responses=LEAVE_CHANGE,
    )
    async def withdraw_doctor_exception(
        self,
        db_session: AsyncSession,
        effects: Effects,
        actor: Principal,
        doctor_id: Id,
        exception_id: Id,
        now: dt.datetime,
    ) -> None:
        """Withdraw a doctor's leave that is not over: its slots reopen."""
        await schedules.withdraw_exception(
            db_session,
            effects,
            exception_id=exception_id,
            doctor_id=doctor_id,
            actor_id=actor.id,
            now=now,
        )

    @post("/clinics/{clinic_id:int}/exceptions", guards=[allow("admin")], responses=BY_ID_RULES)
    async def clinic_exception(
        self,
        db_session: AsyncSession,
        effects: Effects,
        actor: Principal,
        clinic_id: Id,
        data: ExceptionIn,
        now: dt.datetime,
    ) -> dict[str, Any]:
        """A closure of the whole clinic (holiday); reports or cancels what it covers."""
        return await _exception(db_session, effects, actor, clinic_id, None, data, now)


async def _exception(
    db_session: AsyncSession,
    effects: Effects,
    actor: Principal,
    clinic_id: Id,
    doctor_id: int | None,
    data: ExceptionIn,
    now: dt.datetime,
) -> dict[str, Any]:
    check_moment(data.starts_at, "starts_at")
    check_moment(data.ends_at, "ends_at")
    result = await schedules.add_exception(
        db_session,
        effects,
        clinic_id=clinic_id,
        doctor_id=doctor_id,
        kind=data.kind,
        starts_at=data.starts_at,
        ends_at=data.ends_at,
        note=data.note,
        created_by=actor.id,
        cancel_affected=data.cancel_affected,
        preview=data.preview,
        now=now,
    )
    return exception_result_out(result)


def exception_result_out(result: schedules.ExceptionResult) -> dict[str, Any]:
    exception = result.exception
    return {
        "exception": None
        if exception is None
        else {
            "id": exception.id,
            "clinic_id": exception.clinic_id,
            "doctor_id": exception.doctor_id,
            "kind": exception.kind,
            "starts_at": exception.starts_at.isoformat(),
            "ends_at": exception.ends_at.isoformat(),
            "note": exception.note,
        },
        "affected": [affected_out(a) for a in result.affected],
        "cancelled": result.cancelled,
    }
