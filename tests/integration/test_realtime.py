"""The live-update hub against real Redis: cross-process delivery, render once per audience,
bounded queues, and recovery when Redis goes away."""

import asyncio
import datetime as dt

from redis.asyncio import Redis

from app.effects import AppointmentChange
from app.realtime import (
    CLOSE_RESTART,
    CLOSE_RESYNC,
    QUEUE_LIMIT,
    Hub,
    change_messages,
    doctor_channel,
)
from conftest import OwnRedis

DAY = dt.date(2030, 1, 7)


class Renders:
    def __init__(self):
        self.calls = []

    async def __call__(self, channel, audience, payload):
        self.calls.append((channel, audience))
        return f"<div>{audience}:{payload.get('appointment_id')}</div>"


async def next_item(socket, timeout=3.0):
    return await asyncio.wait_for(socket.queue.get(), timeout)


async def test_a_change_reaches_sockets_of_another_process_rendered_once_per_audience(settings):
    renders = Renders()
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
        channel = doctor_channel(7, DAY)
        patients = [viewer.join("slots", [channel]) for _ in range(25)]
        doctor = viewer.join("doctor_day", [channel])
        await asyncio.sleep(0.3)  # subscriptions registered with Redis
        change = AppointmentChange(41, 7, 3, (DAY,), "booked")
        await writer.publish_all(change_messages([change]))  # doctor + clinic channels
        got = [await next_item(s) for s in patients]
        assert got == ["<div>slots:41</div>"] * 25
        assert await next_item(doctor) == "<div>doctor_day:41</div>"
        assert sorted(renders.calls) == [(channel, "doctor_day"), (channel, "slots")]
    finally:
        await viewer.stop()
        await writer.stop()
        await viewer_redis.aclose()
        await writer_redis.aclose()


async def test_a_slow_socket_is_told_to_resync_instead_of_growing(settings):
    client = Redis.from_url(settings.redis_url)
    hub = Hub(settings.redis_url, client, Renders())
    await hub.start()
    try:
        channel = doctor_channel(8, DAY)
        slow = hub.join("slots", [channel])
        await asyncio.sleep(0.3)
        for n in range(QUEUE_LIMIT + 5):  # nobody drains this socket
            await hub.publish(channel, {"appointment_id": n})
        await asyncio.sleep(0.5)
        items = []
        while not slow.queue.empty():
            items.append(slow.queue.get_nowait())
        assert len(items) <= QUEUE_LIMIT
        assert items[-1] == CLOSE_RESYNC
    finally:
        await hub.stop()
        await client.aclose()


async def test_losing_redis_closes_sockets_and_the_hub_recovers(tmp_path):
    own = OwnRedis(tmp_path)
    own.start()
    client = Redis.from_url(own.url, socket_timeout=1, socket_connect_timeout=1)
    hub = Hub(own.url, client, Renders())
    await hub.start()
    try:
        channel = doctor_channel(9, DAY)
        socket = hub.join("slots", [channel])
        await asyncio.sleep(0.3)
        own.stop()
        assert await next_item(socket, timeout=10) == CLOSE_RESTART  # browsers will reconnect
        hub.leave(socket)
        own.start()
        for _ in range(100):  # the watchdog reconnects by itself
            if hub.healthy:
                break
            await asyncio.sleep(0.1)
        assert hub.healthy
        again = hub.join("slots", [channel])
        await asyncio.sleep(0.3)
        await hub.publish(channel, {"appointment_id": 5})
        assert await next_item(again) == "<div>slots:5</div>"
    finally:
        await hub.stop()
        await client.aclose()
        own.stop()
