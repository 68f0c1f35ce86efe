"""Websocket access (docs/security.md, "Websocket /ws/live"): real handshakes against a
server process, by channel kind x role, the Origin check, and the handshake rate limit.

A refused handshake is closed before it is accepted, which the client sees as HTTP 403.
"""

import asyncio
import re

import httpx
import pytest
import websockets

from conftest import LiveServer
from tests.integration.world import PASSWORD, day_after_tomorrow, make_world


@pytest.fixture
async def world(session, settings, redis):
    # `redis` empties the cache, so the server loads this test's users afresh.
    return await make_world(session, settings.secret_key, patients=2)


def ws_url(server: LiveServer, query: str) -> str:
    return server.url.replace("http://", "ws://") + "/ws/live?" + query


async def handshake(server, query, headers=None, origin="same"):
    """The open socket, or the HTTP status the handshake was refused with."""
    try:
        return await websockets.connect(
            ws_url(server, query),
            origin=server.url if origin == "same" else origin,
            additional_headers=headers or {},
            open_timeout=10,
        )
    except websockets.InvalidStatus as refused:
        return refused.response.status_code


async def admitted(server, query, headers=None, origin="same") -> bool:
    socket = await handshake(server, query, headers, origin)
    if isinstance(socket, int):
        assert socket == 403, socket  # refused in the handshake, never a 5xx
        return False
    await socket.close()
    return True


async def test_channels_by_role(world, live_server):
    day = day_after_tomorrow().isoformat()
    slots = f"view=slots&doctor_id={world.doctor_id}&date={day}"
    board = f"view=board&clinic_id={world.clinic_id}&date={day}"
    other_board = f"view=board&clinic_id={world.other_clinic_id}&date={day}"
    doctor_day = f"view=doctor_day&date={day}"
    records = f"view=records&patient_id={world.patients[0]}"
    names = ["anon", "patient0", "patient1", "doctor", "desk", "other_desk", "admin"]
    expected = {
        # channel: who is admitted (anon = no credentials at all)
        slots: set(names),  # free times are no one's secret: visitors watch them too
        board: {"desk", "admin"},
        other_board: {"other_desk", "admin"},
        doctor_day: {"doctor"},
        records: {"patient0"},  # doctors need care: test_records.py
        "view=my_appointments": {"patient0", "patient1"},  # each their own list
        "view=nonsense&date=" + day: set(),
    }
    found = {}
    for query in expected:
        for name in names:
            headers = None if name == "anon" else world.headers(name)
            found[(query, name)] = await admitted(live_server, query, headers)
    wrong = {cell: ok for cell, ok in found.items() if ok != (cell[1] in expected[cell[0]])}
    assert wrong == {}


async def test_the_board_carries_its_own_clinics_columns(world, live_server):
    day = day_after_tomorrow().isoformat()
    socket = await handshake(
        live_server, f"view=board&clinic_id={world.clinic_id}&date={day}", world.headers("desk")
    )
    assert not isinstance(socket, int)
    try:
        first = await asyncio.wait_for(socket.recv(), 10)  # the resync of the board
        assert "hx-swap-oob" in first and "Dr. NY" not in first
    finally:
        await socket.close()


async def test_a_foreign_origin_is_refused_even_with_a_valid_session(world, live_server):
    """Cross-site websocket hijacking: the browser attaches the session cookie to a
    handshake that another site's page opens; only the Origin header tells them apart."""
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        form = (await http.get("/login")).text
        token = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert token
        signed_in = await http.post(
            "/login",
            data={"email": "desk@t.test", "password": PASSWORD, "csrf_token": token.group(1)},
        )
        assert signed_in.status_code == 303
        cookie = f"medbook_session={http.cookies['medbook_session']}"
    query = f"view=board&clinic_id={world.clinic_id}&date={day_after_tomorrow().isoformat()}"
    headers = {"Cookie": cookie}
    assert await admitted(live_server, query, headers)  # the desk's own page
    assert not await admitted(live_server, query, headers, origin="https://evil.example")
    assert not await admitted(live_server, query, headers, origin=live_server.url + ".evil.example")
    assert not await admitted(live_server, query, headers, origin=None)  # no Origin at all
    # A bearer token is no ambient credential, but the Origin rule holds for it too.
    bearer = world.headers("desk")
    assert not await admitted(live_server, query, bearer, origin="https://evil.example")


async def test_handshakes_count_against_the_per_user_rate_limit(world):
    server = LiveServer(env={"RATE_LIMIT_USER_PER_MINUTE": "3"})
    try:
        query = f"view=slots&doctor_id={world.doctor_id}&date={day_after_tomorrow().isoformat()}"
        results = [await admitted(server, query, world.headers("patient0")) for _ in range(4)]
        assert results == [True, True, True, False]
        assert await admitted(server, query, world.headers("patient1"))  # per user
    finally:
        server.stop()
