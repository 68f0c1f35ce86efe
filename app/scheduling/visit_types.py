"""A doctor's visit types: list, add, change and delete them (admins), each audited.

A type's length and buffers shape its availability (app/scheduling/availability.py) and
the span its bookings block (the exclusion constraint `no_overlap`). A booking copies the
buffers and keeps its own times, so editing a type changes what can be booked from then
on, never what is already booked. A type with bookings still ahead cannot be deleted
(409); deleting one with only past bookings leaves those with no type (their times and
buffers stay as they were).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.access import audit
from app.errors import Conflict, Invalid, NotFound
from app.i18n import gettext
from app.live.effects import Effects
from db.models import (
    ACTIVE_STATUSES,
    MAX_BUFFER_MINUTES,
    VISIT_MINUTES,
    Appointment,
    Doctor,
    VisitType,
)

MAX_NAME = 100
MAX_NOTICE_MINUTES = 43200  # 30 days
MAX_HORIZON_DAYS = 730


@dataclass(frozen=True, slots=True)
class VisitTypeIn:
    """A visit type's fields as an admin gives them (notice and horizon None: the
    clinic's)."""

    name: str
    minutes: int
    buffer_before_minutes: int = 0
    buffer_after_minutes: int = 0
    online: bool = True
    min_notice_minutes: int | None = None
    horizon_days: int | None = None


FIELDS = tuple(VisitTypeIn.__slots__)


def _checked(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields tidied (the name's blanks), or Invalid naming the first bad one."""
    out = dict(fields)
    if "name" in out:
        out["name"] = " ".join(str(out["name"]).split())
        if not 1 <= len(out["name"]) <= MAX_NAME:
            raise Invalid(
                gettext("name must be 1 to %(max_name)s characters") % {"max_name": MAX_NAME}
            )
    limits = {
        "minutes": VISIT_MINUTES,
        "buffer_before_minutes": (0, MAX_BUFFER_MINUTES),
        "buffer_after_minutes": (0, MAX_BUFFER_MINUTES),
        "min_notice_minutes": (0, MAX_NOTICE_MINUTES),
        "horizon_days": (1, MAX_HORIZON_DAYS),
    }
    for name, (low, high) in limits.items():
        value = out.get(name)
        if value is not None and not low <= value <= high:
            raise Invalid(
                gettext("%(name)s must be between %(low)s and %(high)s")
                % {"name": name, "low": low, "high": high}
            )
    if "minutes" in out and out["minutes"] is None:
        raise Invalid(gettext("minutes is required"))
    return out


async def _doctor(session: AsyncSession, doctor_id: int) -> None:
    if await session.get(Doctor, doctor_id) is None:
        raise NotFound(gettext("doctor %(doctor_id)s does not exist") % {"doctor_id": doctor_id})


async def list_visit_types(
    session: AsyncSession, doctor_id: int, *, staff_only_too: bool
) -> list[VisitType]:
    """The doctor's visit types by name; those booked by staff only when `staff_only_too`.

    Raises:
        NotFound: no such doctor.
    """
    await _doctor(session, doctor_id)
    query = select(VisitType).where(VisitType.doctor_id == doctor_id)
    if not staff_only_too:
        query = query.where(VisitType.online.is_(True))
    return list(await session.scalars(query.order_by(func.lower(VisitType.name), VisitType.id)))


async def get_visit_type(session: AsyncSession, doctor_id: int, visit_type_id: int) -> VisitType:
    """One of the doctor's visit types.

    Raises:
        NotFound: no such type of this doctor.
    """
    found = await session.scalar(
        select(VisitType).where(VisitType.id == visit_type_id, VisitType.doctor_id == doctor_id)
    )
    if found is None:
        raise NotFound(
            gettext("visit type %(visit_type_id)s is not one of doctor %(doctor_id)s's")
            % {"visit_type_id": visit_type_id, "doctor_id": doctor_id}
        )
    return found


@asynccontextmanager
async def _names_unique(session: AsyncSession) -> AsyncIterator[None]:
    """Writes inside answer a name the doctor already uses with Conflict (rolled back)."""
    try:
        yield
    except IntegrityError as exc:
        await session.rollback()
        if "uq_visit_types_doctor_name" in str(exc.orig):
            raise Conflict(gettext("this doctor already has a visit type of that name")) from None
        raise


async def create_visit_type(
    session: AsyncSession,
    effects: Effects,
    doctor_id: int,
    fields: VisitTypeIn,
    *,
    actor_user_id: int,
) -> VisitType:
    """Add a visit type, with its audit event. Commits.

    Raises:
        NotFound: no such doctor.
        Invalid: a field out of bounds.
        Conflict: the doctor has a type of that name already.
    """
    await _doctor(session, doctor_id)
    values = _checked(asdict(fields))
    visit_type = VisitType(doctor_id=doctor_id, **values)
    async with _names_unique(session):
        session.add(visit_type)
        await session.flush()
        await audit.record(
            session,
            actor_user_id=actor_user_id,
            action=audit.VISIT_TYPE_CREATED,
            subject_type="visit_type",
            subject_id=visit_type.id,
            details={"doctor_id": doctor_id, **values},
        )
        await session.commit()
    await effects.visit_types_changed([doctor_id])
    return visit_type


async def change_visit_type(
    session: AsyncSession,
    effects: Effects,
    doctor_id: int,
    visit_type_id: int,
    changes: dict[str, Any],
    *,
    actor_user_id: int,
) -> VisitType:
    """Change some fields of a visit type (those in `changes`), audited with the values
    before and after. Bookings already made keep their times and buffers. Commits.

    Raises:
        NotFound: no such type of this doctor.
        Invalid: an unknown field, or one out of bounds.
        Conflict: another type of the doctor has that name.
    """
    unknown = set(changes) - set(FIELDS)
    if unknown:
        raise Invalid(
            gettext("unknown fields: %(choices)s") % {"choices": ", ".join(sorted(unknown))}
        )
    values = _checked(changes)
    visit_type = await get_visit_type(session, doctor_id, visit_type_id)
    before = {name: getattr(visit_type, name) for name in values}
    async with _names_unique(session):
        for name, value in values.items():
            setattr(visit_type, name, value)
        await audit.record(
            session,
            actor_user_id=actor_user_id,
            action=audit.VISIT_TYPE_CHANGED,
            subject_type="visit_type",
            subject_id=visit_type_id,
            details={"doctor_id": doctor_id, "from": before, "to": values},
        )
        await session.commit()
    await effects.visit_types_changed([doctor_id])
    return visit_type


async def delete_visit_type(
    session: AsyncSession,
    effects: Effects,
    doctor_id: int,
    visit_type_id: int,
    *,
    actor_user_id: int,
    now: dt.datetime,
) -> None:
    """Delete a visit type that has no bookings still ahead. Commits.

    The type's row is locked first; a booking of it that commits before the lock is
    granted is then seen and refuses the delete, and one that waits on the row (its
    foreign key) finds the type gone and is refused as an unknown type.

    Raises:
        NotFound: no such type of this doctor.
        Conflict: bookings of this type have not ended yet.
    """
    found = await session.scalar(
        select(VisitType)
        .where(VisitType.id == visit_type_id, VisitType.doctor_id == doctor_id)
        .with_for_update()
    )
    if found is None:
        raise NotFound(
            gettext("visit type %(visit_type_id)s is not one of doctor %(doctor_id)s's")
            % {"visit_type_id": visit_type_id, "doctor_id": doctor_id}
        )
    ahead = await session.scalar(
        select(func.count())
        .select_from(Appointment)
        .where(
            Appointment.visit_type_id == visit_type_id,
            Appointment.status.in_(ACTIVE_STATUSES),
            Appointment.ends_at > now,
        )
    )
    if ahead:
        name = found.name
        await session.rollback()
        raise Conflict(
            gettext(
                "%(name)s has %(count)s booking(s) still ahead; move or cancel them first, "
                "or stop offering it online"
            )
            % {"name": name, "count": ahead}
        )
    await audit.record(
        session,
        actor_user_id=actor_user_id,
        action=audit.VISIT_TYPE_DELETED,
        subject_type="visit_type",
        subject_id=visit_type_id,
        details={"doctor_id": doctor_id, "name": found.name},
    )
    await session.delete(found)
    await session.commit()
    await effects.visit_types_changed([doctor_id])
