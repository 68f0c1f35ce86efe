"""Sending the outbox: the process's transports (SMTP, the SMS API, the dev mailbox), each
provider's circuit breaker, and the loop that sends one batch of claimed rows.

A batch goes out one row at a time over one SMTP session (or the pooled SMS client), each
attempt under NOTIFY_SEND_TIMEOUT_SECONDS. A failed row is retried with exponential
backoff and jitter by a one-row job the caller schedules (`later`) for its retry time;
after NOTIFY_MAX_ATTEMPTS it is `dead` (the undelivered page). While a provider's breaker
is open, the rest of the batch is handed to `later` for the end of the cooldown instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.access.accounts import LINK_PATHS, link_key
from app.notifications import mail, outbox, sms
from app.notifications.breaker import Breaker
from app.notifications.outbox import AccountMessage, Claim, Outgoing, Sendable, SendFailed
from app.settings import Settings
from db.models import DevMessage

log = logging.getLogger(__name__)

Send = Callable[[Sendable], Awaitable[str]]
# Schedules a send job for these claims at this instant (the worker's queue).
Later = Callable[[Sequence[Claim], dt.datetime], Awaitable[None]]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Transports:
    """The process's ways to send: SMTP, the SMS API (one pooled client), the dev mailbox."""

    def __init__(self, settings: Settings, engine: AsyncEngine, redis: Any) -> None:
        self.settings = settings
        self.engine = engine
        self.redis = redis
        self.mailer = mail.SmtpMailer.from_settings(settings)
        self.sms = sms.SmsSender.from_settings(settings)
        self.http = sms.create_client(settings) if self.sms else None
        probe_ttl = settings.notify_send_timeout_seconds + 5
        self.breakers = {
            channel: Breaker(
                redis,
                channel,
                threshold=settings.notify_breaker_threshold,
                cooldown=settings.notify_breaker_cooldown_seconds,
                probe_ttl=probe_ttl,
            )
            for channel in ("email", "sms")
        }

    async def close(self) -> None:
        if self.http is not None:
            await self.http.aclose()

    def breaker(self, channel: str) -> Breaker | None:
        """None when the channel goes to our own mailbox (nothing to protect)."""
        real = self.mailer if channel == "email" else self.sms
        return self.breakers[channel] if real is not None else None

    @asynccontextmanager
    async def session(self, channel: str, conn: AsyncConnection) -> AsyncIterator[Send]:
        """How to send one message of `channel`; `conn` is the batch's autocommit
        connection, on which the dev mailbox stores its messages."""
        origin, now, secret = self.settings.public_origin, _now, self.settings.secret_key
        if channel == "email" and self.mailer is not None:
            sender = self.settings.smtp_from
            async with self.mailer.connection() as smtp:

                async def send_email(item: Sendable) -> str:
                    return await smtp.send(
                        mail.build_email(
                            item, sender=sender, origin=origin, now=now(), secret=secret
                        )
                    )

                yield send_email
        elif channel == "sms" and self.sms is not None and self.http is not None:
            provider, http = self.sms, self.http

            async def send_sms(item: Sendable) -> str:
                if not isinstance(item, Outgoing):
                    raise SendFailed("account messages go by email only", permanent=True)
                body = mail.render_sms(item, origin)
                return await provider.send(http, notification_id=item.id, to=item.phone, body=body)

            yield send_sms
        elif self.settings.notify_dev_mailbox:

            async def to_mailbox(item: Sendable) -> str:
                return await self._to_mailbox(item, conn)

            yield to_mailbox
        else:
            variable = "SMTP_HOST" if channel == "email" else "SMS_API_URL"

            async def unconfigured(item: Sendable) -> str:
                raise SendFailed(
                    f"no {channel} provider is configured ({variable})", permanent=True
                )

            yield unconfigured

    async def _to_mailbox(self, item: Sendable, conn: AsyncConnection) -> str:
        origin = self.settings.public_origin
        if isinstance(item, AccountMessage):
            if not item.email:
                raise SendFailed("the account has no email address", permanent=True)
            subject, text, html = mail.render_account(item, origin)
            values: dict[str, Any] = {
                "recipient": item.email,
                "subject": subject,
                "body_text": text,
                "body_html": html,
            }
        elif item.channel == "email":
            if not item.email:
                raise SendFailed("the patient has no email address", permanent=True)
            subject, text, html = mail.render_text(item, origin, self.settings.secret_key)
            values = {
                "recipient": item.email,
                "subject": subject,
                "body_text": text,
                "body_html": html,
                "ics": None
                if item.kind in mail.WITHOUT_CALENDAR
                else mail.calendar(item, origin, _now()),
            }
        else:
            if not item.phone:
                raise SendFailed("the patient has no phone number", permanent=True)
            values = {"recipient": item.phone, "body_text": mail.render_sms(item, origin)}
        # One statement on the batch's autocommit connection: no second connection and
        # no BEGIN and COMMIT around it.
        new_id = await conn.scalar(
            insert(DevMessage)
            .values(notification_id=item.id, channel=item.channel, **values)
            .returning(DevMessage.id)
        )
        return f"mailbox-{new_id}"


async def send_batch(
    transports: Transports,
    claims: Sequence[Claim],
    channel: str,
    *,
    later: Later,
    touch: Callable[[], Awaitable[None]],
) -> dict[str, int]:
    """Send the claimed rows of one channel that are still this batch's.

    Args:
        later: schedules a send job for retries and for rows that wait for the breaker.
        touch: called after each row (the job's heartbeat).

    Returns:
        How many rows were sent, failed (to be retried), dead, void, waiting or skipped.
    """
    settings, engine = transports.settings, transports.engine
    timeout = settings.notify_send_timeout_seconds
    lease = dt.timedelta(seconds=settings.notify_lease_seconds)
    # An attempt holds its row for the send timeout plus a lease: only a dead worker's
    # row is ever claimed again, never a slow send's.
    attempt_lease = dt.timedelta(seconds=timeout + settings.notify_lease_seconds)
    breaker = transports.breaker(channel)
    counts = dict.fromkeys(("sent", "failed", "dead", "void", "waiting", "skipped"), 0)

    # One connection for the batch, each statement its own transaction (autocommit): an
    # attempt's start and its `sent` are separate commits, a round trip each.
    async with engine.connect() as raw:
        conn = await raw.execution_options(isolation_level="AUTOCOMMIT")
        items = await with_links(transports.redis, await outbox.load_outgoing(conn, claims))
        counts["skipped"] = len(claims) - len(items)
        async with transports.session(channel, conn) as send:
            for index, item in enumerate(items):
                now = _now()
                if reason := item.moot(now):
                    await outbox.mark_void(conn, item, reason)
                    counts["void"] += 1
                    continue
                decision = await breaker.check(time.time()) if breaker else None
                if decision is not None and not decision.allowed:
                    assert decision.retry_at is not None
                    counts["waiting"] = await _wait_for_breaker(
                        conn, later, items[index:], decision.retry_at, lease
                    )
                    break
                if not await outbox.start_attempt(conn, item, now=now, lease=attempt_lease):
                    counts["skipped"] += 1
                    continue
                try:
                    async with asyncio.timeout(timeout):
                        provider_id = await send(item)
                except (SendFailed, TimeoutError) as exc:
                    failure = exc if isinstance(exc, SendFailed) else SendFailed("timed out")
                    dead = await _failed(conn, later, settings, item, failure, lease)
                    counts["dead" if dead else "failed"] += 1
                    if breaker is not None and not failure.permanent:
                        await breaker.failure(time.time(), str(failure))
                else:
                    await outbox.mark_sent(conn, item, provider_id, _now())
                    counts["sent"] += 1
                    if isinstance(item, AccountMessage):  # the token need not wait any more
                        await transports.redis.delete(link_key(item.ref))
                    if breaker is not None:
                        await breaker.success()
                await touch()
    return counts


async def with_links(redis: Any, items: list[Sendable]) -> list[Sendable]:
    """Account messages with their link, from the token kept in Redis while it lives
    (one round trip); one whose token is gone keeps no link and is voided as moot."""
    accounts = [item for item in items if isinstance(item, AccountMessage)]
    if not accounts:
        return items
    tokens = await redis.mget([link_key(item.ref) for item in accounts])
    found = {
        item.id: LINK_PATHS[item.kind] + (t.decode() if isinstance(t, bytes) else t)
        for item, t in zip(accounts, tokens, strict=True)
        if t is not None
    }
    return [
        dataclasses.replace(item, link=found.get(item.id))
        if isinstance(item, AccountMessage)
        else item
        for item in items
    ]


async def _failed(
    conn: AsyncConnection,
    later: Later,
    settings: Settings,
    item: Sendable,
    failure: SendFailed,
    lease: dt.timedelta,
) -> bool:
    """Record a failed attempt; schedule the retry or declare the row dead."""
    attempt = item.token + 1
    retry_at = None
    if not failure.permanent and attempt < settings.notify_max_attempts:
        delay = outbox.backoff(
            attempt, settings.notify_retry_base_seconds, settings.notify_retry_max_seconds
        )
        retry_at = _now() + dt.timedelta(seconds=delay)
    log.warning(
        "notification %d attempt %d failed (%s): %s",
        item.id,
        attempt,
        "retry at " + retry_at.isoformat() if retry_at else "dead",
        failure,
    )
    await outbox.mark_failed(conn, item, str(failure), retry_at=retry_at, lease=lease)
    if retry_at is not None:
        await later([Claim(item.id, attempt, item.channel)], retry_at)
    return retry_at is None


async def _wait_for_breaker(
    conn: AsyncConnection,
    later: Later,
    items: Sequence[Sendable],
    retry_at: float,
    lease: dt.timedelta,
) -> int:
    """The provider's breaker is open: hand the rest of the batch to a job that starts
    when the cooldown ends (with jitter, so waiting jobs do not all probe at once)."""
    when = dt.datetime.fromtimestamp(retry_at, dt.UTC) + dt.timedelta(
        seconds=random.uniform(0, 2)  # noqa: S311
    )
    kept = []
    for item in items:
        if await outbox.postpone(conn, item, when, lease):
            kept.append(Claim(item.id, item.token, item.channel))
    if kept:
        await later(kept, when)
    return len(kept)
