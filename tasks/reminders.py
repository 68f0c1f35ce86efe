"""SAQ jobs that deliver the notification outbox (app/notifications/notifications.py).

`dispatch_notifications` (cron every minute, UTC; also enqueued right after a booking
commits) claims due rows with `FOR UPDATE SKIP LOCKED` and enqueues one
`send_notifications` job per batch of up to NOTIFY_BATCH_SIZE rows of one channel, keyed
by the claims it carries (review M-2: 10,000 due reminders are 200 enqueues, not 10,000).

`send_notifications` sends its rows one by one over one SMTP session (or the pooled SMS
client), each attempt under NOTIFY_SEND_TIMEOUT_SECONDS. A failed row is retried with
exponential backoff and jitter by a one-row job scheduled for its retry time; after
NOTIFY_MAX_ATTEMPTS it is `dead` (the undelivered page). While a provider's breaker is
open, the job re-schedules its remaining rows for the end of the cooldown instead.

Every job is idempotent: a row is sent only by the job whose fencing token matches
(`attempts`), and only while it is `queued`. If Redis loses the jobs, or a worker dies,
the rows' leases lapse and the next dispatch claims them again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from saq import Queue
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.notifications import mail, notifications, sms
from app.notifications.breaker import Breaker
from app.notifications.notifications import Claim, Outgoing, SendFailed
from app.settings import Settings
from db.models import DevMessage

log = logging.getLogger(__name__)

CLAIM_CHUNK = 1000  # rows per claim transaction
MAX_PER_DISPATCH = 100_000  # a run stops here; the next minute takes the rest
ENQUEUE_CONCURRENCY = 20
TOUCH_EVERY_SECONDS = 5.0  # heartbeat of a long batch job

Send = Callable[[Outgoing], Awaitable[str]]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- dispatching ---------------------------------------------------------------------------


def batch_key(claims: Sequence[Claim]) -> str:
    """The same claims always make the same key, so enqueueing them twice is one job."""
    digest = hashlib.sha1(  # noqa: S324 (a key, not security)
        ",".join(f"{c.id}.{c.token}" for c in claims).encode()
    ).hexdigest()[:20]
    return f"notify:{claims[0].id}:{digest}"


def send_job_options(settings: Settings, size: int) -> dict[str, Any]:
    timeout = settings.notify_send_timeout_seconds
    return {
        "timeout": int(timeout * size + 60),
        "heartbeat": int(max(60, 2 * timeout + 10)),
        "retries": 3,  # the job's own failures (database down); rows count their attempts
        "retry_delay": 5.0,
        "retry_backoff": 60.0,
        "ttl": 600,
    }


async def enqueue_batches(queue: Queue, settings: Settings, claims: Sequence[Claim]) -> int:
    """One send job per channel and batch; returns the number of jobs enqueued."""
    by_channel: dict[str, list[Claim]] = {}
    for claim in claims:
        by_channel.setdefault(claim.channel, []).append(claim)
    size = settings.notify_batch_size
    batches = [
        chunk[i : i + size] for chunk in by_channel.values() for i in range(0, len(chunk), size)
    ]
    gate = asyncio.Semaphore(ENQUEUE_CONCURRENCY)

    async def one(batch: list[Claim]) -> None:
        async with gate:
            await queue.enqueue(
                "send_notifications",
                claims=[[c.id, c.token] for c in batch],
                channel=batch[0].channel,
                key=batch_key(batch),
                **send_job_options(settings, len(batch)),
            )

    await asyncio.gather(*(one(b) for b in batches))
    return len(batches)


async def dispatch(
    engine: AsyncEngine, queue: Queue, settings: Settings, now: dt.datetime | None = None
) -> dict[str, int]:
    """Claim what is due (and what lost its job) and enqueue it. Rows are committed as
    `queued` before their jobs exist: if enqueueing fails they are claimed again after
    their lease, never lost."""
    lease = dt.timedelta(seconds=settings.notify_lease_seconds)
    claimed = jobs = 0
    while claimed < MAX_PER_DISPATCH:
        async with engine.begin() as conn:
            claims = await notifications.claim_due(
                conn, now=now or _now(), lease=lease, limit=CLAIM_CHUNK
            )
        if not claims:
            break
        claimed += len(claims)
        jobs += await enqueue_batches(queue, settings, claims)
        if len(claims) < CLAIM_CHUNK:
            break
    if claimed:
        log.info("dispatched %d notifications in %d jobs", claimed, jobs)
    return {"claimed": claimed, "jobs": jobs}


async def dispatch_notifications(ctx: dict[str, Any]) -> dict[str, int]:
    """Cron, every minute (UTC), and on demand after bookings: send what is due."""
    return await dispatch(ctx["engine"], ctx["worker"].queue, ctx["settings"])


async def enqueue_dispatch(queue: Queue) -> None:
    """Ask for a dispatch now (after a booking or a dead-letter retry). Keyed by the
    second, so a burst of bookings is one dispatch."""
    await queue.enqueue(
        "dispatch_notifications",
        key=f"notify:dispatch:{int(time.time())}",
        timeout=120,
        retries=2,
        retry_delay=2.0,
        ttl=60,
    )


# --- sending -------------------------------------------------------------------------------


class Transports:
    """The process's ways to send: SMTP, the SMS API (one pooled client), the dev mailbox."""

    def __init__(self, settings: Settings, engine: AsyncEngine, redis: Any) -> None:
        self.settings = settings
        self.engine = engine
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
    async def session(self, channel: str) -> AsyncIterator[Send]:
        origin, now = self.settings.public_origin, _now
        if channel == "email" and self.mailer is not None:
            sender = self.settings.smtp_from
            async with self.mailer.connection() as conn:

                async def send_email(item: Outgoing) -> str:
                    return await conn.send(
                        mail.build_email(item, sender=sender, origin=origin, now=now())
                    )

                yield send_email
        elif channel == "sms" and self.sms is not None and self.http is not None:
            provider, http = self.sms, self.http

            async def send_sms(item: Outgoing) -> str:
                body = mail.render_sms(item, origin)
                return await provider.send(http, notification_id=item.id, to=item.phone, body=body)

            yield send_sms
        elif self.settings.notify_dev_mailbox:

            async def to_mailbox(item: Outgoing) -> str:
                return await self._to_mailbox(item)

            yield to_mailbox
        else:
            variable = "SMTP_HOST" if channel == "email" else "SMS_API_URL"

            async def unconfigured(item: Outgoing) -> str:
                raise SendFailed(
                    f"no {channel} provider is configured ({variable})", permanent=True
                )

            yield unconfigured

    async def _to_mailbox(self, item: Outgoing) -> str:
        origin = self.settings.public_origin
        if item.channel == "email":
            if not item.email:
                raise SendFailed("the patient has no email address", permanent=True)
            subject, text, html = mail.render_text(item, origin)
            values: dict[str, Any] = {
                "recipient": item.email,
                "subject": subject,
                "body_text": text,
                "body_html": html,
                "ics": mail.calendar(item, origin, _now()),
            }
        else:
            if not item.phone:
                raise SendFailed("the patient has no phone number", permanent=True)
            values = {"recipient": item.phone, "body_text": mail.render_sms(item, origin)}
        async with self.engine.begin() as conn:
            new_id = await conn.scalar(
                insert(DevMessage)
                .values(notification_id=item.id, channel=item.channel, **values)
                .returning(DevMessage.id)
            )
        return f"mailbox-{new_id}"


async def startup(ctx: dict[str, Any]) -> None:
    """Worker startup: the transports (SMTP settings, the pooled SMS client, breakers)."""
    ctx["transports"] = Transports(ctx["settings"], ctx["engine"], ctx["redis"])


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["transports"].close()


class _Heartbeat:
    def __init__(self, ctx: dict[str, Any]) -> None:
        self.job = ctx.get("job")
        self.last = time.monotonic()

    async def touch(self) -> None:
        if self.job is not None and time.monotonic() - self.last > TOUCH_EVERY_SECONDS:
            self.last = time.monotonic()
            await self.job.update()


async def send_notifications(
    ctx: dict[str, Any], *, claims: list[list[int]], channel: str
) -> dict[str, int]:
    """Send one batch of claimed rows of one channel (see the module docstring)."""
    settings: Settings = ctx["settings"]
    engine: AsyncEngine = ctx["engine"]
    transports: Transports = ctx["transports"]
    queue: Queue = ctx["worker"].queue
    timeout = settings.notify_send_timeout_seconds
    lease = dt.timedelta(seconds=settings.notify_lease_seconds)
    # An attempt holds its row for the send timeout plus a lease: only a dead worker's
    # row is ever claimed again, never a slow send's.
    attempt_lease = dt.timedelta(seconds=timeout + settings.notify_lease_seconds)
    breaker = transports.breaker(channel)
    heartbeat = _Heartbeat(ctx)
    counts = dict.fromkeys(("sent", "failed", "dead", "void", "waiting", "skipped"), 0)

    # One connection for the batch, each statement its own transaction (autocommit): an
    # attempt's start and its `sent` are separate commits, a round trip each.
    async with engine.connect() as raw:
        conn = await raw.execution_options(isolation_level="AUTOCOMMIT")
        items = await notifications.load_outgoing(
            conn, [Claim(i, token, channel) for i, token in claims]
        )
        counts["skipped"] = len(claims) - len(items)
        async with transports.session(channel) as send:
            for index, item in enumerate(items):
                now = _now()
                if reason := item.moot(now):
                    await notifications.mark_void(conn, item, reason)
                    counts["void"] += 1
                    continue
                decision = await breaker.check(time.time()) if breaker else None
                if decision is not None and not decision.allowed:
                    assert decision.retry_at is not None
                    counts["waiting"] = await _wait_for_breaker(
                        conn, queue, settings, items[index:], decision.retry_at, lease
                    )
                    break
                if not await notifications.start_attempt(conn, item, now=now, lease=attempt_lease):
                    counts["skipped"] += 1
                    continue
                try:
                    async with asyncio.timeout(timeout):
                        provider_id = await send(item)
                except (SendFailed, TimeoutError) as exc:
                    failure = exc if isinstance(exc, SendFailed) else SendFailed("timed out")
                    dead = await _failed(conn, queue, settings, item, failure, lease)
                    counts["dead" if dead else "failed"] += 1
                    if breaker is not None and not failure.permanent:
                        await breaker.failure(time.time(), str(failure))
                else:
                    await notifications.mark_sent(conn, item, provider_id, _now())
                    counts["sent"] += 1
                    if breaker is not None:
                        await breaker.success()
                await heartbeat.touch()
    return counts


async def _failed(
    conn: AsyncConnection,
    queue: Queue,
    settings: Settings,
    item: Outgoing,
    failure: SendFailed,
    lease: dt.timedelta,
) -> bool:
    """Record a failed attempt; schedule the retry or declare the row dead."""
    attempt = item.token + 1
    retry_at = None
    if not failure.permanent and attempt < settings.notify_max_attempts:
        delay = notifications.backoff(
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
    await notifications.mark_failed(conn, item, str(failure), retry_at=retry_at, lease=lease)
    if retry_at is not None:
        await _enqueue_later(queue, settings, [Claim(item.id, attempt, item.channel)], retry_at)
    return retry_at is None


async def _wait_for_breaker(
    conn: AsyncConnection,
    queue: Queue,
    settings: Settings,
    items: Sequence[Outgoing],
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
        if await notifications.postpone(conn, item, when, lease):
            kept.append(Claim(item.id, item.token, item.channel))
    if kept:
        await _enqueue_later(queue, settings, kept, when)
    return len(kept)


async def _enqueue_later(
    queue: Queue, settings: Settings, claims: Sequence[Claim], when: dt.datetime
) -> None:
    """A send job scheduled for `when`. If Redis loses it, the lease brings the rows back."""
    try:
        await queue.enqueue(
            "send_notifications",
            claims=[[c.id, c.token] for c in claims],
            channel=claims[0].channel,
            key=f"{batch_key(claims)}@{int(when.timestamp())}",
            scheduled=when.timestamp(),  # SAQ compares scores with a float clock
            **send_job_options(settings, len(claims)),
        )
    except Exception as exc:  # Redis trouble: the lease covers it
        log.warning("could not schedule notifications %s: %s", [c.id for c in claims], exc)
