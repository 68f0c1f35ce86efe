"""Live updates: channel names, publishing after commit, and the per-process socket hub.

Flow: a write commits, `Effects` calls `publish_changes`, which publishes ids (never patient
data) on Redis pub/sub through `broadcaster`, one channel per doctor-day and per
clinic-day. Every server process has one `Hub`: it holds one broadcaster subscription per
channel that any of its sockets watches, renders each event once per audience (the slot
grid for patients, the board for front desks, the day list for doctors) and hands the
HTML to every socket of that audience through a bounded queue.

Failure handling:
- A slow socket whose queue is full is closed (code 4000); the browser reconnects and the
  server sends the whole current view again, so nothing is lost and memory stays bounded.
- broadcaster swallows Redis disconnects (encode/broadcaster#144): its listener task just
  dies. A watchdog pings Redis every second and checks that task; on failure it closes
  every socket (code 1012) so browsers reconnect, and rebuilds the subscription once
  Redis answers again. Reconnecting clients get a full resync on connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from broadcaster import Broadcast
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.effects import AppointmentChange

log = logging.getLogger(__name__)

QUEUE_LIMIT = 64
WATCHDOG_SECONDS = 1.0
PING_TIMEOUT_SECONDS = 2.0
PING_FAILURES = 2
CLOSE_RESYNC = 4000  # our code: "you fell behind, reconnect and resync"
CLOSE_RESTART = 1012  # service restart: Redis went away


def doctor_channel(doctor_id: int, day: dt.date) -> str:
    return f"doctor:{doctor_id}:{day.isoformat()}"


def clinic_channel(clinic_id: int, day: dt.date) -> str:
    return f"clinic:{clinic_id}:{day.isoformat()}"


def records_channel(patient_id: int) -> str:
    """A patient's records: new uploads, for viewers allowed to read them."""
    return f"records:{patient_id}"


def record_messages(patient_id: int, record_id: int) -> list[tuple[str, dict[str, Any]]]:
    """A committed upload: ids only; each viewer fetches the list through its audited read."""
    return [(records_channel(patient_id), {"patient_id": patient_id, "record_id": record_id})]


def parse_channel(channel: str) -> tuple[str, int, dt.date]:
    kind, ident, day = channel.split(":")
    return kind, int(ident), dt.date.fromisoformat(day)


@dataclass(eq=False)  # identity semantics: each connection is its own set member
class LiveSocket:
    """One browser connection: what it watches and its bounded outbox."""

    audience: str
    channels: tuple[str, ...]
    queue: asyncio.Queue[str | int] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))

    def offer(self, html: str) -> bool:
        try:
            self.queue.put_nowait(html)
            return True
        except asyncio.QueueFull:
            return False

    def close(self, code: int) -> None:
        # Make room for the close marker: the socket is being dropped anyway.
        while self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(code)


Renderer = Callable[[str, str, dict[str, Any]], Awaitable[str]]


class Hub:
    """The process's fan-out point between Redis pub/sub and websockets."""

    def __init__(self, redis_url: str, redis: Redis, render: Renderer) -> None:
        self.redis_url = redis_url
        self.redis = redis
        self.render = render
        self.broadcast: Broadcast | None = None
        self.sockets: dict[str, set[LiveSocket]] = {}
        self.subscriptions: dict[str, asyncio.Task[None]] = {}
        self.healthy = False
        self.pushed = 0
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            await self._connect()
        except (RedisError, OSError) as exc:  # the watchdog connects once Redis answers
            log.warning("live updates start without Redis: %s", exc)
        self._watchdog = asyncio.create_task(self._watch(), name="realtime-watchdog")

    async def publish_all(self, messages: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Publish after a commit. A failure only delays screens (they resync on
        reconnect); it never fails the request that already committed."""
        try:
            for channel, payload in messages:
                await self.publish(channel, payload)
        except (RedisError, OSError) as exc:
            log.warning("live update not published (%s); screens resync on reconnect", exc)

    async def stop(self) -> None:
        if self._watchdog:
            self._watchdog.cancel()
        for socket in {s for group in self.sockets.values() for s in group}:
            socket.close(CLOSE_RESTART)
        await self._disconnect()

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        """Publish through Redis so every process (this one included) hears it."""
        if self.broadcast is None:
            raise RedisError("live updates are not connected")
        await self.broadcast.publish(channel, json.dumps(payload))

    def join(self, audience: str, channels: Sequence[str]) -> LiveSocket:
        socket = LiveSocket(audience, tuple(channels))
        for channel in channels:
            self.sockets.setdefault(channel, set()).add(socket)
            if channel not in self.subscriptions and self.healthy:
                self._subscribe(channel)
        return socket

    def leave(self, socket: LiveSocket) -> None:
        for channel in socket.channels:
            group = self.sockets.get(channel)
            if group is None:
                continue
            group.discard(socket)
            if not group:
                del self.sockets[channel]
                task = self.subscriptions.pop(channel, None)
                if task:
                    task.cancel()

    @property
    def open_sockets(self) -> int:
        return len({s for group in self.sockets.values() for s in group})

    def _subscribe(self, channel: str) -> None:
        self.subscriptions[channel] = asyncio.create_task(
            self._listen(channel), name=f"live:{channel}"
        )

    async def _listen(self, channel: str) -> None:
        assert self.broadcast is not None
        async with self.broadcast.subscribe(channel) as subscriber:
            async for event in subscriber:  # type: ignore[union-attr]
                if event is None:
                    return
                await self._fan_out(channel, json.loads(event.message))

    async def _fan_out(self, channel: str, payload: dict[str, Any]) -> None:
        by_audience: dict[str, list[LiveSocket]] = {}
        for socket in self.sockets.get(channel, ()):
            by_audience.setdefault(socket.audience, []).append(socket)
        for audience, sockets in by_audience.items():
            try:
                html = await self.render(channel, audience, payload)  # once per audience
            except Exception:
                log.exception("could not render %s for %s", channel, audience)
                continue
            for socket in sockets:
                if socket.offer(html):
                    self.pushed += 1
                else:
                    socket.close(CLOSE_RESYNC)

    async def _connect(self) -> None:
        broadcast = Broadcast(self.redis_url)
        await broadcast.connect()
        self.broadcast = broadcast
        self.healthy = True
        for channel in self.sockets:
            self._subscribe(channel)

    async def _disconnect(self) -> None:
        for task in self.subscriptions.values():
            task.cancel()
        self.subscriptions.clear()
        broadcast, self.broadcast = self.broadcast, None
        self.healthy = False
        if broadcast is not None:
            with contextlib.suppress(Exception):  # it may already be broken
                await broadcast.disconnect()

    def _listener_alive(self) -> bool:
        backend = getattr(self.broadcast, "_backend", None)
        task = getattr(backend, "_listener", None)
        return task is None or not task.done()

    async def _redis_ok(self) -> bool:
        try:
            async with asyncio.timeout(PING_TIMEOUT_SECONDS):
                await self.redis.ping()  # type: ignore[misc]
            return True
        except (RedisError, OSError, TimeoutError):
            return False

    async def _watch(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(WATCHDOG_SECONDS)
            ok = await self._redis_ok()
            # A dead listener is certain; a slow ping on a busy machine is not: wait for a
            # few in a row before dropping every socket.
            failures = 0 if ok else failures + 1
            lost = failures >= PING_FAILURES or (ok and not self._listener_alive())
            if self.healthy and lost:
                log.warning("live updates lost Redis: closing sockets so browsers resync")
                for socket in {s for group in self.sockets.values() for s in group}:
                    socket.close(CLOSE_RESTART)
                await self._disconnect()
            elif not self.healthy and ok:
                try:
                    await self._connect()
                    log.info("live updates reconnected to Redis")
                except (RedisError, OSError) as exc:
                    log.warning("live updates still waiting for Redis: %s", exc)


def change_messages(changes: Sequence[AppointmentChange]) -> list[tuple[str, dict[str, Any]]]:
    """The (channel, payload) pairs for committed appointment changes: ids only."""
    messages = []
    for change in changes:
        for day in change.days:
            payload = {
                "appointment_id": change.appointment_id,
                "doctor_id": change.doctor_id,
                "clinic_id": change.clinic_id,
                "day": day.isoformat(),
                "action": change.action,
            }
            messages.append((doctor_channel(change.doctor_id, day), payload))
            messages.append((clinic_channel(change.clinic_id, day), payload))
    return messages


def schedule_messages(doctor_days: Sequence[tuple[int, dt.date]]) -> list[tuple[str, dict]]:
    """Template edits and exceptions change a doctor's slots on these days."""
    return [
        (
            doctor_channel(doctor_id, day),
            {"doctor_id": doctor_id, "day": day.isoformat(), "action": "schedule"},
        )
        for doctor_id, day in doctor_days
    ]
