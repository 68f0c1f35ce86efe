"""The live-update hub against real Redis: cross-process delivery, render once per audience,
bounded queues, subscribing before the view, and recovery when Redis goes away (but not
when only the event loop is busy)."""

import asyncio
import contextlib
import datetime as dt
import time

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app import i18n
from app.live import realtime
from app.live.effects import AppointmentChange
from app.live.realtime import (
    CLOSE_RESTART,
    CLOSE_RESYNC,
    QUEUE_LIMIT,
    ConfirmedRedisBackend,
    Hub,
    change_messages,
    channel_prefix,
    doctor_channel,
)
from tests.integration.world import day_after_tomorrow, make_world
from tests.processes import kill_process, start_process

DAY = dt.date(2030, 1, 7)


class Renders:
    def __init__(self):
        self.calls = []
        self._rendered = asyncio.Event()

    async def __call__(self, channel, audience, payload):
        self.calls.append((channel, audience))
        self._rendered.set()
        return f"<div>{audience}:{payload.get('appointment_id')}</div>"

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        """Until `count` events were rendered (each is offered to its sockets right after)."""
        async with asyncio.timeout(timeout):
            while len(self.calls) < count:
                self._rendered.clear()
                await self._rendered.wait()


class RendersInLanguage(Renders):
    """Renders that note the language the hub set and say a word in it."""

    async def __call__(self, channel, audience, payload):
        self.calls.append((channel, audience, i18n.current()))
        return f"<div>{audience}:{payload.get('appointment_id')}:{i18n.gettext('taken')}</div>"


async def next_item(socket, timeout=3.0):
    return await asyncio.wait_for(socket.queue.get(), timeout)


@contextlib.asynccontextmanager
async def viewer_and_writer(settings, renders):
    """Two hubs on one Redis, as two server processes: one with sockets, one publishing."""
    viewer_redis, writer_redis = (
        Redis.from_url(settings.redis_url),
        Redis.from_url(settings.redis_url),
    )
    viewer, writer = (
        Hub(settings.redis_url, viewer_redis, renders),
        Hub(settings.redis_url, writer_redis, Renders()),
    )
    await viewer.start()
    await writer.start()
    try:
        yield viewer, writer
    finally:
        await viewer.stop()
        await writer.stop()
        await viewer_redis.aclose()
        await writer_redis.aclose()


async def test_a_change_reaches_sockets_of_another_process_rendered_once_per_audience(settings):
    renders = Renders()
    async with viewer_and_writer(settings, renders) as (viewer, writer):
        channel = doctor_channel(7, DAY)
        patients = [viewer.join("slots", [channel]) for _ in range(25)]
        doctor = viewer.join("doctor_day", [channel])
        for socket in [*patients, doctor]:
            assert await viewer.subscribed(socket, 5)
        change = AppointmentChange(41, 7, 3, (DAY,), "booked")
        await writer.publish_all(change_messages([change]))  # doctor + clinic channels
        got = [await next_item(s) for s in patients]
        assert got == ["<div>slots:41</div>"] * 25
        assert await next_item(doctor) == "<div>doctor_day:41</div>"
        assert sorted(renders.calls) == [(channel, "doctor_day"), (channel, "slots")]


async def test_an_event_is_rendered_once_per_audience_and_language(settings):
    """Forty sockets of one audience in two languages: two renders, each in its language,
    and every socket gets its own language's fragment."""
    renders = RendersInLanguage()
    async with viewer_and_writer(settings, renders) as (viewer, writer):
        channel = doctor_channel(8, DAY)
        english = [viewer.join("slots", [channel], "en") for _ in range(20)]
        german = [viewer.join("slots", [channel], "de") for _ in range(20)]
        for socket in [*english, *german]:
            assert await viewer.subscribed(socket, 5)
        await writer.publish_all(change_messages([AppointmentChange(42, 8, 3, (DAY,), "booked")]))
        assert [await next_item(s) for s in english] == ["<div>slots:42:taken</div>"] * 20
        assert [await next_item(s) for s in german] == ["<div>slots:42:vergeben</div>"] * 20
        assert sorted(renders.calls) == [(channel, "slots", "de"), (channel, "slots", "en")]


class GatedRenders(Renders):
    """Renders that wait for `gate` before the first one ends: events published meanwhile
    queue up behind it, as they do behind a render that waits for the database."""

    def __init__(self):
        super().__init__()
        self.gate = asyncio.Event()

    async def __call__(self, channel, audience, payload):
        html = await super().__call__(channel, audience, payload)
        await self.gate.wait()
        return f"{html[:-6]}:{payload.get('action')}</div>"


async def test_events_that_queued_behind_a_render_are_rendered_once_per_view(settings):
    """A desk's bulk update publishes an event per appointment: those that arrive while the
    channel's last event is still rendering make one render of the view (the state as of
    now holds them all), not one each; an event that reshapes the view (new visit types)
    keeps a render of its own; the socket gets every view's latest."""
    renders = GatedRenders()
    async with viewer_and_writer(settings, renders) as (viewer, writer):
        channel = doctor_channel(9, DAY)
        socket = viewer.join("slots", [channel])
        assert await viewer.subscribed(socket, 5)
        await writer.publish(channel, {"appointment_id": 1, "action": "booked"})
        await renders.wait_for(1)  # rendering, held at the gate
        for n in range(2, 12):
            await writer.publish(channel, {"appointment_id": n, "action": "cancelled"})
        await writer.publish(channel, {"action": "visit_types"})
        await writer.publish(channel, {"appointment_id": 12, "action": "checked_in"})
        await asyncio.sleep(0.3)  # every event has reached the viewer's subscription
        renders.gate.set()
        got = [await next_item(socket) for _ in range(3)]
        assert got == [
            "<div>slots:1:booked</div>",
            "<div>slots:None:visit_types</div>",
            "<div>slots:12:checked_in</div>",
        ]
        await asyncio.sleep(0.2)
        assert socket.queue.empty() and len(renders.calls) == 3
        # Later events are rendered as they come again.
        await writer.publish(channel, {"appointment_id": 13, "action": "booked"})
        assert await next_item(socket) == "<div>slots:13:booked</div>"


def test_a_view_key_ignores_which_appointment_changed_and_how():
    assert realtime.view_key({"appointment_id": 1, "action": "booked", "day": "x"}) == (
        realtime.view_key({"appointment_id": 2, "action": "cancelled", "day": "x"})
    )
    assert realtime.view_key({"action": "schedule", "day": "x"}) != (
        realtime.view_key({"action": "visit_types", "day": "x"})
    )
    assert realtime.view_key({"doctor_id": 1}) != realtime.view_key({"doctor_id": 2})


async def wait_until_unsubscribed(client: Redis, channel: str, seconds: float = 5) -> bool:
    prefixed = channel_prefix(client) + channel
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if (await client.pubsub_numsub(prefixed))[0][1] == 0:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_a_slow_socket_is_told_to_resync_instead_of_growing(settings):
    client = Redis.from_url(settings.redis_url)
    renders = Renders()
    hub = Hub(settings.redis_url, client, renders)
    await hub.start()
    try:
        channel = doctor_channel(8, DAY)
        slow = hub.join("slots", [channel])
        assert await hub.subscribed(slow, 5)
        for n in range(QUEUE_LIMIT + 5):  # nobody drains this socket
            # Each a view of its own (`view_key`), so that none is coalesced with another.
            await hub.publish(channel, {"appointment_id": n, "view": n})
        await renders.wait_for(QUEUE_LIMIT + 1)  # the one that found its queue full
        assert await wait_until_unsubscribed(client, channel)
        items = []
        while not slow.queue.empty():
            items.append(slow.queue.get_nowait())
        assert len(items) <= QUEUE_LIMIT
        assert items[-1] == CLOSE_RESYNC
        # The hub forgot it at once: its subscription is gone and the later events were
        # not rendered (a socket still joined while its close frame waited behind unread
        # fragments kept its subscription for as long as the client stayed connected).
        assert hub.open_sockets == 0 and channel not in hub.sockets
        assert len(renders.calls) == QUEUE_LIMIT + 1
    finally:
        await hub.stop()
        await client.aclose()


async def test_losing_redis_closes_sockets_and_the_hub_recovers(own_redis):
    own = own_redis
    client = Redis.from_url(own.url, socket_timeout=1, socket_connect_timeout=1)
    hub = Hub(own.url, client, Renders())
    await hub.start()
    try:
        channel = doctor_channel(9, DAY)
        socket = hub.join("slots", [channel])
        assert await hub.subscribed(socket, 5)
        own.stop()
        assert await next_item(socket, timeout=10) == CLOSE_RESTART  # browsers will reconnect
        hub.leave(socket)
        own.start()
        again = hub.join("slots", [channel])
        assert await hub.subscribed(again, 30)  # once the watchdog has reconnected by itself
        assert hub.healthy
        await hub.publish(channel, {"appointment_id": 5})
        assert await next_item(again) == "<div>slots:5</div>"
    finally:
        await hub.stop()
        await client.aclose()


async def test_open_sockets_counts_each_socket_once_until_it_leaves(settings):
    """The metrics read it after every request: a socket watching several channels counts
    once, and leaving twice (a stuck socket is dropped, then its handler ends) once."""
    client = Redis.from_url(settings.redis_url)
    hub = Hub(settings.redis_url, client, Renders())  # not started: joins, no subscriptions
    try:
        week = hub.join("slots", [doctor_channel(8, DAY + dt.timedelta(days=i)) for i in range(7)])
        day = hub.join("slots", [doctor_channel(8, DAY)])
        assert hub.open_sockets == 2
        hub.leave(week)
        hub.leave(week)
        assert hub.open_sockets == 1
        assert set(hub.sockets) == {doctor_channel(8, DAY)}
        hub.leave(day)
        assert hub.open_sockets == 0
        assert hub.sockets == {}
    finally:
        await client.aclose()


def test_the_resync_close_code_is_one_htmx_ext_ws_reconnects_on():
    # static/vendor/htmx-ext-ws-2.0.4.min.js: `[1006,1011,1012,1013].indexOf(e.code)>=0`
    assert CLOSE_RESYNC in (1006, 1011, 1012, 1013)
    assert CLOSE_RESTART in (1006, 1011, 1012, 1013)


async def test_a_socket_is_subscribed_in_redis_before_it_is_given_its_view(settings):
    """`subscribed` returns only once Redis itself counts the subscription, so an event
    published right after (by anyone) reaches the socket: none falls between view and feed."""
    client, publisher = Redis.from_url(settings.redis_url), Redis.from_url(settings.redis_url)
    hub = Hub(settings.redis_url, client, Renders())
    await hub.start()
    try:
        for n in range(20):  # fresh channels: each one a first subscription of this process
            socket = hub.join("slots", [doctor_channel(100 + n, DAY)])
            assert await hub.subscribed(socket, 5)
            receivers = await publisher.publish(
                hub.prefix + doctor_channel(100 + n, DAY), f'{{"appointment_id": {n}}}'
            )
            assert receivers == 1  # Redis had processed our SUBSCRIBE already
            assert await next_item(socket) == f"<div>slots:{n}</div>"
    finally:
        await hub.stop()
        await client.aclose()
        await publisher.aclose()


async def test_a_socket_joining_while_redis_is_away_waits_for_the_new_subscription(own_redis):
    own = own_redis
    client = Redis.from_url(own.url, socket_timeout=1, socket_connect_timeout=1)
    hub = Hub(own.url, client, Renders())
    await hub.start()
    publisher = None
    try:
        channel = doctor_channel(10, DAY)
        first = hub.join("slots", [channel])
        assert await hub.subscribed(first, 5)
        own.stop()
        assert await next_item(first, timeout=10) == CLOSE_RESTART
        hub.leave(first)
        # The browser reconnects before the hub has Redis back: no view for it yet.
        early = hub.join("slots", [channel])
        assert not await hub.subscribed(early, 0.5)
        waiting = asyncio.create_task(hub.subscribed(early, 30))
        own.start()
        assert await waiting  # once the watchdog has subscribed again...
        publisher = Redis.from_url(own.url)
        assert await publisher.publish(hub.prefix + channel, '{"appointment_id": 6}') == 1
        assert await next_item(early) == "<div>slots:6</div>"  # ...nothing is missed
    finally:
        await hub.stop()
        await client.aclose()
        if publisher is not None:
            await publisher.aclose()


async def test_a_busy_event_loop_is_not_taken_for_a_lost_redis(settings, monkeypatch):
    """Pings time out when this process's loop is blocked; Redis is fine, so the sockets
    stay open (seen under overload: every socket closed for a slow loop)."""
    monkeypatch.setattr(realtime, "WATCHDOG_SECONDS", 0.2)
    monkeypatch.setattr(realtime, "PING_TIMEOUT_SECONDS", 0.5)
    monkeypatch.setattr(realtime, "LOOP_LAG_LIMIT", 0.125)
    client = Redis.from_url(settings.redis_url)
    hub = Hub(settings.redis_url, client, Renders())
    await hub.start()
    try:
        channel = doctor_channel(11, DAY)
        socket = hub.join("slots", [channel])
        assert await hub.subscribed(socket, 5)
        for _ in range(12):  # every loop turn takes longer than a ping may
            time.sleep(0.6)
            await asyncio.sleep(0)
        assert socket.queue.empty() and hub.healthy  # nobody was told Redis is gone...
        assert hub.busy_pings >= realtime.PING_FAILURES  # ...though pings did time out
        await hub.publish(channel, {"appointment_id": 12})
        assert await next_item(socket) == "<div>slots:12</div>"
    finally:
        await hub.stop()
        await client.aclose()


async def test_broadcaster_connects_over_a_unix_socket(tmp_path):
    import subprocess

    from conftest import _redis_binary

    path = tmp_path / "redis.sock"
    url = f"unix://{path}?db=0"
    client = Redis.from_url(url)
    hub = Hub(url, client, Renders())
    server = start_process(
        [_redis_binary(), "--port", "0", "--unixsocket", str(path), "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    try:
        # Ready when it answers: the socket file exists a moment before Redis accepts on it
        # (a busy machine's CI run once started the hub in that moment: connection refused).
        for _ in range(200):
            try:
                if await client.ping():
                    break
            except (OSError, RedisError):
                await asyncio.sleep(0.05)
        await hub.start()
        assert hub.healthy
        backend = hub.broadcast._backend
        assert isinstance(backend, ConfirmedRedisBackend)
        kwargs = backend._conn.connection_pool.connection_kwargs
        assert kwargs["path"] == str(path)
        assert kwargs["socket_connect_timeout"] == realtime.CONNECT_TIMEOUT_SECONDS
        assert kwargs.get("socket_timeout") is None  # pub/sub sits idle: no read timeout
        socket = hub.join("slots", [doctor_channel(12, DAY)])
        assert await hub.subscribed(socket, 5)
        await hub.publish(doctor_channel(12, DAY), {"appointment_id": 13})
        assert await next_item(socket) == "<div>slots:13</div>"
    finally:
        await hub.stop()
        await client.aclose()
        kill_process(server)


async def test_hubs_on_different_redis_databases_do_not_hear_each_other(settings):
    """Redis pub/sub ignores the database number; test runs (and apps) sharing a server on
    different databases must not redraw each other's screens."""
    here = Redis.from_url(settings.redis_url)
    other_db = (here.connection_pool.connection_kwargs.get("db", 0) + 1) % 16
    there = Redis(
        **{**here.connection_pool.connection_kwargs, "db": other_db}  # same server
    )
    ours, theirs = (
        Hub(settings.redis_url, here, Renders()),
        Hub(settings.redis_url, there, Renders()),
    )
    await ours.start()
    await theirs.start()
    try:
        channel = doctor_channel(14, DAY)
        socket = ours.join("slots", [channel])
        assert await ours.subscribed(socket, 5)
        await theirs.publish(channel, {"appointment_id": 1})  # another database's event
        await ours.publish(channel, {"appointment_id": 2})
        assert await next_item(socket) == "<div>slots:2</div>"  # ours came, theirs never did
    finally:
        await ours.stop()
        await theirs.stop()
        await here.aclose()
        await there.aclose()


@pytest.fixture
async def board_world(client, session, settings):
    return await make_world(session, settings.secret_key, patients=1)


async def test_a_schedule_change_reaches_the_open_desk_board(board_world, live_server):
    """Board rows come from weekly hours: a template edit redraws the doctor's column live."""
    import httpx
    import websockets

    day = day_after_tomorrow()
    url = live_server.url.replace("http", "ws") + (
        f"/ws/live?view=board&clinic_id={board_world.clinic_id}&date={day.isoformat()}"
    )
    column = f'id="column-{board_world.doctor_id}-{day.isoformat()}"'
    async with websockets.connect(
        url, origin=live_server.url, additional_headers=board_world.headers("desk"), open_timeout=5
    ) as board:
        view = await asyncio.wait_for(board.recv(), 5)  # the whole board, first
        assert column in view and view.count("<time") == 24  # 08:00-20:00, 30 minutes
        async with httpx.AsyncClient(base_url=live_server.url) as http:
            changed = await http.put(
                f"/api/doctors/{board_world.doctor_id}/schedule",
                json={
                    "ranges": [
                        {"weekday": w, "start": "08:00", "end": "09:00", "slot_minutes": 30}
                        for w in range(7)
                    ]
                },
                headers=board_world.headers("admin"),
            )
        assert changed.status_code == 200, changed.text
        update = await asyncio.wait_for(board.recv(), 5)
        assert column in update and "hx-swap-oob" in update
        assert update.count("<time") == 2  # 08:00 and 08:30: the new hours
