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
import contextlib
import dataclasses
import datetime as dt
import re
import time

import httpx
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from app.web.asgi import create_app
from conftest import ROOT, LiveServer
from e2e.conftest import Worker
from tests.integration.notification_world import world_with_contacts
from tests.integration.world import at, day_after_tomorrow, make_world
from tests.topology.bookings import post_booking
from tests.topology.live_page import RECONNECT_CODES, LivePage, slot_states
from tests.topology.sentinel import RedisSentinelSet
from tests.topology.worker import job_queue, wait_for_job

BEFORE, AFTER = 8, 8  # bookings before the kill and after the first whole one after it
PATIENTS = 60  # each may hold 3 future bookings with the doctor
GIVE_UP_SECONDS = 60  # a deadline, not a speed check
DAYS = 14  # the live page's days (its most)


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


async def effects_waiting(http: httpx.AsyncClient) -> float:
    """`medbook_after_commit_waiting` in the server's /metrics."""
    scrape = (await http.get("/metrics")).text
    found = re.search(r"^medbook_after_commit_waiting(?:\{[^}]*\})? (\S+)$", scrape, re.M)
    assert found, "medbook_after_commit_waiting not exported"
    return float(found.group(1))


def _slot(day: dt.date, n: int) -> dt.datetime:
    """The n-th 30-minute slot of the world's doctor's day (08:00-20:00)."""
    return at(day, 8 + n // 2, 30 * (n % 2))


async def test_a_worker_and_a_live_page_follow_a_redis_failover(db, session, settings, tmp_path):
    """`medbook serve` and `medbook worker` on the sentinels' URL, a live page open on the
    server, a job scheduled to run in the middle of the failover, and bookings made while
    the primary is killed (on days of their own, so that no later booking's invalidation
    hides a missed one): the page is closed with a code browsers reconnect on, gets its
    view again and then live updates, and shows every slot booked in the gap as booked
    (the missed invalidations were sent once Redis answered); the worker runs the
    scheduled job and sends every booking's confirmation. Times: test-artifacts/."""
    redis_set = RedisSentinelSet(tmp_path)
    # Rows claimed by a dispatch whose job was lost with the primary are claimed again
    # after the lease: short here, 300 s by default. A job the failover left "active" is
    # retried by the worker's next sweep: every 5 s here, 60 s by default.
    env = {
        "REDIS_URL": redis_set.url,
        "NOTIFY_DEV_MAILBOX": "1",
        "NOTIFY_LEASE_SECONDS": "5",
        "WORKER_SWEEP_SECONDS": "5",
    }
    server: LiveServer | None = None
    worker: Worker | None = None
    queue = job_queue(env)
    first_day = day_after_tomorrow()
    calm = iter([_slot(first_day + dt.timedelta(days=d), n) for d in range(2) for n in range(24)])
    # Round the days: a booking's invalidation forgets its whole day, so one made just as
    # Redis came back would hide the missed ones of its day.
    gap = iter(
        [_slot(first_day + dt.timedelta(days=d), n) for n in range(24) for d in range(2, DAYS)]
    )
    made: dict[dt.datetime, int] = {}  # slot -> appointment id
    in_gap: list[dt.datetime] = []
    try:
        contacts = [(f"p{i}@t.test", None, "email") for i in range(PATIENTS)]
        world = await world_with_contacts(session, settings.secret_key, contacts)
        server = await asyncio.to_thread(LiveServer, env=env)
        worker = await asyncio.to_thread(Worker, env)  # ready: it has run a job
        await queue.connect()
        path = f"/ws/live?view=slots&doctor_id={world.doctor_id}&date={first_day}&days={DAYS}"
        page = LivePage(server.url, path)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:

            async def book(start: dt.datetime) -> bool:
                """True when made (201); a 503 changed nothing."""
                patient = f"patient{len(made) % PATIENTS}"
                response = await post_booking(http, world, patient, start, f"pages-{start}")
                assert response.status_code in (201, 503), response.text
                if response.status_code == 201:
                    made[start] = response.json()["id"]
                return response.status_code == 201

            try:
                view = await page.open()
                assert all(slot_states(view).values())  # a free week
                for _ in range(BEFORE):
                    assert await book(next(calm))
                # A job due while the sentinels vote, replicated before the kill.
                await queue.enqueue(
                    "heartbeat", key="failover-scheduled", scheduled=int(time.time()) + 2
                )
                old_primary = redis_set.primary_port()
                redis_set.wait_for_replica()
                redis_set.kill_primary()
                killed = time.monotonic()
                while not (
                    (await http.get("/health/ready")).status_code == 200
                    and redis_set.primary_port() != old_primary
                ):
                    start = next(gap)
                    if await book(start):
                        in_gap.append(start)
                        if len(in_gap) == 1:  # kept for Redis, and shown to Prometheus
                            assert await effects_waiting(http) >= 1
                    assert time.monotonic() - killed < GIVE_UP_SECONDS, "Redis did not come back"
                    await asyncio.sleep(0.05)
                assert await book(next(calm))
                flowing = time.monotonic() - killed
                assert in_gap, "no booking was made while Redis was away"

                code = await page.closed(timeout=GIVE_UP_SECONDS)
                assert code in RECONNECT_CODES, code  # the browser comes back
                await page.open(timeout=GIVE_UP_SECONDS)  # the whole view again
                probe = next(calm)
                assert await book(probe)
                await page.wait_for_frame(lambda frame: probe.isoformat() in frame)
                live_again = time.monotonic() - killed
                assert page.slots[probe.isoformat()] is False

                # Booked while Redis was away: shown booked (resync view, or the resent
                # update), not free from the stale cache until its TTL.
                deadline = time.monotonic() + GIVE_UP_SECONDS
                while stale := [s for s in in_gap if page.slots[s.isoformat()] is not False]:
                    assert time.monotonic() < deadline, f"shown free after the failover: {stale}"
                    with contextlib.suppress(TimeoutError):
                        await page.next_frame(max(0.1, deadline - time.monotonic()))
                while await effects_waiting(http) > 0:  # all sent, and the gauge says so
                    assert time.monotonic() < deadline, "changes still wait for Redis"
                    await asyncio.sleep(0.1)
            finally:
                await page.close()

        job_done = await wait_for_job(queue, "failover-scheduled", GIVE_UP_SECONDS) - killed
        ids = list(made.values())
        # A deadline, not a speed check: the minute's cron finds what the nudges missed,
        # and a send job running at the kill stays "active" on the new primary until
        # SAQ's sweep (every 5 s here) finds its heartbeat (60 s) stale and retries it; its
        # rows' claim tokens make the retry send nothing twice.
        deadline = time.monotonic() + 300
        while True:
            rows = await session.execute(
                text(
                    "SELECT count(*) FILTER (WHERE status = 'sent'), count(*), "
                    "count(DISTINCT appointment_id) FROM notifications "
                    "WHERE appointment_id = ANY(:ids) AND kind = 'confirmation'"
                ),
                {"ids": ids},
            )
            sent, total, appointments = rows.one()
            await session.commit()
            if sent == total and appointments == len(ids):
                break
            assert time.monotonic() < deadline, (sent, total, appointments, len(ids))
            await asyncio.sleep(0.5)
        all_sent = time.monotonic() - killed
    finally:
        with contextlib.suppress(Exception):
            await queue.disconnect()
        if worker is not None:
            worker.stop()
        if server is not None:
            server.stop()
        redis_set.stop()

    rows = await session.execute(
        text("SELECT count(*) FROM appointments WHERE id = ANY(:ids) AND status = 'booked'"),
        {"ids": ids},
    )
    assert rows.scalar() == len(ids) == len(set(made))  # none lost, none twice
    report = ROOT / "test-artifacts" / "redis-failover-worker-pages.txt"
    report.write_text(
        f"Redis primary killed (sentinel down-after-milliseconds 1000) -> bookings flowing "
        f"with Redis again: {flowing:.2f} s; the open page reconnected, resynced and live "
        f"again: {live_again:.2f} s; the job scheduled for the failover ran: "
        f"{job_done:.2f} s; every confirmation sent: {all_sent:.2f} s. {len(in_gap)} "
        f"bookings made until then, all shown booked on the page after the failover\n"
    )
    print(report.read_text())
