"""In-process CPU of medbook's Redis calls, in alternating blocks (bench/README.md, cpu17c).

    REDIS_URL=redis://127.0.0.1:6379/11 SECRET_KEY=... DATABASE_URL=... \\
        PYTHONPATH=$PWD .venv/bin/python bench/redis_micro.py check|ask

`check`: µs of CPU per GET with redis-py's per-command connection check (a read with a
zero timeout) and with `app.redis.ReadyPool`'s. `ask`: ms of CPU per change of the
after-commit Redis work of a booking: the invalidation pipeline, then SAQ's enqueue of
the dispatch ask (base), or the pipeline carrying the ask (`MedbookQueue.enqueue_on`).
The database named by REDIS_URL is flushed.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redis.asyncio import Redis
from redis.asyncio.connection import ConnectionPool

from app.live import realtime
from app.live.effects import AppointmentChange
from app.redis import ReadyPool, create_redis
from app.scheduling import slots
from app.settings import get_settings
from tasks.queue import create_queue
from tasks.reminders import dispatch_job

Variant = Callable[[], Awaitable[None]]


async def alternate(variants: dict[str, Variant], count: int, blocks: int) -> None:
    """CPU per call of each variant, in blocks of `count` calls, the order swapped every
    other block."""
    for run in variants.values():
        for _ in range(count // 5):
            await run()
    results: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for block in range(blocks):
        for name in names if block % 2 == 0 else names[::-1]:
            started = time.process_time()
            for _ in range(count):
                await variants[name]()
            results[name].append((time.process_time() - started) / count)
    for name, values in results.items():
        print(name, " ".join(f"{v * 1e6:.1f}" for v in values), "µs per call")


async def check() -> None:
    redis = Redis.from_url(get_settings().redis_url, health_check_interval=30)
    await redis.set("k", "v" * 100)
    redis_pys = ConnectionPool.ensure_connection

    def with_check(ensure: Callable) -> Variant:
        async def get() -> None:
            ConnectionPool.ensure_connection = ensure  # type: ignore[method-assign]
            await redis.get("k")

        return get

    try:
        await alternate(
            {"redis-py": with_check(redis_pys), "ReadyPool": with_check(_ready)}, 3000, 10
        )
    finally:
        ConnectionPool.ensure_connection = redis_pys  # type: ignore[method-assign]
        await redis.aclose()


async def _ready(pool: ConnectionPool, connection) -> None:  # type: ignore[no-untyped-def]
    """ReadyPool's check on redis-py's pool (its fallback, redis-py's own, as there)."""
    await ReadyPool.ensure_connection(pool, connection)  # type: ignore[arg-type]


async def ask() -> None:
    settings = get_settings()
    redis, queue = create_redis(settings), create_queue(settings)
    await queue.connect()
    await redis.flushdb()
    day = dt.date(2030, 1, 2)
    messages = realtime.change_messages([AppointmentChange(1, 2, 3, (day,), "booked", 4)])

    async def base() -> None:
        async with redis.pipeline(transaction=False) as pipe:
            slots.queue_invalidation(pipe, [(2, day)])
            realtime.queue_messages(pipe, "bench:", messages)
            await pipe.execute()
        await queue.enqueue("dispatch_notifications", **dispatch_job())

    async def piped() -> None:
        async with redis.pipeline(transaction=False) as pipe:
            slots.queue_invalidation(pipe, [(2, day)])
            realtime.queue_messages(pipe, "bench:", messages)
            queue.enqueue_on(pipe, "dispatch_notifications", **dispatch_job())
            await pipe.execute()

    try:
        await alternate({"own round trip": base, "on the pipeline": piped}, 1000, 8)
    finally:
        await queue.disconnect()
        await redis.aclose()


if __name__ == "__main__":
    uvloop.run({"check": check, "ask": ask}[sys.argv[1]]())
