"""SAQ jobs that deliver the notification outbox (app/notifications/outbox.py).

`dispatch_notifications` (cron every minute, UTC; also enqueued right after a booking
commits) claims due rows with `FOR UPDATE SKIP LOCKED` and enqueues one
`send_notifications` job per batch of up to NOTIFY_BATCH_SIZE rows of one channel, keyed
by the claims it carries (review M-2: 10,000 due reminders are 200 enqueues, not 10,000).
A claim of a few rows (what one booking or cancel makes due) it sends itself: a job of
their own would cost more of the worker's CPU than sending them.

`send_notifications` sends its rows with app/notifications/delivery.py, which hands back
the rows to send later (a retry after backoff, or the rest of a batch while a provider's
breaker is open): they become one-row or one-batch jobs scheduled for that time.

Every job is idempotent: a row is sent only by the job whose fencing token matches
(`attempts`), and only while it is `queued`. If Redis loses the jobs, or a worker dies,
the rows' leases lapse and the next dispatch claims them again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from saq import Queue
from sqlalchemy.ext.asyncio import AsyncEngine

from app.notifications import delivery, outbox
from app.notifications.outbox import Claim
from app.settings import Settings

log = logging.getLogger(__name__)

CLAIM_CHUNK = 1000  # rows per claim transaction
MAX_PER_DISPATCH = 100_000  # a run stops here; the next minute takes the rest
# A claim of at most this many rows is sent by the dispatch job itself (at most this many
# sends' timeouts, well inside the job's 120 s); a larger one goes out in send jobs, which
# run side by side.
INLINE_SEND_MAX = 4
# How long a dispatch that sends inline keeps claiming what fell due meanwhile. Asks made
# while it runs carry its key and were dropped, so it claims again until nothing is left;
# after this long it stops, and the next second's ask (another key) starts a new job (the
# asks of its own second are covered by its claim after that second, dispatch_notifications).
INLINE_FOR_SECONDS = 5.0
ENQUEUE_CONCURRENCY = 20
TOUCH_EVERY_SECONDS = 5.0  # heartbeat of a long batch job


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


SendNow = Callable[[Sequence[Claim]], Awaitable[object]]


async def dispatch(
    engine: AsyncEngine,
    queue: Queue,
    settings: Settings,
    now: dt.datetime | None = None,
    *,
    send_now: SendNow | None = None,
) -> dict[str, int]:
    """Claim what is due (and what lost its job) and enqueue it. Rows are committed as
    `queued` before their jobs exist: if enqueueing fails they are claimed again after
    their lease, never lost.

    Args:
        send_now: sends a claim of at most INLINE_SEND_MAX rows here and now instead of
            enqueueing it (the dispatch job's own sender); then what fell due meanwhile is
            claimed again, for up to INLINE_FOR_SECONDS.
    """
    lease = dt.timedelta(seconds=settings.notify_lease_seconds)
    claimed = jobs = inline = 0
    started = time.monotonic()
    while claimed < MAX_PER_DISPATCH:
        # Each claim statement is atomic on its own (a row it claims is `queued` with a
        # lease, so the next cannot take it again): autocommit spares BEGIN and COMMIT.
        async with engine.connect() as raw:
            conn = await raw.execution_options(isolation_level="AUTOCOMMIT")
            # Lapsed leases are looked for once a run: a re-claim after an inline send
            # looks only for what fell due meanwhile.
            claims = await outbox.claim_due(
                conn, now=now or _now(), lease=lease, limit=CLAIM_CHUNK, lapsed=not inline
            )
        if not claims:
            break
        claimed += len(claims)
        if send_now is not None and len(claims) <= INLINE_SEND_MAX:
            try:
                await send_now(claims)
            except Exception as exc:
                # The database or Redis failed under the send: a send job (retried with
                # backoff, as ever) takes the rows the fencing still gives it.
                log.warning("sending %d notifications inline failed: %s", len(claims), exc)
                jobs += await enqueue_batches(queue, settings, claims)
                break
            inline += len(claims)
            if time.monotonic() - started < INLINE_FOR_SECONDS:
                continue
            break
        jobs += await enqueue_batches(queue, settings, claims)
        if len(claims) < CLAIM_CHUNK:
            break
    if claimed:
        log.info("dispatched %d notifications in %d jobs, %d sent inline", claimed, jobs, inline)
    return {"claimed": claimed, "jobs": jobs, "inline": inline}


async def dispatch_notifications(ctx: dict[str, Any]) -> dict[str, int]:
    """Cron, every minute (UTC), and on demand after bookings: send what is due."""
    settings: Settings = ctx["settings"]
    queue: Queue = ctx["worker"].queue

    async def send_now(claims: Sequence[Claim]) -> None:
        await _send_claims(ctx, queue, settings, claims)

    started = time.time()
    result = await dispatch(ctx["engine"], queue, settings, send_now=send_now)
    # While this job runs, SAQ drops every other ask of its second (the same key): one made
    # after the claims above would wait for the minute's cron. So a job asked for in second
    # S claims once more after S has ended (on any asker's clock, give or take the margin):
    # every ask it may have dropped committed its rows before that claim, and a later ask
    # has a key, and a job, of its own.
    second = asked_second(ctx["job"].key) if ctx.get("job") else None
    if second is not None and started < (last_ask := second + 1 + ASK_CLOCK_MARGIN_SECONDS):
        await asyncio.sleep(max(0.0, last_ask - time.time()))
        more = await dispatch(ctx["engine"], queue, settings, send_now=send_now)
        result = {name: result[name] + more[name] for name in result}
    return result


def asked_second(key: str) -> int | None:
    """The second a dispatch ask's key names (None for another key: the cron's runs)."""
    second = key.removeprefix(DISPATCH_KEY)
    return int(second) if second != key and second.isdigit() else None


DISPATCH_KEY = "notify:dispatch:"
# An ask's key names its second on the asking process's clock; the worker's clock may
# differ from it by this much (NTP keeps hosts well inside it).
ASK_CLOCK_MARGIN_SECONDS = 0.25


def dispatch_job() -> dict[str, Any]:
    """The ask for a dispatch now, as SAQ enqueue's arguments. Keyed by the second, so a
    burst of bookings is one dispatch."""
    return {
        "key": f"{DISPATCH_KEY}{int(time.time())}",
        "timeout": 120,
        "retries": 2,
        "retry_delay": 2.0,
        "ttl": 60,
    }


async def enqueue_dispatch(queue: Queue) -> None:
    """Ask for a dispatch now (after a dead-letter retry; a change to appointments asks
    on its after-commit pipeline instead, app/services.py)."""
    await queue.enqueue("dispatch_notifications", **dispatch_job())


# --- sending -------------------------------------------------------------------------------


async def startup(ctx: dict[str, Any]) -> None:
    """Worker startup: the transports (SMTP settings, the pooled SMS client, breakers)."""
    ctx["transports"] = delivery.Transports(ctx["settings"], ctx["engine"], ctx["redis"])


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
    """Send one batch of claimed rows of one channel (app/notifications/delivery.py)."""
    return await _send_claims(
        ctx,
        ctx["worker"].queue,
        ctx["settings"],
        [Claim(i, token, channel) for i, token in claims],
    )


async def _send_claims(
    ctx: dict[str, Any], queue: Queue, settings: Settings, claims: Sequence[Claim]
) -> dict[str, int]:
    """Send claimed rows, channel by channel, in this job."""

    async def later(claims: Sequence[Claim], when: dt.datetime) -> None:
        await _enqueue_later(queue, settings, claims, when)

    by_channel: dict[str, list[Claim]] = {}
    for claim in claims:
        by_channel.setdefault(claim.channel, []).append(claim)
    counts: dict[str, int] = {}
    touch = _Heartbeat(ctx).touch
    for channel, of_channel in by_channel.items():
        sent = await delivery.send_batch(
            ctx["transports"], of_channel, channel, later=later, touch=touch
        )
        counts = {k: counts.get(k, 0) + v for k, v in sent.items()}
    return counts


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
