"""Several `medbook serve` instances behind HAProxy (issue 21), no stickiness: a booking
handled by one instance updates a live page held open through the proxy on another, and
a rolling restart (drain an instance in HAProxy, stop it gracefully, start it again,
enable it; then the next) under load loses no request the proxy accepted."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections import Counter
from collections.abc import Iterator
from unittest import mock

import httpx
import pytest
import websockets
from sqlalchemy import text

from conftest import LiveServer
from tests.integration.world import at, day_after_tomorrow, make_world
from tests.topology.bookings import post_booking
from tests.topology.haproxy import HAProxy
from tests.topology.live_page import RECONNECT_CODES, LivePage, slot_states


def instance(port: int | None = None) -> LiveServer:
    """`medbook serve` (one process), on `port` when given (a restart keeps its port)."""
    if port is None:
        return LiveServer()
    with mock.patch("conftest.free_port", return_value=port):
        return LiveServer()


@pytest.fixture
def cluster(db, redis) -> Iterator[tuple[HAProxy, dict[str, LiveServer]]]:
    servers: dict[str, LiveServer] = {}
    proxy = None
    try:
        servers["a"], servers["b"] = instance(), instance()
        proxy = HAProxy({name: server.port for name, server in servers.items()})
        yield proxy, servers
    finally:
        if proxy is not None:
            proxy.stop()
        for server in servers.values():
            server.stop()


async def test_a_booking_on_one_instance_updates_a_page_held_on_another(cluster, session, settings):
    proxy, servers = cluster
    world = await make_world(session, settings.secret_key, patients=1)
    day = day_after_tomorrow()
    query = f"view=slots&doctor_id={world.doctor_id}&date={day.isoformat()}"
    async with websockets.connect(
        proxy.url.replace("http://", "ws://") + "/ws/live?" + query,
        origin=proxy.url,
        open_timeout=10,
    ) as page:
        holder = page.response.headers["X-Served-By"]
        first = await asyncio.wait_for(page.recv(), 10)  # the whole view
        assert "<time" in first or "slot" in first
        other = servers["b" if holder == "a" else "a"]
        async with httpx.AsyncClient(base_url=other.url) as http:
            booked = await post_booking(http, world, "patient0", at(day, 9))
        assert booked.status_code == 201, booked.text
        update = await asyncio.wait_for(page.recv(), 10)
        assert "hx-swap-oob" in update


async def test_a_page_held_on_a_restarted_instance_reconnects_elsewhere_and_resyncs(
    cluster, session, settings
):
    """The page's instance is drained and stopped (SIGTERM): the socket is closed with a
    code htmx-ext-ws reconnects on; a booking made while the page is away is in the view
    the page gets when it reconnects through the proxy (to the other instance), and once
    the instance is back a booking handled by it reaches the page live."""
    proxy, servers = cluster
    world = await make_world(session, settings.secret_key, patients=2)
    day = day_after_tomorrow()
    missed, later = at(day, 9).isoformat(), at(day, 10).isoformat()
    page = LivePage(proxy.url, f"/ws/live?view=slots&doctor_id={world.doctor_id}&date={day}")
    try:
        view = await page.open()
        assert slot_states(view)[missed] and slot_states(view)[later]
        holder = page.served_by
        other = "b" if holder == "a" else "a"

        proxy.drain(holder)  # no new connections; the page's tunnel stays
        old = servers[holder]
        stopping = asyncio.create_task(asyncio.to_thread(old.stop))
        code = await page.closed()
        await stopping
        assert code in RECONNECT_CODES, code  # the browser will come back

        async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as http:
            booked = await post_booking(http, world, "patient0", at(day, 9), "while-away")
        assert booked.status_code == 201, booked.text
        assert booked.headers["X-Served-By"] == other

        view = await page.open()  # the reconnect: the whole view first
        assert page.served_by == other and page.connects == 2
        assert slot_states(view)[missed] is False  # made while away: resynced
        assert slot_states(view)[later] is True

        servers[holder] = await asyncio.to_thread(instance, old.port)
        proxy.enable(holder)
        await asyncio.to_thread(proxy.wait_until, lambda state: state[holder] == "UP")
        async with httpx.AsyncClient(base_url=servers[holder].url, timeout=30) as http:
            booked = await post_booking(http, world, "patient1", at(day, 10), "after-restart")
        assert booked.status_code == 201, booked.text
        update = await page.wait_for_frame(lambda frame: later in frame)
        assert slot_states(update)[later] is False  # live again, from the restarted one
    finally:
        await page.close()


async def test_a_rolling_restart_under_load_loses_no_accepted_request(cluster, session, settings):
    proxy, servers = cluster
    world = await make_world(session, settings.secret_key, patients=40)
    first_day = day_after_tomorrow()
    outcomes: Counter[str] = Counter()
    served_by: Counter[str] = Counter()
    booked: list[int] = []
    restarting = True

    async def load(worker: int, http: httpx.AsyncClient) -> None:
        n = mine = 0
        while restarting:
            n += 1
            i = worker * 1000 + n
            try:
                if n % 5 == 0 and mine < 25:  # a booking of a slot of its own
                    k = worker * 25 + mine
                    mine += 1
                    start = at(first_day + dt.timedelta(days=k // 12), 8 + k % 12)
                    patient = f"patient{k % 40}"
                    response = await post_booking(http, world, patient, start, f"rolling-{k}")
                    if response.status_code == 201:
                        booked.append(response.json()["id"])
                else:
                    response = await http.get(
                        "/api/appointments/available-slots",
                        params={"doctor_id": world.doctor_id, "date": first_day.isoformat()},
                        headers=world.headers(f"patient{i % 40}"),
                    )
                outcomes[str(response.status_code)] += 1
                served_by[response.headers.get("X-Served-By", "?")] += 1
            except httpx.HTTPError as exc:
                outcomes[type(exc).__name__] += 1
            await asyncio.sleep(0.01)

    async def roll() -> None:
        for name in ("a", "b"):
            await asyncio.sleep(1)
            proxy.drain(name)
            for _ in range(100):  # the requests under way finish
                if proxy.current_sessions(name) == 0:
                    break
                await asyncio.sleep(0.1)
            old = servers[name]
            await asyncio.to_thread(old.stop)  # SIGTERM: uvicorn finishes what it has
            servers[name] = await asyncio.to_thread(instance, old.port)
            proxy.enable(name)
            await asyncio.to_thread(proxy.wait_until, lambda state, n=name: state[n] == "UP")

    # A live page of the first day held through the proxy the whole time, doing what
    # htmx-ext-ws does: reconnect when closed with one of its codes (each instance's stop
    # closes it), taking the new whole view.
    page = LivePage(proxy.url, f"/ws/live?view=slots&doctor_id={world.doctor_id}&date={first_day}")
    close_codes: list[int] = []

    async def keep_page() -> None:
        await page.open()
        while restarting:
            code = await page.closed(timeout=600)  # held until its instance stops
            close_codes.append(code)
            if code not in RECONNECT_CODES:
                return
            await page.open()

    async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as http:
        workers = [asyncio.create_task(load(w, http)) for w in range(4)]
        keeper = asyncio.create_task(keep_page())
        try:
            await roll()
            await asyncio.sleep(1)
        finally:
            restarting = False
            await asyncio.gather(*workers)
        try:
            # Both instances were stopped once: the page was closed (only with codes the
            # browser reconnects on) and is held again, and live: a booking reaches it.
            assert not keeper.done(), close_codes
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            assert len(close_codes) >= 1 and set(close_codes) <= set(RECONNECT_CODES)
            assert page.connects == len(close_codes) + 1, (page.connects, close_codes)
            extra = at(first_day, 8, 30).isoformat()
            response = await post_booking(http, world, "patient39", at(first_day, 8, 30), "x")
            assert response.status_code == 201, response.text
            booked.append(response.json()["id"])
            update = await page.wait_for_frame(lambda frame: extra in frame)
            assert slot_states(update)[extra] is False
        finally:
            keeper.cancel()
            await page.close()

    assert set(outcomes) <= {"200", "201"}, outcomes  # no error, no 502/503, no reset
    assert sum(outcomes.values()) > 100, outcomes
    assert served_by["a"] > 0 and served_by["b"] > 0, served_by
    rows = await session.execute(
        text("SELECT count(*) FROM appointments WHERE id = ANY(:ids) AND status = 'booked'"),
        {"ids": booked},
    )
    assert rows.scalar() == len(booked) > 0
