"""Admission control in a real server: with two requests in flight and a 20 ms wait, a
burst gets fast 503s with Retry-After (from the protocol, before any routing), the
admitted requests finish normally, probes and websockets keep working, and no booking is
half-done."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import httpx
import websockets

from conftest import LiveServer
from tests.integration.world import at, day_after_tomorrow, make_world

BURST = 10
IN_FLIGHT = 2


async def server_and_locker(
    stack: contextlib.AsyncExitStack, env: dict[str, str], database_url: str
) -> tuple[httpx.AsyncClient, asyncpg.Connection]:
    """A server started with `env` and a client for it, and a connection of our own to
    hold locks with; `stack` stops and closes them however the test ends."""
    locker = await asyncpg.connect(database_url)
    stack.push_async_callback(locker.close)
    server = LiveServer(env=env)
    stack.callback(server.stop)
    client = await stack.enter_async_context(httpx.AsyncClient(base_url=server.url, timeout=60))
    return client, locker


def shed_count(scrape: str, prefix: str = "medbook_admission_shed_total{") -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in scrape.splitlines() if line.startswith(prefix)
    )


async def test_a_burst_beyond_the_limit_is_shed_fast_and_the_admitted_complete(
    settings, session, redis, database_url, tmp_path
):
    world = await make_world(session, settings.secret_key, patients=BURST)
    await session.close()
    day = day_after_tomorrow()
    env = {
        "ADMISSION_MAX_IN_FLIGHT": str(IN_FLIGHT),
        "ADMISSION_MAX_QUEUE": "3",
        "ADMISSION_MAX_WAIT_MS": "20",
        "ADMISSION_LAG_TARGET_MS": "10",  # the lag timer runs (two is also its floor)
        "DB_STATEMENT_TIMEOUT_MS": "60000",  # the admitted wait for the lock, not a timeout
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    async with contextlib.AsyncExitStack() as stack:
        client, locker = await server_and_locker(stack, env, database_url)

        async def book(i: int, patient: int | None = None) -> httpx.Response:
            start = at(day, 8 + i // 2, 30 * (i % 2)).isoformat()
            return await client.post(
                "/api/appointments",
                json={"doctor_id": world.doctor_id, "start": start},
                headers=world.headers(f"patient{i if patient is None else patient}"),
            )

        # Every booking writes appointments: under this lock the admitted ones stay in
        # flight until it is released, so the limit is what answers the rest. Reads pass
        # (EXCLUSIVE, not ACCESS EXCLUSIVE): a websocket's first view reads appointments.
        lock = locker.transaction()
        await lock.start()
        await locker.execute("LOCK TABLE appointments IN EXCLUSIVE MODE")
        pending = {asyncio.create_task(book(i)) for i in range(BURST)}
        shed: list[httpx.Response] = []
        async with asyncio.timeout(60):  # a hang is a failure, not a wait
            while len(pending) > IN_FLIGHT:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                shed += [task.result() for task in done]
        # The admitted two are still held by the lock while every other answer is
        # in: the 503s came back before any accepted booking finished.
        assert all(not task.done() for task in pending)
        assert [r.status_code for r in shed] == [503] * (BURST - IN_FLIGHT)
        assert {r.headers["retry-after"] for r in shed} == {"1"}
        assert {r.json()["detail"] for r in shed} == {"the server is busy; try again in a moment"}
        # Probes bypass admission; a page request gets the busy page in words.
        assert (await client.get("/health/live")).status_code == 200
        page = await client.get("/login", headers={"Accept": "text/html"})
        assert page.status_code == 503 and page.headers["retry-after"] == "1"
        assert "medbook is busy" in page.text and "try again" in page.text
        assert "text/html" in page.headers["content-type"]
        # Made at start-up with the headers every answer of the app carries.
        assert page.headers["x-frame-options"] == "DENY"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        # A live page's websocket opens and gets its first view while every slot is taken.
        board = f"/ws/live?view=board&clinic_id={world.clinic_id}&date={day.isoformat()}"
        async with websockets.connect(
            str(client.base_url).replace("http", "ws").rstrip("/") + board,
            origin=str(client.base_url).rstrip("/"),
            additional_headers=world.headers("desk"),
            open_timeout=30,
        ) as socket:
            view = await asyncio.wait_for(socket.recv(), 30)
        assert f'id="column-{world.doctor_id}-{day.isoformat()}"' in view

        await lock.rollback()
        admitted = await asyncio.gather(*pending)
        assert [r.status_code for r in admitted] == [201] * IN_FLIGHT
        metrics = (await client.get("/metrics")).text
        assert shed_count(metrics) == BURST - IN_FLIGHT + 1  # and the page
        # Every one refused at the protocol, before routing (its route label says so).
        at_protocol = 'medbook_http_requests_total{method="POST",route="(shed)",status="503"}'
        assert shed_count(metrics, at_protocol) == BURST - IN_FLIGHT
        assert shed_count(metrics, "medbook_event_loop_lag_seconds_count") > 0
        # Once the burst is over, requests are admitted again.
        after = await book(BURST, patient=0)
        assert after.status_code == 201
    # Nothing half-done: exactly the bookings answered 201 exist.
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM appointments") == IN_FLIGHT + 1
    finally:
        await conn.close()
