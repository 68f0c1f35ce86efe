"""A live page in a real browser, held through HAProxy (tests/topology/haproxy.py) on an
instance that a rolling restart stops: htmx-ext-ws reconnects through the proxy to the
other instance, and the view it is given shows what changed while it was away."""

from __future__ import annotations

import httpx
from playwright.sync_api import expect

from conftest import LiveServer
from e2e.conftest import live_page, mark_document, same_document, screenshot, wait_for_live
from e2e.test_live import LIVE_WAIT_MS, _in_thread, fresh_world, sign_in, slot
from tests.integration.world import at, day_after_tomorrow
from tests.topology.bookings import post_booking
from tests.topology.haproxy import BACKEND, HAProxy

# The browser waits this long before reconnecting (instead of the extension's random
# full-jitter delay of up to 1 s), so the booking below is made while it is away.
RECONNECT_DELAY_MS = 4000


def test_a_page_on_a_stopped_instance_reconnects_through_the_proxy_and_resyncs(browser, settings):
    world = fresh_world(settings, patients=2)
    servers: dict[str, LiveServer] = {}
    proxy = None
    try:
        servers["a"], servers["b"] = LiveServer(), LiveServer()
        proxy = HAProxy({name: server.port for name, server in servers.items()})
        proxy.command(f"set server {BACKEND}/b state maint")  # the page lands on a
        day = day_after_tomorrow()
        start = at(day, 11)
        viewer = live_page(browser)
        sign_in(viewer, proxy, "p0@t.test", f"/doctors/{world.doctor_id}/slots?date={day}")
        wait_for_live(viewer)  # the view came through a
        expect(slot(viewer, start)).to_have_attribute("data-available", "true")
        mark_document(viewer)
        viewer.evaluate(f"htmx.config.wsReconnectDelay = () => {RECONNECT_DELAY_MS}")

        proxy.enable("b")
        proxy.wait_until(lambda state: state["b"] == "UP")
        proxy.drain("a")
        servers.pop("a").stop()  # SIGTERM: the socket is closed with 1012
        wait_for_live(viewer, "closes")

        booked = _in_thread(lambda: _book(proxy.url, world, start))  # while the page is away
        assert booked.status_code == 201, booked.text
        assert booked.headers["X-Served-By"] == "b"

        wait_for_live(viewer, "opens", 2)  # reconnected, through the proxy, to b
        expect(slot(viewer, start)).to_have_attribute(
            "data-available", "false", timeout=LIVE_WAIT_MS
        )
        assert same_document(viewer)  # never reloaded: the socket's first frame resynced it
        screenshot(viewer, "live-after-instance-restart")
    finally:
        if proxy is not None:
            proxy.stop()
        for server in servers.values():
            server.stop()


async def _book(url: str, world, start) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        return await post_booking(http, world, "patient1", start, "while-away")
