"""The notification outbox: each row's life from claim to `sent` or `dead`.

The SAQ dispatcher (tasks/reminders.py) claims due rows with `FOR UPDATE SKIP LOCKED`;
send jobs record each attempt here. PostgreSQL is the truth: Redis only carries the jobs,
and a claimed row whose lease lapses is claimed again (docs/notifications.md). Rows are
written by app/notifications/planning.py.

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

from sqlalchemy import Table, and_, case, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app import i18n
from app.access import audit
from app.errors import NotFound
from app.i18n import gettext
from app.notifications.planning import ANNOUNCEMENTS
from db.models import Appointment, Clinic, Notification, Patient, User

LEASE_UNTIL = Notification.__table__.c.lease_until
# The send path updates the table through Core: no ORM work per message (it adds up).
ROWS: Table = Notification.__table__  # type: ignore[assignment]
ERROR_LIMIT = 500  # characters of a provider's error kept on the row

NOTIFICATION_RETRIED = "notification.retried"
NOTIFICATION_DISCARDED = "notification.discarded"


class SendFailed(Exception):
    """A provider did not take the message. `permanent`: retrying cannot help (a refused
    address, a 4xx from the SMS API); otherwise it is retried with backoff."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def backoff(attempt: int, base: float, maximum: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): base·2^(n-1), capped,
    with ±25 % jitter, so retries of many rows spread out yet each gap still grows."""
    delay = min(maximum, base * 2 ** max(attempt - 1, 0))
    return delay * (0.75 + 0.5 * (rng or random).random())  # jitter, not secrets


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
    conn: AsyncConnection,
    *,
    now: dt.datetime,
    lease: dt.timedelta,
    limit: int,
    lapsed: bool = True,
) -> list[Claim]:
    """Claim up to `limit` rows: due pending ones, then (with `lapsed`) queued ones whose
    lease lapsed.

    `SKIP LOCKED` is right here (unlike for booking): rows exist, and two dispatchers
    should split them rather than wait for each other. The caller commits (or runs each
    statement on its own, autocommit), then enqueues.
    """
    params = {"now": now, "lease_until": now + lease, "limit": limit}
    rows = list(await conn.execute(CLAIM_DUE, params))
    if lapsed and len(rows) < limit:
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
    language: str = i18n.SOURCE_LANGUAGE  # the patient's: the message is written in it

    @property
    def recipient(self) -> str | None:
        return self.email if self.channel == "email" else self.phone

    def moot(self, now: dt.datetime) -> str | None:
        """Why this message should not go out any more, if so."""
        if self.starts_at <= now:
            return "the appointment has already started"
        if self.kind == "offer":  # a waitlist offer: only while its slot is still held
            return None if self.appointment_status == "held" else "the offer is no longer open"
        if self.kind in ANNOUNCEMENTS and self.appointment_status not in ("booked", "checked_in"):
            return f"the appointment is {self.appointment_status}"
        if self.kind not in ANNOUNCEMENTS and self.appointment_status != "cancelled":
            return "the appointment is no longer cancelled"
        return None


@dataclass(frozen=True, slots=True)
class AccountMessage:
    """A message about an account (a reset link, a new address's verification link).

    `link` is filled in when sent, from the token kept in Redis under `ref` while the link
    lives (app.access.accounts.link_key); without it the link has expired.
    """

    id: int
    token: int
    kind: str
    channel: str
    user_id: int
    ref: str
    email: str | None
    language: str = i18n.SOURCE_LANGUAGE
    link: str | None = None

    @property
    def recipient(self) -> str | None:
        return self.email

    def moot(self, now: dt.datetime) -> str | None:
        if self.link is None:
            return "the link has expired"
        if not self.email:
            return "no address to send to"
        return None


Sendable = Outgoing | AccountMessage


# What an appointment message needs, as fixed text (the Core select of five tables was
# built anew for every batch); the columns in `Outgoing`'s order.
LOAD_OUTGOING = text(
    """
    SELECT n.id, n.attempts, n.kind, n.channel, a.id, a.status, a.starts_at, a.ends_at,
           a.updated_at, a.cancel_reason, d.full_name, c.name, c.address, c.timezone,
           p.email, p.phone, p.language
      FROM notifications n
      JOIN appointments a ON a.id = n.appointment_id
      JOIN doctors d ON d.id = a.doctor_id
      JOIN clinics c ON c.id = a.clinic_id
      JOIN patients p ON p.id = a.patient_id
     WHERE n.id = ANY(:ids) AND n.status = 'queued'
     ORDER BY n.id
    """
)


async def load_outgoing(conn: AsyncConnection, claims: Sequence[Claim]) -> list[Sendable]:
    """The claimed rows that are still this claim's (queued, same token), with their data:
    appointment messages first, then account messages (`link` still unset)."""
    if not claims:
        return []
    tokens = {c.id: c.token for c in claims}
    messages: list[Sendable] = []
    result = await conn.execute(LOAD_OUTGOING, {"ids": list(tokens)})
    rows = list(result)
    messages += [Outgoing(*row) for row in rows if tokens[row[0]] == row[1]]
    # The rest are account messages (or rows no longer queued): most batches have none
    # left, and skip the second statement.
    rest = set(tokens).difference(row[0] for row in rows)
    if not rest:
        return messages
    # A verification link goes to the new address (pending); a reset to the account's.
    account_rows = await conn.execute(
        select(
            Notification.id,
            Notification.attempts,
            Notification.kind,
            Notification.channel,
            User.id,
            Notification.ref,
            case((Notification.kind == "email_verify", Patient.pending_email), else_=User.email),
            func.coalesce(Patient.language, i18n.SOURCE_LANGUAGE),
        )
        .join(User, User.id == Notification.user_id)
        .outerjoin(Patient, Patient.id == User.patient_id)
        .where(Notification.id.in_(sorted(rest)), Notification.status == "queued")
        .order_by(Notification.id)
    )
    messages += [AccountMessage(*row) for row in account_rows if tokens[row[0]] == row[1]]
    return messages


def _row_with(item: Sendable, attempts: int, statuses: Sequence[str] = ("queued",)) -> Any:
    """The row of `item` while its status is one of `statuses` (normally only `queued`) and
    it has this many attempts: the fencing check that it is still this job's."""
    return and_(ROWS.c.id == item.id, ROWS.c.status.in_(statuses), ROWS.c.attempts == attempts)


def _claim_of(item: Sendable) -> Any:
    """The row as claimed: no attempt of this claim has started."""
    return _row_with(item, item.token)


def _attempt_of(item: Sendable) -> Any:
    """The row during this claim's attempt (`start_attempt` counted it)."""
    return _row_with(item, item.token + 1)


async def _set(conn: AsyncConnection, where: Any, **values: Any) -> bool:
    result = await conn.execute(update(ROWS).where(where).values(**values))
    return bool(result.rowcount)


# The two statements of every message, as fixed text: building them with Core each time
# (clauses, coercions, the cache key) cost more of the worker's CPU than running them.
START_ATTEMPT = text(
    """
    UPDATE notifications SET attempts = attempts + 1, lease_until = :lease_until
    WHERE id = :id AND status = 'queued' AND attempts = :token
    """
)
MARK_SENT = text(
    """
    UPDATE notifications
       SET status = 'sent', provider_message_id = :provider_message_id, sent_at = :sent_at,
           last_error = NULL, lease_until = NULL
     WHERE id = :id AND status IN ('queued', 'void') AND attempts = :attempts
    """
)


async def start_attempt(
    conn: AsyncConnection, item: Sendable, *, now: dt.datetime, lease: dt.timedelta
) -> bool:
    """Count an attempt and hold the row for its duration; False when another job owns it."""
    result = await conn.execute(
        START_ATTEMPT, {"id": item.id, "token": item.token, "lease_until": now + lease}
    )
    return bool(result.rowcount)


async def mark_sent(
    conn: AsyncConnection, item: Sendable, provider_message_id: str, now: dt.datetime
) -> bool:
    """Record the provider's message id and `sent` in one statement.

    A row made `void` while this attempt was in flight (its appointment was cancelled or
    moved, the patient opted out) becomes `sent` too: the provider took the message, and
    the outbox must say what went out. Only this attempt's row matches (`attempts`), and a
    void row is never claimed again, so nothing else can have moved it since.
    """
    result = await conn.execute(
        MARK_SENT,
        {
            "id": item.id,
            "attempts": item.token + 1,
            "provider_message_id": provider_message_id[:200],
            "sent_at": now,
        },
    )
    return bool(result.rowcount)


async def mark_failed(
    conn: AsyncConnection,
    item: Sendable,
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
    conn: AsyncConnection, item: Sendable, until: dt.datetime, lease: dt.timedelta
) -> bool:
    """The provider's breaker is open: keep the claim, without counting an attempt."""
    return await _set(conn, _claim_of(item), lease_until=until + lease)


async def mark_void(conn: AsyncConnection, item: Sendable, reason: str) -> None:
    await _set(conn, _claim_of(item), status="void", last_error=reason, lease_until=None)


# --- the undelivered page (dead letters) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Undelivered:
    """A dead letter: about an appointment (its time, clinic and patient), or about an
    account (a reset or verification link: `user_id` and `account_email`, no appointment)."""

    id: int
    kind: str
    channel: str
    due_at: dt.datetime
    attempts: int
    last_error: str | None
    appointment_id: int | None
    starts_at: dt.datetime | None
    timezone: str | None
    clinic_name: str | None
    patient_name: str | None
    user_id: int | None
    account_email: str | None

    @property
    def starts_local(self) -> str:
        if self.starts_at is None or self.timezone is None:
            return ""
        local = self.starts_at.astimezone(ZoneInfo(self.timezone))
        return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"


async def list_undelivered(
    session: AsyncSession, *, before_id: int | None = None, limit: int = 100
) -> list[Undelivered]:
    """Dead rows, newest first (`ix_notifications_dead`): appointment messages and
    account messages alike (outer joins: an account message has no appointment)."""
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
            Notification.user_id,
            User.email,
        )
        .outerjoin(Appointment, Appointment.id == Notification.appointment_id)
        .outerjoin(Clinic, Clinic.id == Appointment.clinic_id)
        .outerjoin(User, User.id == Notification.user_id)
        .outerjoin(Patient, Patient.id == func.coalesce(Appointment.patient_id, User.patient_id))
        .where(Notification.status == "dead")
        .order_by(Notification.id.desc())
        .limit(limit)
    )
    if before_id is not None:
        query = query.where(Notification.id < before_id)
    return [Undelivered(*row) for row in await session.execute(query)]  # type: ignore[call-arg]


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
        .returning(Notification.appointment_id, Notification.user_id)
    )
    row = result.first()
    if row is None:
        raise NotFound(
            gettext("no undelivered notification %(notification_id)s")
            % {"notification_id": notification_id}
        )
    appointment_id, user_id = row
    await audit.record(
        session,
        actor_user_id=actor_user_id,
        action=action,
        subject_type="notification",
        subject_id=notification_id,
        client_addr=client_addr,
        details={"appointment_id": appointment_id}
        if appointment_id is not None
        else {"user_id": user_id},
    )
    await session.commit()


async def retry_dead(
    session: AsyncSession, notification_id: int, *, actor_user_id: int, client_addr: str | None
) -> None:
    """Put a dead row back to `pending` with fresh attempts; it keeps its due time, so the
    next dispatch sends it (if its appointment still needs it; an account message only
    while its link lives, else it is voided as moot). Commits.

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
