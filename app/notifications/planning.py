"""Which messages an appointment change implies, and their outbox rows.

Booking, rescheduling, cancelling and schedule exceptions write their outbox rows in
their own transaction (so a booking never commits without its confirmation and
reminders, and a cancelled appointment never keeps a pending reminder). What is planned
is pure (`plan`, `choose_channels`); the writes join the caller's session and never commit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import Appointment, Notification, Patient

# Messages that announce a coming appointment; a cancellation or a status change makes
# the unsent ones moot.
ANNOUNCEMENTS = ("confirmation", "reminder_24h", "reminder_1h")
REMINDERS = ("reminder_24h", "reminder_1h")
UNSENT = ("pending", "queued")


# --- what an appointment implies (pure) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Planned:
    kind: str
    due_at: dt.datetime


def day_before_same_wall_time(starts_at: dt.datetime, timezone: str) -> dt.datetime:
    """The instant one calendar day before `starts_at` at the same clinic-local wall time.

    Across a DST change this is 23 or 25 real hours earlier: a 09:00 appointment gets its
    reminder at 09:00 the day before, as the patient expects. A wall time that does not
    exist that day (inside the spring-forward gap) moves forward by the gap, as clocks do;
    one that occurs twice (autumn) is the first occurrence.
    """
    tz = ZoneInfo(timezone)
    local = starts_at.astimezone(tz)
    before = dt.datetime.combine(local.date() - dt.timedelta(days=1), local.time(), tzinfo=tz)
    # Round trip through UTC normalises a nonexistent wall time (fold=0 uses the offset
    # in force before the transition).
    return before.astimezone(dt.UTC)


def plan(starts_at: dt.datetime, timezone: str, now: dt.datetime) -> list[Planned]:
    """The messages a new (or moved) booking implies.

    Args:
        starts_at: the appointment's start (an instant).
        timezone: the clinic's IANA zone, in which "the day before" is counted.
        now: the booking's time; the confirmation is due then.

    Returns:
        A confirmation now; a reminder at the same local wall time the day before and one
        60 real minutes before, each only when it is still in the future.
    """
    planned = [Planned("confirmation", now)]
    reminders = (
        ("reminder_24h", day_before_same_wall_time(starts_at, timezone)),
        ("reminder_1h", starts_at.astimezone(dt.UTC) - dt.timedelta(hours=1)),
    )
    planned += [Planned(kind, due) for kind, due in reminders if due > now]
    return planned


def choose_channel(notify_by: str, email: str | None, phone: str | None) -> str | None:
    """The channel to use: the patient's choice, the other one when the chosen address is
    missing (a missed reminder is a missed appointment), none when they chose none."""
    if notify_by == "none":
        return None
    order = ("email", "sms") if notify_by in ("email", "both") else ("sms", "email")
    addresses = {"email": email, "sms": phone}
    return next((channel for channel in order if addresses[channel]), None)


def choose_channels(notify_by: str, email: str | None, phone: str | None) -> tuple[str, ...]:
    """Every channel a message goes by: both that have an address for `both`, else the
    one `choose_channel` picks (none for `none`)."""
    if notify_by == "both":
        found = tuple(c for c, address in (("email", email), ("sms", phone)) if address)
        if found:
            return found
    channel = choose_channel(notify_by, email, phone)
    return (channel,) if channel else ()


# --- outbox writes, inside the caller's transaction ----------------------------------------


async def _channels(
    session: AsyncSession, appointment_ids: Sequence[int]
) -> dict[int, tuple[str, ...]]:
    rows = await session.execute(
        select(Appointment.id, Patient.notify_by, Patient.email, Patient.phone)
        .join(Patient, Patient.id == Appointment.patient_id)
        .where(Appointment.id.in_(appointment_ids))
    )
    return {
        appointment_id: choose_channels(notify_by, email, phone)
        for appointment_id, notify_by, email, phone in rows
    }


async def appointment_booked(
    session: AsyncSession,
    appointment: Appointment,
    timezone: str,
    now: dt.datetime,
    channels: Sequence[str],
) -> None:
    """Add the confirmation and reminders of a new booking to the session's transaction.

    Args:
        channels: the patient's channels (`choose_channels`); none sends nothing.
    """
    if not channels:
        return
    await session.flush()  # the appointment's id (and its constraint check) first
    session.add_all(
        Notification(appointment_id=appointment.id, channel=channel, kind=p.kind, due_at=p.due_at)
        for p in plan(appointment.starts_at, timezone, now)
        for channel in channels
    )


async def appointment_rescheduled(
    session: AsyncSession, appointment: Appointment, timezone: str, now: dt.datetime
) -> None:
    """Replace the unsent confirmation and reminders with those of the new time."""
    await _void(session, [appointment.id], ANNOUNCEMENTS)
    channels = (await _channels(session, [appointment.id])).get(appointment.id, ())
    await appointment_booked(session, appointment, timezone, now, channels)


async def appointments_status_changed(
    session: AsyncSession,
    appointment_ids: Sequence[int],
    status: str,
    now: dt.datetime,
    *,
    notice: str = "cancellation",
) -> None:
    """Void the unsent confirmation and reminders of appointments that left `booked`;
    for cancelled ones add a notice (`cancellation`, or `exception` when a schedule
    exception cancelled them), due now. Set-based: two statements for any number."""
    if not appointment_ids:
        return
    await _void(session, appointment_ids, ANNOUNCEMENTS)
    if status != "cancelled":
        return
    channels = await _channels(session, appointment_ids)
    session.add_all(
        Notification(appointment_id=appointment_id, channel=channel, kind=notice, due_at=now)
        for appointment_id, chosen in channels.items()
        for channel in chosen
    )


async def _void(
    session: AsyncSession, appointment_ids: Sequence[int], kinds: Sequence[str]
) -> None:
    await session.execute(
        update(Notification)
        .where(
            Notification.appointment_id.in_(appointment_ids),
            Notification.kind.in_(kinds),
            Notification.status.in_(UNSENT),
        )
        .values(status="void", last_error="no longer applies")
        .execution_options(synchronize_session=False)
    )
