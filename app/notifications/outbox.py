"""The notification outbox: which messages an appointment implies, and each row's life.

Booking, rescheduling, cancelling and schedule exceptions write their outbox rows in
their own transaction (so a booking never commits without its confirmation and
reminders, and a cancelled appointment never keeps a pending reminder). The SAQ
dispatcher (tasks/reminders.py) claims due rows with `FOR UPDATE SKIP LOCKED`; send jobs
record each attempt here. PostgreSQL is the truth: Redis only carries the jobs, and a
claimed row whose lease lapses is claimed again (docs/notifications.md).

Row states: `pending` (waits for `due_at`) → `queued` (claimed; its job owns it until
`lease_until`) → `sent`, or `dead` after the last attempt (the undelivered page can put
it back to `pending` or discard it as `void`). Rows that no longer apply are `void`.

The fencing token of a claim is `attempts` as it was when the row was claimed: an attempt
starts only with `UPDATE … SET attempts = attempts + 1 WHERE attempts = token AND status =
'queued'`, so of two jobs holding one claim (a swept job and a re-claim) only one sends.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Table, and_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.access import audit
from app.errors import Invalid, NotFound
from db.models import Appointment, Clinic, Doctor, Notification, Patient

# Messages that announce a coming appointment; a cancellation or a status change makes
# the unsent ones moot.
ANNOUNCEMENTS = ("confirmation", "reminder_24h", "reminder_1h")
REMINDERS = ("reminder_24h", "reminder_1h")
NOTIFY_CHOICES = ("email", "sms", "none")
UNSENT = ("pending", "queued")
LEASE_UNTIL = Notification.__table__.c.lease_until
# The send path updates the table through Core: no ORM work per message (it adds up).
ROWS: Table = Notification.__table__  # type: ignore[assignment]
ERROR_LIMIT = 500  # characters of a provider's error kept on the row

NOTIFICATION_RETRIED = "notification.retried"
NOTIFICATION_DISCARDED = "notification.discarded"
NOTIFY_PREFERENCE_CHANGED = "notification.preference_changed"


class SendFailed(Exception):
    """A provider did not take the message. `permanent`: retrying cannot help (a refused
    address, a 4xx from the SMS API); otherwise it is retried with backoff."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


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
    order = ("email", "sms") if notify_by == "email" else ("sms", "email")
    addresses = {"email": email, "sms": phone}
    return next((channel for channel in order if addresses[channel]), None)


def backoff(attempt: int, base: float, maximum: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): base·2^(n-1), capped,
    with ±25 % jitter, so retries of many rows spread out yet each gap still grows."""
    delay = min(maximum, base * 2 ** max(attempt - 1, 0))
    return delay * (0.75 + 0.5 * (rng or random).random())  # jitter, not secrets


# --- outbox writes, inside the caller's transaction ----------------------------------------


async def _channels(session: AsyncSession, appointment_ids: Sequence[int]) -> dict[int, str]:
    rows = await session.execute(
        select(Appointment.id, Patient.notify_by, Patient.email, Patient.phone)
        .join(Patient, Patient.id == Appointment.patient_id)
        .where(Appointment.id.in_(appointment_ids))
    )
    channels = {}
    for appointment_id, notify_by, email, phone in rows:
        channel = choose_channel(notify_by, email, phone)
        if channel is not None:
            channels[appointment_id] = channel
    return channels


async def appointment_booked(
    session: AsyncSession,
    appointment: Appointment,
    timezone: str,
    now: dt.datetime,
    channel: str | None,
) -> None:
    """Add the confirmation and reminders of a new booking to the session's transaction.

    Args:
        channel: the patient's channel (`choose_channel`); None sends nothing.
    """
    if channel is None:
        return
    await session.flush()  # the appointment's id (and its constraint check) first
    session.add_all(
        Notification(appointment_id=appointment.id, channel=channel, kind=p.kind, due_at=p.due_at)
        for p in plan(appointment.starts_at, timezone, now)
    )


async def appointment_rescheduled(
    session: AsyncSession, appointment: Appointment, timezone: str, now: dt.datetime
) -> None:
    """Replace the unsent confirmation and reminders with those of the new time."""
    await _void(session, [appointment.id], ANNOUNCEMENTS)
    channel = (await _channels(session, [appointment.id])).get(appointment.id)
    await appointment_booked(session, appointment, timezone, now, channel)


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
        for appointment_id, channel in channels.items()
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


# --- the dispatcher's claim ----------------------------------------------------------------

CLAIM_DUE = text(
    """
    WITH due AS (
        SELECT id FROM notifications
        WHERE status = 'pending' AND due_at <= :now
        ORDER BY due_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE notifications AS n SET status = 'queued', lease_until = :lease_until
    FROM due WHERE n.id = due.id
    RETURNING n.id, n.attempts, n.channel
    """
)
# Claimed rows whose job was lost (Redis flushed or restarted, a worker killed mid-send).
CLAIM_LAPSED = text(
    """
    WITH lapsed AS (
        SELECT id FROM notifications
        WHERE status = 'queued' AND lease_until <= :now
        ORDER BY lease_until
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE notifications AS n SET lease_until = :lease_until
    FROM lapsed WHERE n.id = lapsed.id
    RETURNING n.id, n.attempts, n.channel
    """
)


@dataclass(frozen=True, slots=True)
class Claim:
    id: int
    token: int  # `attempts` when claimed: the fencing token
    channel: str


async def claim_due(
    conn: AsyncConnection, *, now: dt.datetime, lease: dt.timedelta, limit: int
) -> list[Claim]:
    """Claim up to `limit` rows: due pending ones, then queued ones whose lease lapsed.

    `SKIP LOCKED` is right here (unlike for booking): rows exist, and two dispatchers
    should split them rather than wait for each other. The caller commits, then enqueues.
    """
    params = {"now": now, "lease_until": now + lease, "limit": limit}
    rows = list(await conn.execute(CLAIM_DUE, params))
    if len(rows) < limit:
        rows += await conn.execute(CLAIM_LAPSED, {**params, "limit": limit - len(rows)})
    return [Claim(r.id, r.attempts, r.channel) for r in rows]


# --- one send attempt ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outgoing:
    """Everything one message needs, read when it is sent (so it shows current data)."""

    id: int
    token: int
    kind: str
    channel: str
    appointment_id: int
    appointment_status: str
    starts_at: dt.datetime
    ends_at: dt.datetime
    updated_at: dt.datetime
    cancel_reason: str | None
    doctor_name: str
    clinic_name: str
    clinic_address: str | None
    timezone: str
    email: str | None
    phone: str | None

    @property
    def recipient(self) -> str | None:
        return self.email if self.channel == "email" else self.phone

    def moot(self, now: dt.datetime) -> str | None:
        """Why this message should not go out any more, if so."""
        if self.starts_at <= now:
            return "the appointment has already started"
        if self.kind in ANNOUNCEMENTS and self.appointment_status not in ("booked", "checked_in"):
            return f"the appointment is {self.appointment_status}"
        if self.kind not in ANNOUNCEMENTS and self.appointment_status != "cancelled":
            return "the appointment is no longer cancelled"
        return None


async def load_outgoing(conn: AsyncConnection, claims: Sequence[Claim]) -> list[Outgoing]:
    """The claimed rows that are still this claim's (queued, same token), with their data."""
    if not claims:
        return []
    tokens = {c.id: c.token for c in claims}
    rows = await conn.execute(
        select(
            Notification.id,
            Notification.attempts,
            Notification.kind,
            Notification.channel,
            Appointment.id,
            Appointment.status,
            Appointment.starts_at,
            Appointment.ends_at,
            Appointment.updated_at,
            Appointment.cancel_reason,
            Doctor.full_name,
            Clinic.name,
            Clinic.address,
            Clinic.timezone,
            Patient.email,
            Patient.phone,
        )
        .join(Appointment, Appointment.id == Notification.appointment_id)
        .join(Doctor, Doctor.id == Appointment.doctor_id)
        .join(Clinic, Clinic.id == Appointment.clinic_id)
        .join(Patient, Patient.id == Appointment.patient_id)
        .where(Notification.id.in_(list(tokens)), Notification.status == "queued")
        .order_by(Notification.id)
    )
    return [Outgoing(*row) for row in rows if tokens[row[0]] == row[1]]  # type: ignore[call-arg]


def _row_with(item: Outgoing, attempts: int, statuses: Sequence[str] = ("queued",)) -> Any:
    """The row of `item` while its status is one of `statuses` (normally only `queued`) and
    it has this many attempts: the fencing check that it is still this job's."""
    return and_(ROWS.c.id == item.id, ROWS.c.status.in_(statuses), ROWS.c.attempts == attempts)


def _claim_of(item: Outgoing) -> Any:
    """The row as claimed: no attempt of this claim has started."""
    return _row_with(item, item.token)


def _attempt_of(item: Outgoing) -> Any:
    """The row during this claim's attempt (`start_attempt` counted it)."""
    return _row_with(item, item.token + 1)


async def _set(conn: AsyncConnection, where: Any, **values: Any) -> bool:
    result = await conn.execute(update(ROWS).where(where).values(**values))
    return bool(result.rowcount)


async def start_attempt(
    conn: AsyncConnection, item: Outgoing, *, now: dt.datetime, lease: dt.timedelta
) -> bool:
    """Count an attempt and hold the row for its duration; False when another job owns it."""
    return await _set(conn, _claim_of(item), attempts=ROWS.c.attempts + 1, lease_until=now + lease)


async def mark_sent(
    conn: AsyncConnection, item: Outgoing, provider_message_id: str, now: dt.datetime
) -> bool:
    """Record the provider's message id and `sent` in one statement.

    A row made `void` while this attempt was in flight (its appointment was cancelled or
    moved, the patient opted out) becomes `sent` too: the provider took the message, and
    the outbox must say what went out. Only this attempt's row matches (`attempts`), and a
    void row is never claimed again, so nothing else can have moved it since.
    """
    return await _set(
        conn,
        _row_with(item, item.token + 1, ("queued", "void")),
        status="sent",
        provider_message_id=provider_message_id[:200],
        sent_at=now,
        last_error=None,
        lease_until=None,
    )


async def mark_failed(
    conn: AsyncConnection,
    item: Outgoing,
    error: str,
    *,
    retry_at: dt.datetime | None,
    lease: dt.timedelta,
) -> None:
    """After a failed attempt: keep the claim until `retry_at` (+ lease), or go `dead`."""
    values: dict[str, Any] = {"last_error": error[:ERROR_LIMIT]}
    if retry_at is None:
        values |= {"status": "dead", "lease_until": None}
    else:
        values[LEASE_UNTIL.key] = retry_at + lease
    await _set(conn, _attempt_of(item), **values)


async def postpone(
    conn: AsyncConnection, item: Outgoing, until: dt.datetime, lease: dt.timedelta
) -> bool:
    """The provider's breaker is open: keep the claim, without counting an attempt."""
    return await _set(conn, _claim_of(item), lease_until=until + lease)


async def mark_void(conn: AsyncConnection, item: Outgoing, reason: str) -> None:
    await _set(conn, _claim_of(item), status="void", last_error=reason, lease_until=None)


# --- the undelivered page (dead letters) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Undelivered:
    id: int
    kind: str
    channel: str
    due_at: dt.datetime
    attempts: int
    last_error: str | None
    appointment_id: int
    starts_at: dt.datetime
    timezone: str
    clinic_name: str
    patient_name: str

    @property
    def starts_local(self) -> str:
        local = self.starts_at.astimezone(ZoneInfo(self.timezone))
        return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"


async def list_undelivered(
    session: AsyncSession, *, before_id: int | None = None, limit: int = 100
) -> list[Undelivered]:
    """Dead rows, newest first (`ix_notifications_dead`)."""
    query = (
        select(
            Notification.id,
            Notification.kind,
            Notification.channel,
            Notification.due_at,
            Notification.attempts,
            Notification.last_error,
            Appointment.id,
            Appointment.starts_at,
            Clinic.timezone,
            Clinic.name,
            Patient.full_name,
        )
        .join(Appointment, Appointment.id == Notification.appointment_id)
        .join(Clinic, Clinic.id == Appointment.clinic_id)
        .join(Patient, Patient.id == Appointment.patient_id)
        .where(Notification.status == "dead")
        .order_by(Notification.id.desc())
        .limit(limit)
    )
    if before_id is not None:
        query = query.where(Notification.id < before_id)
    return [Undelivered(*row) for row in await session.execute(query)]


async def _dead_letter_action(
    session: AsyncSession,
    notification_id: int,
    actor_user_id: int,
    action: str,
    values: dict[str, Any],
    client_addr: str | None,
) -> None:
    result = await session.execute(
        update(Notification)
        .where(Notification.id == notification_id, Notification.status == "dead")
        .values(**values)
        .returning(Notification.appointment_id)
    )
    appointment_id = result.scalar_one_or_none()
    if appointment_id is None:
        raise NotFound(f"no undelivered notification {notification_id}")
    await audit.record(
        session,
        actor_user_id=actor_user_id,
        action=action,
        subject_type="notification",
        subject_id=notification_id,
        client_addr=client_addr,
        details={"appointment_id": appointment_id},
    )
    await session.commit()


async def retry_dead(
    session: AsyncSession, notification_id: int, *, actor_user_id: int, client_addr: str | None
) -> None:
    """Put a dead row back to `pending` with fresh attempts; it keeps its due time, so the
    next dispatch sends it (if its appointment still needs it). Commits.

    Raises:
        NotFound: no dead row with this id.
    """
    await _dead_letter_action(
        session,
        notification_id,
        actor_user_id,
        NOTIFICATION_RETRIED,
        {"status": "pending", "attempts": 0, LEASE_UNTIL.key: None},
        client_addr,
    )


async def discard_dead(
    session: AsyncSession, notification_id: int, *, actor_user_id: int, client_addr: str | None
) -> None:
    """Give up on a dead row (`void`). Commits.

    Raises:
        NotFound: no dead row with this id.
    """
    await _dead_letter_action(
        session,
        notification_id,
        actor_user_id,
        NOTIFICATION_DISCARDED,
        {"status": "void"},
        client_addr,
    )


# --- the patient's choice ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Preference:
    notify_by: str
    email: str | None
    phone: str | None


async def get_preference(session: AsyncSession, patient_id: int) -> Preference:
    row = (
        await session.execute(
            select(Patient.notify_by, Patient.email, Patient.phone).where(Patient.id == patient_id)
        )
    ).one_or_none()
    if row is None:
        raise NotFound(f"patient {patient_id} not found")
    return Preference(*row)


async def set_preference(
    session: AsyncSession,
    patient_id: int,
    *,
    notify_by: str,
    phone: str | None = None,
    actor_user_id: int,
    now: dt.datetime,
) -> Preference:
    """Choose email, SMS or none (optionally with a new phone number). Unsent messages of
    the patient's upcoming appointments follow the new choice at once: they move to the
    new channel, or become void for `none`; reminders that were never planned (the patient
    had chosen none) are added. Commits.

    Raises:
        Invalid: an unknown choice, or a channel without an address.
    """
    if notify_by not in NOTIFY_CHOICES:
        raise Invalid(f"notify_by must be one of {', '.join(NOTIFY_CHOICES)}")
    patient = await session.get(Patient, patient_id, with_for_update=True)
    if patient is None:
        raise NotFound(f"patient {patient_id} not found")
    if phone is not None:
        phone = phone.strip()
        if phone and not _looks_like_phone(phone):
            raise Invalid("phone must be an international number such as +4930123456")
        patient.phone = phone or None
    if notify_by == "sms" and not patient.phone:
        raise Invalid("add a mobile number to get messages by SMS")
    if notify_by == "email" and not patient.email:
        raise Invalid("there is no email address to send to")
    patient.notify_by = notify_by
    channel = choose_channel(notify_by, patient.email, patient.phone)
    upcoming = (
        await session.execute(
            select(Appointment.id, Appointment.starts_at, Clinic.timezone)
            .join(Clinic, Clinic.id == Appointment.clinic_id)
            .where(
                Appointment.patient_id == patient_id,
                Appointment.status == "booked",
                Appointment.starts_at > now,
            )
        )
    ).all()
    ids = [row.id for row in upcoming]
    if ids:
        unsent = and_(
            Notification.appointment_id.in_(ids),
            Notification.status.in_(UNSENT),
        )
        if channel is None:
            await session.execute(
                update(Notification).where(unsent).values(status="void", last_error="opted out")
            )
        else:
            await session.execute(update(Notification).where(unsent).values(channel=channel))
            planned = await session.execute(
                select(Notification.appointment_id, Notification.kind).where(
                    Notification.appointment_id.in_(ids),
                    Notification.kind.in_(REMINDERS),
                    Notification.status.in_(("pending", "queued", "sent", "dead")),
                )
            )
            have = {(appointment_id, kind) for appointment_id, kind in planned}
            session.add_all(
                Notification(appointment_id=row.id, channel=channel, kind=p.kind, due_at=p.due_at)
                for row in upcoming
                for p in plan(row.starts_at, row.timezone, now)
                if p.kind in REMINDERS and (row.id, p.kind) not in have
            )
    await audit.record(
        session,
        actor_user_id=actor_user_id,
        action=NOTIFY_PREFERENCE_CHANGED,
        subject_type="patient",
        subject_id=patient_id,
        patient_id=patient_id,
        details={"notify_by": notify_by},
    )
    await session.commit()
    return Preference(patient.notify_by, patient.email, patient.phone)


def _looks_like_phone(phone: str) -> bool:
    digits = phone[1:] if phone.startswith("+") else phone
    return phone.startswith("+") and digits.isdigit() and 7 <= len(digits) <= 15
