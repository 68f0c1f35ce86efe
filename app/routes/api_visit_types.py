"""JSON API: a doctor's visit types (anyone signed in reads them; admins manage them)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec
from litestar import Controller, Response, delete, get, patch, post
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.identity import Principal
from app.appointments.rules import MAY_BOOK_STAFF_ONLY
from app.live.effects import Effects
from app.routes.inputs import Id
from app.routes.responses import BY_ID, SIGNED_IN, answers
from app.scheduling import visit_types
from app.web.guards import allow
from db.models import MAX_BUFFER_MINUTES, VISIT_MINUTES, VisitType

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=visit_types.MAX_NAME)]
Minutes = Annotated[int, msgspec.Meta(ge=VISIT_MINUTES[0], le=VISIT_MINUTES[1])]
Buffer = Annotated[int, msgspec.Meta(ge=0, le=MAX_BUFFER_MINUTES)]
Notice = Annotated[int, msgspec.Meta(ge=0, le=visit_types.MAX_NOTICE_MINUTES)]
Horizon = Annotated[int, msgspec.Meta(ge=1, le=visit_types.MAX_HORIZON_DAYS)]
# A name taken by another type of the doctor: 409; a type with bookings ahead: 409.
CHANGE = answers(*SIGNED_IN, 404, 409, 422, _409="another type of this doctor has that name")
REMOVE = answers(*SIGNED_IN, 404, 409, _409="bookings of this type have not ended yet")


class VisitTypeBody(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    minutes: Minutes
    buffer_before_minutes: Buffer = 0
    buffer_after_minutes: Buffer = 0
    online: bool = True  # false: booked by the clinic's staff only
    min_notice_minutes: Notice | None = None  # None: the clinic's
    horizon_days: Horizon | None = None  # None: the clinic's


class VisitTypePatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Only the fields given change; `null` for notice or horizon: the clinic's again."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    minutes: Minutes | msgspec.UnsetType = msgspec.UNSET
    buffer_before_minutes: Buffer | msgspec.UnsetType = msgspec.UNSET
    buffer_after_minutes: Buffer | msgspec.UnsetType = msgspec.UNSET
    online: bool | msgspec.UnsetType = msgspec.UNSET
    min_notice_minutes: Notice | msgspec.UnsetType | None = msgspec.UNSET
    horizon_days: Horizon | msgspec.UnsetType | None = msgspec.UNSET


class VisitTypeOut(msgspec.Struct):
    """A visit type; `online` false: booked by the clinic's staff only; notice and
    horizon null: the clinic's."""

    id: int
    doctor_id: int
    name: str
    minutes: int
    buffer_before_minutes: int
    buffer_after_minutes: int
    online: bool
    min_notice_minutes: int | None
    horizon_days: int | None


def visit_type_out(v: VisitType) -> VisitTypeOut:
    return msgspec.convert(v, VisitTypeOut, from_attributes=True)


class VisitTypeController(Controller):
    path = "/api/doctors/{doctor_id:int}/visit-types"
    tags = ["visit types"]

    @get("", guards=[allow()], responses=BY_ID)
    async def list_types(
        self, db_session: AsyncSession, actor: Principal, doctor_id: Id
    ) -> list[VisitTypeOut]:
        """The doctor's visit types; patients see those bookable online."""
        found = await visit_types.list_visit_types(
            db_session, doctor_id, staff_only_too=actor.role in MAY_BOOK_STAFF_ONLY
        )
        return [visit_type_out(v) for v in found]

    @post("", guards=[allow("admin")], responses=CHANGE)
    async def create_type(
        self,
        db_session: AsyncSession,
        effects: Effects,
        actor: Principal,
        doctor_id: Id,
        data: VisitTypeBody,
    ) -> Response[VisitTypeOut]:
        """Add a visit type (admins): 201."""
        created = await visit_types.create_visit_type(
            db_session,
            effects,
            doctor_id,
            visit_types.VisitTypeIn(**msgspec.structs.asdict(data)),
            actor_user_id=actor.id,
        )
        return Response(visit_type_out(created), status_code=201)

    @patch("/{visit_type_id:int}", guards=[allow("admin")], responses=CHANGE)
    async def change_type(
        self,
        db_session: AsyncSession,
        effects: Effects,
        actor: Principal,
        doctor_id: Id,
        visit_type_id: Id,
        data: VisitTypePatch,
    ) -> VisitTypeOut:
        """Change a visit type (admins); bookings already made keep their times."""
        changes = {
            name: value
            for name, value in msgspec.structs.asdict(data).items()
            if value is not msgspec.UNSET
        }
        changed = await visit_types.change_visit_type(
            db_session, effects, doctor_id, visit_type_id, changes, actor_user_id=actor.id
        )
        return visit_type_out(changed)

    @delete("/{visit_type_id:int}", guards=[allow("admin")], responses=REMOVE, status_code=204)
    async def delete_type(
        self,
        db_session: AsyncSession,
        effects: Effects,
        actor: Principal,
        now: dt.datetime,
        doctor_id: Id,
        visit_type_id: Id,
    ) -> None:
        """Delete a visit type with no bookings ahead (admins); 409 otherwise."""
        await visit_types.delete_visit_type(
            db_session, effects, doctor_id, visit_type_id, actor_user_id=actor.id, now=now
        )
