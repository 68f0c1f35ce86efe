"""Live updates: channel names, publishing after commit, and the per-process socket hub.

Flow: a write commits, `Effects` calls `publish_changes`, which publishes ids (never patient
data) on Redis pub/sub through `broadcaster`, one channel per doctor-day and per
clinic-day. Every server process has one `Hub`: it holds one broadcaster subscription per
channel that any of its sockets watches, renders each event once per audience (the slot
grid for patients, the board for front desks, the day list for doctors) and language
(each socket's, app/i18n.py) and hands the HTML to every socket of that audience and
language through a bounded queue.

Failure handling:
- A slow socket whose queue is full is closed with 1013 ("try again later", one of the
  codes htmx-ext-ws reconnects on: 1006, 1011, 1012, 1013); the browser reconnects and the
  server sends the whole current view again, so nothing is lost and memory stays bounded.
- A client that stops reading altogether blocks the send itself (the queue is never read
  again): a send that takes SEND_TIMEOUT_SECONDS drops the socket from the hub at once and
  sends 1013 if the close frame gets out within CLOSE_GRACE_SECONDS (app/routes/live.py).
- A socket gets its view only once Redis has confirmed the subscription of every channel
  it watches (`Hub.subscribed`): an event is then either in the view or delivered after it.
- broadcaster swallows Redis disconnects (encode/broadcaster#144): its listener task just
  dies. A watchdog pings Redis every second and checks that task; on failure it closes
  every socket (code 1012) so browsers reconnect, and rebuilds the subscriptions once
  Redis answers again. A socket that reconnects meanwhile waits for them (or is told to
  try again later). A ping that times out while the event loop itself was late is no
  evidence against Redis (an overloaded process is not a dead Redis) and is not counted.
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

from broadcaster import Broadcast, Event
from broadcaster._backends.redis import RedisBackend
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app import i18n
from app.live.effects import AppointmentChange
from app.redis import redis_from_url

log = logging.getLogger(__name__)

QUEUE_LIMIT = 64
WATCHDOG_SECONDS = 1.0
PING_TIMEOUT_SECONDS = 2.0
PING_FAILURES = 2
# A ping timeout counts against Redis only if the loop was never this late meanwhile: a
# ping needs about four loop turns, so a loop this slow can time it out by itself.
LOOP_LAG_LIMIT = PING_TIMEOUT_SECONDS / 4
LAG_TICK_SECONDS = 0.1
SUBSCRIBE_TIMEOUT_SECONDS = 5.0  # Redis confirms a SUBSCRIBE within a round trip
CONNECT_TIMEOUT_SECONDS = 2.0
# A send that cannot finish in this long means the client stopped reading (its buffers and
# ours are full): the socket is dropped, and told 1013 if the close frame still gets out.
SEND_TIMEOUT_SECONDS = 10.0
CLOSE_GRACE_SECONDS = 10.0
CLOSE_RESYNC = 1013  # try again later: "you fell behind (or we are not ready), resync"
CLOSE_RESTART = 1012  # service restart: Redis went away
CLIENT_LEFT = 0  # not a close code: the client has gone, the socket's pump just ends


def doctor_channel(doctor_id: int, day: dt.date) -> str:
    return f"doctor:{doctor_id}:{day.isoformat()}"


def clinic_channel(clinic_id: int, day: dt.date) -> str:
    return f"clinic:{clinic_id}:{day.isoformat()}"


def records_channel(patient_id: int) -> str:
    """A patient's records: new uploads, for viewers allowed to read them."""
    return f"records:{patient_id}"


def patient_channel(patient_id: int) -> str:
    """A patient's own appointments ("my appointments"), for that patient only."""
    return f"patient:{patient_id}"


def waitlist_channel(clinic_id: int) -> str:
    """A clinic's waitlist (the desk's waitlist page), for that clinic's staff only."""
    return f"waitlist:{clinic_id}"


def waitlist_messages(clinic_ids: Sequence[int]) -> list[tuple[str, dict[str, Any]]]:
    """A committed change to these clinics' waitlists: ids only."""
    return [(waitlist_channel(c), {"clinic_id": c}) for c in sorted(set(clinic_ids))]


def record_messages(patient_id: int, record_id: int) -> list[tuple[str, dict[str, Any]]]:
    """A committed upload: ids only; each viewer fetches the list through its audited read."""
    return [(records_channel(patient_id), {"patient_id": patient_id, "record_id": record_id})]


def channel_prefix(redis: Redis) -> str:
    """What the hub puts before a channel name on the wire. Redis pub/sub ignores the
    database number: apps (and test runs) sharing a server on different databases would
    hear each other's events without it."""
    return f"db{redis.connection_pool.connection_kwargs.get('db', 0)}:"


def queue_messages(
    pipe: Pipeline, prefix: str, messages: Sequence[tuple[str, dict[str, Any]]]
) -> None:
    """Queue live-update messages on a pipeline: what a process without a socket hub (the
    worker, making waitlist offers) publishes, the same as a hub does."""
    for channel, payload in messages:
        pipe.publish(prefix + channel, json.dumps(payload))


def parse_channel(channel: str) -> tuple[str, int, dt.date]:
    kind, ident, day = channel.split(":")
    return kind, int(ident), dt.date.fromisoformat(day)


@dataclass(eq=False)  # identity semantics: each connection is its own set member
class LiveSocket:
    """One browser connection: what it watches and its bounded outbox."""

    audience: str
    channels: tuple[str, ...]
    language: str = i18n.SOURCE_LANGUAGE  # its fragments are rendered in this language
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


class ConfirmedRedisBackend(RedisBackend):
    """broadcaster's Redis backend, built from any REDIS_URL (`redis://`, `rediss://`,
    `unix://`, `redis+sentinel://`: app/redis.py), whose `subscribe` returns only once
    Redis has confirmed it.

    Redis delivers a message to a subscriber only if its SUBSCRIBE was processed before the
    PUBLISH; redis-py returns as soon as the command is written. Waiting for the
    confirmation lets a socket render its view knowing every later event will reach it.
    Subscribe and unsubscribe are serialised so they reach Redis in the order called.
    """

    def __init__(self, url: str) -> None:
        # broadcaster builds its client with Redis.from_url, which knows no Sentinel URL:
        # its client (never connected) is replaced by one of ours. A connect timeout,
        # never a read timeout: a pub/sub connection sits idle while nothing changes (a
        # socket_connect_timeout in the URL itself still wins, as from_url lets it).
        super().__init__("redis://")
        self._conn = redis_from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS)
        self._pubsub = self._conn.pubsub()
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._order = asyncio.Lock()

    async def subscribe(self, channel: str) -> None:
        async with self._order:
            confirmed = asyncio.get_running_loop().create_future()
            self._confirmations[channel] = confirmed
            try:
                await self._pubsub.subscribe(channel)
                # Only now: redis-py's listen() ends at once while it has no channels yet,
                # which is how broadcaster's own order loses every message with redis-py 8.
                self._ready.set()
                async with asyncio.timeout(SUBSCRIBE_TIMEOUT_SECONDS):
                    await confirmed
            finally:
                self._confirmations.pop(channel, None)

    async def unsubscribe(self, channel: str) -> None:
        async with self._order:
            await self._pubsub.unsubscribe(channel)

    async def _pubsub_listener(self) -> None:
        while True:
            await self._ready.wait()
            async for message in self._pubsub.listen():
                kind = message["type"]
                if kind == "message":
                    event = Event(
                        channel=message["channel"].decode(), message=message["data"].decode()
                    )
                    await self._queue.put(event)
                elif kind == "subscribe":
                    waiter = self._confirmations.get(message["channel"].decode())
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)
            self._ready.clear()  # no channels left: wait for the next subscribe


# Actions that change the shape of what is shown (the slot page's chooser, the board's
# time grid), not only which slots are taken: an event with one is rendered on its own.
RESHAPING_ACTIONS = frozenset({"visit_types", "schedule"})


def view_key(payload: dict[str, Any]) -> str:
    """What of an event decides its fragments: the payload without the appointment's id,
    and with any appointment action as one (each renderer draws the state as of its
    render: which appointment changed, and how, is not in the fragment)."""
    action = payload.get("action")
    kept = {k: v for k, v in payload.items() if k not in ("appointment_id", "action")}
    kept["action"] = action if action in RESHAPING_ACTIONS else ""
    return json.dumps(kept, sort_keys=True)


def _queued_too(subscriber: Any, first: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """`first` and every event already waiting in the subscription's queue (broadcaster's
    `Subscriber._queue`), one payload per distinct view (`view_key`), the last of each
    kept; and whether the subscription ended among them."""
    latest = {view_key(first): first}
    queue: asyncio.Queue[Event | None] = subscriber._queue
    while True:
        try:
            event = queue.get_nowait()
        except asyncio.QueueEmpty:
            return list(latest.values()), False
        if event is None:
            return list(latest.values()), True
        payload = json.loads(event.message)
        key = view_key(payload)
        latest.pop(key, None)  # a view renders where its latest event stands
        latest[key] = payload


def _note_end(task: asyncio.Task[None]) -> None:
    """A subscription ends when its sockets leave or Redis goes; the watchdog handles the
    latter, so an error here (unsubscribing from a broken connection) is only noted."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.debug("%s ended: %r", task.get_name(), error)


@dataclass(eq=False)
class _Subscription:
    """The hub's one subscription to a channel, and whether Redis has confirmed it."""

    task: asyncio.Task[None]
    ready: bool = False


class LoopLag:
    """How late this event loop runs timers: a tick that notes its own delay."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._last = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._last = asyncio.get_running_loop().time()
        self._task = asyncio.create_task(self._tick(), name="realtime-loop-lag")

    def stop(self) -> None:
        if self._task:
            self._task.cancel()

    def reset(self) -> None:
        self.worst = 0.0

    def since_reset(self) -> float:
        """The worst delay since `reset`, counting a tick that is late right now."""
        overdue = asyncio.get_running_loop().time() - self._last - LAG_TICK_SECONDS
        return max(self.worst, overdue)

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(LAG_TICK_SECONDS)
            now = loop.time()
            self.worst = max(self.worst, now - self._last - LAG_TICK_SECONDS)
            self._last = now


class Hub:
    """The process's fan-out point between Redis pub/sub and websockets."""

    def __init__(self, redis_url: str, redis: Redis, render: Renderer) -> None:
        self.redis_url = redis_url
        self.redis = redis
        self.render = render
        self.prefix = channel_prefix(redis)
        self.broadcast: Broadcast | None = None
        self.sockets: dict[str, set[LiveSocket]] = {}
        # Every socket joined and not yet left, whatever it watches: `open_sockets` is read
        # after every request (app/web/metrics.py), so it must not walk the channels.
        self._joined: set[LiveSocket] = set()
        self.subscriptions: dict[str, _Subscription] = {}
        self.healthy = False
        self.pushed = 0
        self.busy_pings = 0  # pings that timed out while this loop was too late to judge
        self.lag = LoopLag()
        self._changed = asyncio.Event()  # set (and replaced) when a subscription is ready
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.lag.start()
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
        self.lag.stop()
        for socket in {s for group in self.sockets.values() for s in group}:
            socket.close(CLOSE_RESTART)
        await self._disconnect()

    def queue_publish(self, pipe: Pipeline, messages: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Queue messages on a pipeline of the app's Redis client (app/live/effects.py sends
        them with the cache invalidation they follow, in one round trip). Any client of
        the same Redis reaches every process's subscription: PUBLISH is server-wide."""
        queue_messages(pipe, self.prefix, messages)

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        """Publish through Redis so every process (this one included) hears it."""
        if self.broadcast is None:
            raise RedisError("live updates are not connected")
        await self.broadcast.publish(self.prefix + channel, json.dumps(payload))

    def join(
        self, audience: str, channels: Sequence[str], language: str = i18n.SOURCE_LANGUAGE
    ) -> LiveSocket:
        socket = LiveSocket(audience, tuple(channels), language)
        self._joined.add(socket)
        for channel in channels:
            self.sockets.setdefault(channel, set()).add(socket)
            if channel not in self.subscriptions and self.healthy:
                self._subscribe(channel)
        return socket

    async def subscribed(self, socket: LiveSocket, seconds: float) -> bool:
        """Wait until Redis has confirmed a subscription to every channel of `socket`
        (while Redis is away, until the watchdog has subscribed again). False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            changed = self._changed
            subs = [self.subscriptions.get(channel) for channel in socket.channels]
            if all(sub is not None and sub.ready for sub in subs):
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await changed.wait()

    def leave(self, socket: LiveSocket) -> None:
        self._joined.discard(socket)
        for channel in socket.channels:
            group = self.sockets.get(channel)
            if group is None:
                continue
            group.discard(socket)
            if not group:
                del self.sockets[channel]
                sub = self.subscriptions.pop(channel, None)
                if sub:
                    sub.task.cancel()

    @property
    def open_sockets(self) -> int:
        return len(self._joined)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _subscribe(self, channel: str) -> None:
        task = asyncio.create_task(self._listen(channel), name=f"live:{channel}")
        task.add_done_callback(_note_end)
        self.subscriptions[channel] = _Subscription(task)

    async def _listen(self, channel: str) -> None:
        assert self.broadcast is not None
        try:
            async with self.broadcast.subscribe(self.prefix + channel) as subscriber:
                sub = self.subscriptions.get(channel)
                if sub is not None and sub.task is asyncio.current_task():
                    sub.ready = True  # Redis confirmed it (ConfirmedRedisBackend)
                    self._notify()
                async for event in subscriber:  # type: ignore[union-attr]
                    if event is None:
                        return
                    # What came in while the last fan-out rendered and sent is one more
                    # render per distinct view, not one per event: a render reads the
                    # state as of now, which already holds every change heard so far.
                    payloads, ended = _queued_too(subscriber, json.loads(event.message))
                    for payload in payloads:
                        await self._fan_out(channel, payload)
                    if ended:
                        return
        except KeyError:
            # broadcaster's cleanup when cancelled or timed out before it recorded the
            # subscription; the watchdog notices a subscription that ended by itself.
            log.debug("subscription to %s ended before Redis confirmed it", channel)

    async def _fan_out(self, channel: str, payload: dict[str, Any]) -> None:
        by_audience: dict[tuple[str, str], list[LiveSocket]] = {}
        for socket in self.sockets.get(channel, ()):
            by_audience.setdefault((socket.audience, socket.language), []).append(socket)
        for (audience, language), sockets in by_audience.items():
            try:
                with i18n.use_language(language):  # once per audience and language
                    html = await self.render(channel, audience, payload)
            except Exception:
                log.exception("could not render %s for %s (%s)", channel, audience, language)
                continue
            if not html:  # this audience has nothing to show for this event
                continue
            for socket in sockets:
                if socket.offer(html):
                    self.pushed += 1
                else:  # fell behind: forget it now (no more renders for it), say resync
                    socket.close(CLOSE_RESYNC)
                    self.leave(socket)

    async def _connect(self) -> None:
        broadcast = Broadcast(backend=ConfirmedRedisBackend(self.redis_url))
        await broadcast.connect()
        self.broadcast = broadcast
        self.healthy = True
        for channel in self.sockets:
            self._subscribe(channel)

    async def _disconnect(self) -> None:
        tasks = [sub.task for sub in self.subscriptions.values()]
        for task in tasks:
            task.cancel()
        self.subscriptions.clear()
        broadcast, self.broadcast = self.broadcast, None
        self.healthy = False
        self._notify()
        if tasks:  # let them unsubscribe (or fail to, Redis may be gone) before we close
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PING_TIMEOUT_SECONDS):
                    await asyncio.gather(*tasks, return_exceptions=True)
        if broadcast is not None:
            with contextlib.suppress(Exception):  # it may already be broken
                await broadcast.disconnect()

    def _listener_alive(self) -> bool:
        backend = getattr(self.broadcast, "_backend", None)
        task = getattr(backend, "_listener", None)
        if task is not None and task.done():
            return False
        # A subscription that ended by itself (Redis never confirmed it, or it broke)
        # leaves its channel's sockets without events.
        return not any(sub.task.done() for sub in self.subscriptions.values())

    async def _redis_check(self) -> bool | None:
        """True if Redis answered; False if it failed; None if the ping timed out while
        this process's own loop was too late to tell."""
        self.lag.reset()
        try:
            async with asyncio.timeout(PING_TIMEOUT_SECONDS):
                await self.redis.ping()  # type: ignore[misc]
            return True
        except (TimeoutError, RedisTimeoutError):
            if self.lag.since_reset() > LOOP_LAG_LIMIT:
                return None
            return False
        except (RedisConnectionError, RedisError, OSError):
            return False

    async def _watch(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(WATCHDOG_SECONDS)
            ok = await self._redis_check()
            if ok is None:  # busy, not broken: keep the count as it is
                self.busy_pings += 1
                log.info("live updates: event loop too busy to judge Redis; not counted")
                continue
            # A dead listener is certain; one failed ping is not: wait for a few in a row.
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
        if change.patient_id is not None:
            messages.append(
                (
                    patient_channel(change.patient_id),
                    {"appointment_id": change.appointment_id, "action": change.action},
                )
            )
    return messages


def visit_type_messages(doctor_days: Sequence[tuple[int, dt.date]]) -> list[tuple[str, dict]]:
    """Visit-type edits change the shape of a doctor's slots (and the page's chooser)."""
    return [
        (
            doctor_channel(doctor_id, day),
            {"doctor_id": doctor_id, "day": day.isoformat(), "action": "visit_types"},
        )
        for doctor_id, day in doctor_days
    ]


def schedule_messages(doctor_days: Sequence[tuple[int, dt.date]]) -> list[tuple[str, dict]]:
    """Template edits and exceptions change a doctor's slots on these days."""
    return [
        (
            doctor_channel(doctor_id, day),
            {"doctor_id": doctor_id, "day": day.isoformat(), "action": "schedule"},
        )
        for doctor_id, day in doctor_days
    ]
