"""Redis with Sentinel (issue 21): one primary, one replica and three sentinels, all local.
The primary is killed while bookings run; the app follows the primary the sentinels
promote (`REDIS_URL=redis+sentinel://…`), no booking is lost or made twice, and the time
from the kill to the next booking made is measured (test-artifacts/redis-failover.txt).

While the sentinels vote, requests that need Redis answer 503 with Retry-After, having
changed nothing; the client here does what htmx pages and API clients are told to do:
retry, with the same Idempotency-Key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time

from litestar.testing import AsyncTestClient
from sqlalchemy import text

from app.web.asgi import create_app
from conftest import ROOT
from tests.integration.world import at, day_after_tomorrow, make_world
from tests.topology.bookings import post_booking
from tests.topology.sentinel import RedisSentinelSet

BEFORE, AFTER = 8, 8  # bookings before the kill and after the first whole one after it
PATIENTS = 60  # each may hold 3 future bookings with the doctor
GIVE_UP_SECONDS = 60  # a deadline, not a speed check


async def test_bookings_go_on_across_a_redis_primary_failover(db, session, settings, tmp_path):
    redis_set = RedisSentinelSet(tmp_path)
    made: list[int] = []
    degraded: list[int] = []  # made while the app's Redis was away: no live update
    refused: list[int] = []  # answered 503: nothing done, the client may retry
    try:
        failover = dataclasses.replace(settings, redis_url=redis_set.url)
        world = await make_world(session, settings.secret_key, patients=PATIENTS)
        first_day = day_after_tomorrow()

        async def book(client: AsyncTestClient, i: int) -> bool:
            """Book slot i; True when it was made and the app's own Redis client answers
            (`/health/ready` pings it): its after-commit effects (the slot cache, the live
            update) had Redis. False when refused, or made while Redis was away."""
            start = at(first_day + dt.timedelta(days=i // 12), 8 + i % 12)
            patient = f"patient{i % PATIENTS}"
            response = await post_booking(client, world, patient, start, f"failover-{i}")
            # Made (the booking never waits for Redis), or refused whole with Retry-After.
            assert response.status_code in (201, 503), response.text
            if response.status_code == 503:
                assert int(response.headers["retry-after"]) > 0
                refused.append(i)
                return False
            made.append(i)
            if (await client.get("/health/ready")).status_code == 200:
                return True
            degraded.append(i)
            return False

        async with AsyncTestClient(app=create_app(failover), timeout=30) as client:
            for i in range(BEFORE):
                assert await book(client, i)
            old_primary = redis_set.primary_port()
            redis_set.kill_primary()
            killed = time.monotonic()
            i = BEFORE
            while not await book(client, i) or redis_set.primary_port() == old_primary:
                i += 1
                assert time.monotonic() - killed < GIVE_UP_SECONDS, "Redis did not come back"
                await asyncio.sleep(0.05)
            resumed = time.monotonic()
            for j in range(i + 1, i + 1 + AFTER):
                assert await book(client, j)
    finally:
        redis_set.stop()

    seconds = resumed - killed
    report = ROOT / "test-artifacts" / "redis-failover.txt"
    report.parent.mkdir(exist_ok=True)
    report.write_text(
        f"Redis primary killed -> the app on the promoted replica, bookings with their live "
        f"updates again: {seconds:.2f} s "
        f"(sentinel down-after-milliseconds 1000); meanwhile {len(degraded)} bookings "
        f"were made without their live update, {len(refused)} refused with 503; none lost\n"
    )
    print(report.read_text())
    rows = await session.execute(
        text(
            "SELECT count(*), count(DISTINCT starts_at) FROM appointments "
            "WHERE doctor_id = :d AND status = 'booked'"
        ),
        {"d": world.doctor_id},
    )
    assert tuple(rows.one()) == (len(made), len(made))  # none lost, none twice
    assert len(made) == len(set(made))
