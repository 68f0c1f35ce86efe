"""Bookings that leave or a closure left in place: move each to its doctor's first free
time, or cancel each with a notice to the patient. One transaction per appointment."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.identity import Principal
from app.appointments import commands
from app.appointments.queries import first_free, in_conflict, visible
from app.appointments.rules import BookingRules, booked_visit
from app.errors import Conflict, DomainError, Forbidden, Invalid
from app.i18n import gettext
from app.live.effects import Effects
from app.scheduling.availability import Visit
from db.models import Appointment, Clinic

ACTIONS = ("move", "cancel")
CANCEL_REASON = "doctor unavailable (leave or closure)"
# A free time found can be taken by someone else before the move commits: look again.
MOVE_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Resolution:
    """What became of one appointment: `moved` (to `start`), `cancelled`, `not_found`,
    `not_in_conflict`, `no_free_time`, or `refused` (with the reason in `detail`)."""

    id: int
    result: str
    start: dt.datetime | None = None  # the new time, clinic-local
    detail: str | None = None


async def resolve(
    session: AsyncSession,
    effects: Effects,
    actor: Principal,
    appointment_ids: Sequence[int],
    *,
    action: str,
    rules: BookingRules,
    now: dt.datetime,
) -> list[Resolution]:
    """Move (`move`) or cancel (`cancel`) the given appointments that overlap leave or a
    closure; the rest are reported, not touched. Each change commits on its own (a failed
    one leaves the others done) and tells its patient through the outbox: the new time's
    confirmation, or a cancellation notice.

    Raises:
        Forbidden: not the front desk or an admin.
        Invalid: an unknown action, or no ids (or too many).
    """
    if actor.role not in ("front_desk", "admin"):
        raise Forbidden(
            gettext("only the front desk and admins move or cancel conflicting bookings")
        )
    if action not in ACTIONS:
        raise Invalid(
            gettext("action must be one of %(choices)s") % {"choices": ", ".join(ACTIONS)}
        )
    ids = list(dict.fromkeys(appointment_ids))
    if not ids or len(ids) > commands.MAX_BULK:
        raise Invalid(
            gettext("give between 1 and %(max_bulk)s appointment ids")
            % {"max_bulk": commands.MAX_BULK}
        )
    rows = {
        row.id: row
        for row in await session.execute(
            select(
                Appointment.id,
                Appointment.doctor_id,
                Appointment.starts_at,
                Appointment.ends_at,
                Appointment.visit_type_id,
                Appointment.buffer_before_minutes,
                Appointment.buffer_after_minutes,
                Clinic.timezone,
                in_conflict().label("conflict"),
            )
            .join(Clinic, Clinic.id == Appointment.clinic_id)
            .where(Appointment.id.in_(ids), visible(actor))
        )
    }
    await session.commit()  # each change below is a transaction of its own
    out = []
    for appointment_id in ids:
        row = rows.get(appointment_id)
        if row is None:  # unknown, or another clinic's: alike (no existence leak)
            out.append(Resolution(appointment_id, "not_found"))
        elif not row.conflict:
            out.append(Resolution(appointment_id, "not_in_conflict"))
        else:
            tz = ZoneInfo(row.timezone)
            try:
                if action == "cancel":
                    await commands.change_status(
                        session,
                        effects,
                        actor,
                        appointment_id,
                        status="cancelled",
                        now=now,
                        reason=CANCEL_REASON,
                    )
                    out.append(Resolution(appointment_id, "cancelled"))
                else:
                    day = row.starts_at.astimezone(tz).date()
                    visit = booked_visit(
                        row.starts_at,
                        row.ends_at,
                        row.visit_type_id,
                        row.buffer_before_minutes,
                        row.buffer_after_minutes,
                    )
                    moved = await _move(
                        session,
                        effects,
                        actor,
                        appointment_id,
                        row.doctor_id,
                        day,
                        rules,
                        now,
                        visit,
                    )
                    out.append(moved)
            except DomainError as exc:
                await session.rollback()
                out.append(Resolution(appointment_id, "refused", detail=exc.detail))
    return out


async def _move(
    session: AsyncSession,
    effects: Effects,
    actor: Principal,
    appointment_id: int,
    doctor_id: int,
    day: dt.date,
    rules: BookingRules,
    now: dt.datetime,
    visit: Visit | None,
) -> Resolution:
    """To the doctor's first free time from `day` on (where the visit, with its length
    and buffers, fits), looking again if it is taken first."""
    for _ in range(MOVE_ATTEMPTS):
        free = await first_free(session, doctor_id, day, rules, now, visit)
        if free is None:
            break
        try:
            result = await commands.reschedule(
                session, effects, actor, appointment_id, start=free.start, rules=rules, now=now
            )
        except Conflict:
            continue  # taken meanwhile: the next search sees it booked
        local = result.appointment.starts_at.astimezone(ZoneInfo(result.timezone))
        return Resolution(appointment_id, "moved", start=local)
    return Resolution(appointment_id, "no_free_time")
