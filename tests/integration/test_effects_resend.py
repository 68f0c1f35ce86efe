"""A committed change's cache invalidation and live update, when Redis is away at that
moment, are sent once Redis answers again (app/live/effects.py): a page that resyncs after
a Redis failover does not show a booked slot free from a stale cache entry."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

from redis.asyncio import Redis

from app.live.effects import AppointmentChange, Effects

DAY = dt.date(2030, 3, 4)
GIVE_UP_SECONDS = 30  # a deadline, not a speed check


async def test_effects_that_missed_redis_are_sent_once_it_is_back(own_redis):
    client = Redis.from_url(own_redis.url, socket_timeout=1, socket_connect_timeout=1)
    effects = Effects(client)
    # What a live-update publisher queues on the same pipeline, made visible afterwards.
    effects.publishers.append(
        lambda pipe, changes: pipe.rpush("published", *[c.appointment_id for c in changes])
    )
    cached, version = f"avail:7:{DAY}", f"availver:7:{DAY}"
    try:
        await client.set(cached, "stale slots")
        own_redis.stop()
        change = AppointmentChange(1, 7, 3, (DAY,), "booked")
        await effects.appointments_changed([change])  # committed: must not raise
        await effects.appointments_changed([AppointmentChange(2, 7, 3, (DAY,), "booked")])
        assert len(effects.missed) == 2

        own_redis.start()  # its append-only file still has the stale entry
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while effects.missed:
            assert time.monotonic() < deadline, "never resent"
            await asyncio.sleep(0.05)
        assert await client.get(cached) is None  # forgotten: the next read recomputes
        assert int(await client.get(version)) == 2  # each change bumped the day's version
        assert await client.lrange("published", 0, -1) == [b"1", b"2"]  # both, in order
    finally:
        await effects.stop()
        await client.aclose()


async def test_a_change_with_redis_up_leaves_nothing_to_resend(own_redis):
    client = Redis.from_url(own_redis.url, socket_timeout=1, socket_connect_timeout=1)
    effects = Effects(client)
    try:
        await effects.appointments_changed([AppointmentChange(1, 7, 3, (DAY,), "booked")])
        assert effects.missed == [] and int(await client.get(f"availver:7:{DAY}")) == 1
    finally:
        await effects.stop()
        await client.aclose()
