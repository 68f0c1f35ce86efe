"""Admission control: at most so many requests in flight per process, a short wait for
the rest, and a fast 503 with Retry-After for those that cannot be served in time.

Without it every queue on the way (the kernel's, uvicorn's, the pool's, PostgreSQL's)
grows without bound under a burst, and answers come many seconds late. Here a
request either starts within ADMISSION_MAX_WAIT_MS or is refused at once, having changed
nothing; the requests admitted keep their normal latency. A standing queue is overload,
not a burst (CoDel's idea): when for STANDING_QUEUE_SECONDS the queue has not been empty
and no waiter got its slot within GOOD_WAIT_SECONDS, a newcomer is refused without
waiting (it would most likely wait the whole ADMISSION_MAX_WAIT_MS and be refused
anyway), until the queue empties or moves quickly again; those already waiting keep
their turn. Websockets, `/health/*`,
`/metrics` and static files pass straight through: probes and live pushes must keep
working while the site sheds load.

The limit adapts to the event loop's lag (ADMISSION_LAG_TARGET_MS): a timer every
LAG_TICK_SECONDS measures how late the loop runs it, which is also how long a request's
bytes sit in the kernel before the loop reads them. Requests in flight share one loop,
so when the loop has been late for a whole LAG_WINDOW_SECONDS the limit shrinks (fewer
requests at once, each finishing sooner, the rest refused while their 503 is still
fast), and it grows back by one each window the loop keeps well up. The loop's lag alone
misses the commonest overload: a loop that keeps up turn by turn while each request
waits behind every other one in flight at each of its awaits, so that an admitted
request's time grows with the limit (Little's law: in flight = rate x time). So the limit
also shrinks when more than a tenth of a window's requests held their slot longer than
ADMISSION_SERVICE_TARGET_MS, and grows only while nine in ten stay under half of it.
A request that would
wait while the loop keeps running later than ADMISSION_MAX_WAIT_MS (its last two
samples; one slow turn already over is not that) is refused at once, and
so is one that would find more waiters ahead of it than the slots can serve within that
wait at the recent pace (an average of the time admitted requests held their slot): its
503 would only come later.

Under `medbook serve` (uvicorn with app/web/coalesced_http.py's protocol) the decision
is taken at the protocol, when a request's headers are parsed and before any task,
routing or middleware: a refusal is one write of bytes made at start-up (`Refusals`). The
middleware then only passes the request on (ADMITTED in its scope); it admits by itself
where no such protocol runs (granian, tests' in-process clients).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from litestar.types import ASGIApp, HTTPResponseStartEvent, Receive, Scope, Send

from app import i18n
from app.i18n import N_
from app.settings import Settings
from app.web.i18n import request_language, scope_language
from app.web.metrics import (
    ADMISSION_LIMIT,
    ADMISSION_SHED_LAGGING,
    ADMISSION_SHED_QUEUE_FULL,
    ADMISSION_SHED_STANDING,
    ADMISSION_SHED_WAITED,
    LOOP_LAG_SECONDS,
    REQUESTS,
)

BYPASS_PREFIXES = ("/health/", "/metrics", "/static/")
RETRY_AFTER_SECONDS = 1
# CoDel's interval and target: a queue whose waits have all been over the target for the
# interval is standing, not a burst.
STANDING_QUEUE_SECONDS = 0.1
GOOD_WAIT_SECONDS = 0.005
# The lag timer's period, and the window over which its samples decide the limit: short
# enough to follow a burst within a fraction of a second, long enough (ten samples) that
# one slow turn of the loop (a collection, a big page) does not shrink it.
LAG_TICK_SECONDS = 0.01
LAG_WINDOW_SECONDS = 0.1
# The limit never shrinks below this many requests (nor above its maximum): one would
# leave the process idle through each request's database and Redis round trips.
MIN_IN_FLIGHT = 2
SHRINK = 0.75
# The share of a window's requests that may hold their slot longer than the service
# target (ADMISSION_SERVICE_TARGET_MS) before the limit shrinks: the limit is held to the
# window's 90th percentile, so that a few long requests (a sign-in waiting for its hash)
# do not shrink it alone.
SLOW_SHARE = 0.1
# The weight of each admitted request's time in the average of how long a slot is held
# (about the last twenty requests).
SERVICE_WEIGHT = 0.05
# The scope key the protocol sets on a request it admitted or queued
# (app/web/coalesced_http.py): PENDING until the request's task begins, then RUNNING. A
# task cancelled before it began (uvicorn's graceful-shutdown timeout cancels every
# request's task) never runs the code that frees its slot: `unstarted` does.
ADMITTED = "medbook.admitted"
PENDING = "pending"
RUNNING = "running"
# Set by the protocol on a queued request it answered 503 itself when its wait ended.
REFUSED = "medbook.refused"
# Where the protocol finds the process's Admission: the app's state (create_app).
STATE_KEY = "admission"
# The route label of requests refused at the protocol, before routing.
SHED_ROUTE = "(shed)"
BUSY_DETAIL = "the server is busy; try again in a moment"
BUSY_PAGE = {  # translated when the pages are rendered (render_unavailable)
    "heading": N_("medbook is busy"),
    "message": N_(
        "Too many people are using medbook at this moment, so your request was not "
        "carried out. Nothing was changed. Please try again in a moment."
    ),
}


class Admission:
    """The process's slots and wait queue; one per app, shared by every route's
    middleware instance (Litestar builds the middleware stack once per route) and by the
    protocol."""

    def __init__(
        self,
        max_in_flight: int,
        max_queue: int,
        max_wait_ms: int,
        clock: Callable[[], float] = time.monotonic,
        lag_target_ms: int = 0,
        service_target_ms: int = 0,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.min_in_flight = min(max_in_flight, MIN_IN_FLIGHT)
        self.limit = max_in_flight  # what the loop's lag allows now (observe_lag)
        self.max_queue = max_queue
        self.max_wait = max_wait_ms / 1000
        self.lag_target = lag_target_ms / 1000  # 0: a fixed limit (the lag still measured)
        self.clock = clock
        self.in_flight = 0
        # How long an admitted request holds its slot, on average (leave).
        self.service = 0.0
        # Futures of waiting requests, oldest first; True when handed a slot, False when
        # their wait ran out.
        self.waiters: deque[asyncio.Future[bool]] = deque()
        # The last time the queue was found empty or a waiter got its slot quickly.
        self.good_at = 0.0
        # The busy page per language, rendered at start-up (create_app), else on first use.
        self.pages: dict[str, bytes] | None = None
        # The whole 503 answers the protocol sends (prepare), None until start-up.
        self.refusals: Refusals | None = None
        # The lag timer: the loop it runs on, when it is due next, its last sample, and
        # the current window's end, lowest and highest samples.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.due = 0.0
        self.lag = 0.0
        self.previous_lag = 0.0
        self.window_end = 0.0
        self.window_min = math.inf
        self.window_max = 0.0
        # How long an admitted request may hold its slot (see observe_lag), and the
        # current window's requests that ended: all, over half the target, over it.
        self.service_target = service_target_ms / 1000 if service_target_ms > 0 else math.inf
        self.window_ended = 0
        self.window_half_slow = 0
        self.window_slow = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Admission:
        return cls(
            settings.admission_max_in_flight,
            settings.admission_max_queue,
            settings.admission_max_wait_ms,
            lag_target_ms=settings.admission_lag_target_ms,
            service_target_ms=settings.admission_service_target_ms,
        )

    async def prepare(self, app: Any, pages: dict[str, bytes], default_language: str) -> None:
        """At start-up: the busy pages, the protocol's whole 503 answers (with the headers
        the app's answers carry), and this admission in the app's state, where the
        protocol finds it."""
        self.pages = pages
        self.refusals = await Refusals.build(app, pages, default_language)
        app.state[STATE_KEY] = self
        ADMISSION_LIMIT.set(self.limit)

    # The lag timer and the limit.

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the lag timer on `loop` (the one serving requests); cheap once it runs."""
        if loop is self.loop:
            return
        self.loop = loop  # a timer left on another loop stops at its next tick
        now = loop.time()
        self.window_end = now + LAG_WINDOW_SECONDS
        self.due = now + LAG_TICK_SECONDS
        loop.call_at(self.due, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self.loop:
            return
        now = loop.time()
        self.observe_lag(max(0.0, now - self.due), now)
        self.due = now + LAG_TICK_SECONDS
        loop.call_at(self.due, self._tick, loop)

    def current_lag(self) -> float:
        """The last sample, or more while the timer is overdue (the loop is late now)."""
        if self.loop is None:
            return self.lag
        return max(self.lag, self.loop.time() - self.due)

    def sustained_lag(self) -> float:
        """How late the loop has kept running: the lesser of its last two samples (the
        last one or, while the timer is overdue, more). One slow turn, already over (a
        collection, a moment without a core), is not a loop that keeps lagging: the
        requests it held up are read at once after it."""
        return min(self.previous_lag, self.current_lag())

    def observe_lag(self, lag: float, now: float) -> None:
        """One sample of the loop's lag. At a window's end the limit follows: a window
        whose every sample was over the lag target, or in which more than SLOW_SHARE of
        the requests that ended held their slot longer than the service target, shrinks
        it; one whose every sample was under half the lag target and whose requests held
        their slots under half the service target (but for SLOW_SHARE) grows it by one
        (in between it holds, so that it does not swing at the edge)."""
        self.previous_lag, self.lag = self.lag, lag
        LOOP_LAG_SECONDS.observe(lag)
        self.window_min = min(self.window_min, lag)
        self.window_max = max(self.window_max, lag)
        if now < self.window_end or self.lag_target <= 0:
            return
        allowed = SLOW_SHARE * self.window_ended
        if self.window_min > self.lag_target or self.window_slow > allowed:
            self.set_limit(max(self.min_in_flight, min(self.limit - 1, int(self.limit * SHRINK))))
        elif self.window_max < self.lag_target / 2 and self.window_half_slow <= allowed:
            self.set_limit(min(self.max_in_flight, self.limit + 1))
        self.window_end = now + LAG_WINDOW_SECONDS
        self.window_min, self.window_max = math.inf, 0.0
        self.window_ended = self.window_slow = self.window_half_slow = 0

    def set_limit(self, limit: int) -> None:
        """A new limit; the slots it adds go to the oldest waiters first."""
        if limit == self.limit:
            return
        self.limit = limit
        ADMISSION_LIMIT.set(limit)
        while self.in_flight < self.limit and self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                self.in_flight += 1

    # Slots and the queue.

    def try_enter(self) -> bool:
        """Take a free slot now, unless others are already waiting for one (first come,
        first served)."""
        if self.in_flight < self.limit and not self.waiters:
            self.in_flight += 1
            return True
        return False

    def join_queue(self, refuse: Callable[[], None] | None = None) -> Waiting | None:
        """Queue for a slot, the wait timed from now; None (counted) when the request is
        refused at once: the queue full or standing, or the loop already later than any
        wait may be. `refuse`, if given, answers the 503 from the timer that ends the
        wait (the protocol's single write), before the loop's other ready work and
        before the request's task resumes."""
        ahead = len(self.waiters)
        if (
            ahead >= self.max_queue
            or self.max_wait <= 0
            # Slots free at `limit / service` a second: more ahead than that serves
            # within the wait, and this one's wait would run out too.
            or (ahead + 1) * self.service > self.max_wait * self.limit
        ):
            ADMISSION_SHED_QUEUE_FULL.inc()
            return None
        if self.sustained_lag() >= self.max_wait:
            ADMISSION_SHED_LAGGING.inc()
            return None
        arrived = self.clock()
        if not self.waiters:
            self.good_at = arrived
        elif arrived - self.good_at >= STANDING_QUEUE_SECONDS:
            ADMISSION_SHED_STANDING.inc()
            return None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self.waiters.append(waiter)
        timer = loop.call_later(self.max_wait, _expire, waiter, refuse)
        return Waiting(waiter, timer, arrived)

    async def wait(self) -> bool:
        """Wait up to max_wait for a slot; False when none came, or at once when refused
        (join_queue)."""
        waiting = self.join_queue()
        return waiting is not None and await self.turn(waiting)

    async def turn(self, waiting: Waiting) -> bool:
        """Whether a queued request got its slot (False: its wait ran out)."""
        waiter = waiting.waiter
        try:
            admitted = await waiter
        except BaseException:  # cancelled while waiting: give back a slot handed over
            self.give_up(waiting)
            raise
        waiting.timer.cancel()
        if not admitted:  # its wait ran out
            _discard(self.waiters, waiter)
            ADMISSION_SHED_WAITED.inc()
        elif (now := self.clock()) - waiting.arrived < GOOD_WAIT_SECONDS:
            self.good_at = now
        return admitted

    def give_up(self, waiting: Waiting) -> None:
        """A queued request that will never run: off the queue, or, when a slot was
        already handed to it, that slot freed (passed on to the next waiter)."""
        waiting.timer.cancel()
        waiter = waiting.waiter
        if waiter.done() and not waiter.cancelled() and waiter.result():
            self.leave()
            return
        waiter.cancel()  # leave() passes over it from now on
        _discard(self.waiters, waiter)

    def unstarted(self, scope: Any, waiting: Waiting | None, _task: object = None) -> None:
        """The protocol's request task ended (a done callback): if it ended before it
        began (cancelled), the slot it was given, or its place in the queue, goes back."""
        if scope.get(ADMITTED) != PENDING:
            return  # it ran, and freed what it held itself
        scope[ADMITTED] = RUNNING
        if waiting is None:
            self.leave()
        else:
            self.give_up(waiting)

    def leave(self, started: float | None = None) -> None:
        """Free a slot, handing it straight to the oldest request still waiting (unless
        the limit has shrunk below what is in flight); `started`, the clock when the
        request got its slot, feeds the average time a slot is held."""
        if started is not None:
            held = self.clock() - started
            self.service += SERVICE_WEIGHT * (held - self.service)
            self.window_ended += 1
            if held > self.service_target / 2:
                self.window_half_slow += 1
                if held > self.service_target:
                    self.window_slow += 1
        while self.waiters and self.in_flight <= self.limit:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)  # the slot passes on; in_flight is unchanged
                return
        self.in_flight -= 1

    # The protocol's side (app/web/coalesced_http.py).

    def admitted(self, app: ASGIApp) -> ASGIApp:
        """`app` for requests that hold a slot: it is freed when each ends."""

        async def run(scope: Scope, receive: Receive, send: Send) -> None:
            _running(scope)
            started = self.clock()
            try:
                await app(scope, receive, send)
            finally:
                self.leave(started)

        return run

    def queued(self, app: ASGIApp, waiting: Waiting) -> ASGIApp:
        """`app` for a request queued at the protocol: it runs once handed a slot, or
        gets its 503 when the wait runs out."""

        async def run(scope: Scope, receive: Receive, send: Send) -> None:
            _running(scope)
            if not await self.turn(waiting):
                if scope.get(REFUSED):
                    return  # answered by the protocol when the wait ended
                assert self.refusals is not None  # the protocol queues only once prepared
                refusal = self.refusals.choose(scope)
                REQUESTS.labels(str(scope.get("method", "GET")), SHED_ROUTE, "503").inc()
                start: HTTPResponseStartEvent = {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": refusal.headers,
                }
                await send(start)
                await send({"type": "http.response.body", "body": refusal.body, "more_body": False})
                return
            started = self.clock()
            try:
                await app(scope, receive, send)
            finally:
                self.leave(started)

        return run


@dataclass(frozen=True, slots=True)
class Waiting:
    """A request in the queue: its future, the timer that ends its wait, its arrival."""

    waiter: asyncio.Future[bool]
    timer: asyncio.TimerHandle
    arrived: float


def _running(scope: Scope) -> None:
    """The request's task has begun: from now on it frees what it holds itself."""
    cast("dict[str, Any]", scope)[ADMITTED] = RUNNING


def _expire(waiter: asyncio.Future[bool], refuse: Callable[[], None] | None) -> None:
    if not waiter.done():
        waiter.set_result(False)
        if refuse is not None:
            refuse()


def _discard(waiters: deque[asyncio.Future[bool]], waiter: asyncio.Future[bool]) -> None:
    with contextlib.suppress(ValueError):  # already taken off by leave()
        waiters.remove(waiter)


STATUS_LINE = b"HTTP/1.1 503 Service Unavailable\r\n"


@dataclass(frozen=True, slots=True)
class Refusal:
    """One 503 answer: its headers for an ASGI send, and the same as raw header lines
    for the protocol's single write."""

    headers: list[tuple[bytes, bytes]]
    body: bytes
    lines: bytes

    @classmethod
    def of(cls, headers: list[tuple[bytes, bytes]], body: bytes) -> Refusal:
        lines = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        return cls(headers, body, lines)

    def response(
        self, default_headers: list[tuple[bytes, bytes]], keep_alive: bool, head: bool
    ) -> bytes:
        """The whole HTTP/1.1 response, with the server's own headers (date, server)."""
        parts = [STATUS_LINE]
        for name, value in default_headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(self.lines)
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if not head:
            parts.append(self.body)
        return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Refusals:
    """The 503s the protocol sends: JSON, and the busy page in every language."""

    json: Refusal
    pages: dict[str, Refusal]
    default_language: str

    @classmethod
    async def build(cls, app: Any, pages: dict[str, bytes], default_language: str) -> Refusals:
        from app.web.security_headers import add_security_headers

        async def refusal(body: bytes, media_type: bytes) -> Refusal:
            # Through the app's before_send hook, as every answer of the app goes.
            message: Any = {
                "type": "http.response.start",
                "status": 503,
                "headers": refusal_headers(body, media_type),
            }
            scope: Any = {"type": "http", "path": "/", "headers": [], "app": app}
            await add_security_headers(message, scope)
            return Refusal.of(list(message["headers"]), body)

        html = b"text/html; charset=utf-8"
        return cls(
            await refusal(_BUSY_JSON, b"application/json"),
            {language: await refusal(page, html) for language, page in pages.items()},
            default_language,
        )

    def choose(self, scope: Any) -> Refusal:
        """The busy page for a browser's page request, in its language; else JSON."""
        if not _wants_page(scope):
            return self.json
        language = request_language(scope, self.default_language)[0]
        return self.pages.get(language) or self.pages[self.default_language]


def refusal_headers(body: bytes, media_type: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", media_type),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
        (b"cache-control", b"no-store"),
    ]


class AdmissionMiddleware:
    """Admits each HTTP request into `admission`, or answers 503 with Retry-After; a
    request the protocol admitted passes straight on."""

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        admission = self.admission
        if (
            scope["type"] != "http"
            or ADMITTED in scope
            or scope["path"].startswith(BYPASS_PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        admission.watch(asyncio.get_running_loop())
        if not admission.try_enter() and not await admission.wait():
            await _refuse(scope, send, admission)
            return
        started = admission.clock()
        try:
            await self.app(scope, receive, send)
        finally:
            admission.leave(started)


async def _refuse(scope: Scope, send: Send, admission: Admission) -> None:
    """503: the busy page for a browser's page request, else `{status_code, detail}`."""
    if _wants_page(scope):
        if admission.pages is None:
            admission.pages = render_unavailable(scope["app"], BUSY_PAGE, RETRY_AFTER_SECONDS)
        body, media_type = admission.pages[scope_language(scope)], b"text/html; charset=utf-8"
    else:
        body, media_type = _BUSY_JSON, b"application/json"
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": 503,
        "headers": refusal_headers(body, media_type),
    }
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})


_BUSY_JSON = json.dumps({"status_code": 503, "detail": BUSY_DETAIL}).encode()


def _wants_page(scope: Scope) -> bool:
    """As `guards.wants_html`: a browser asking for a page, not the API or htmx."""
    if scope["path"].startswith("/api/"):
        return False
    accept = b""
    for name, value in scope["headers"]:
        if name == b"hx-request":
            return False
        if name == b"accept":
            accept = value
    return b"text/html" in accept


def render_unavailable(app: Any, page: dict[str, str], retry_after: int) -> dict[str, bytes]:
    """The 503 page (templates/errors/unavailable.html) with `page`'s heading and message,
    once per language: rendered without a request, so answering costs no rendering."""
    template = app.template_engine.get_template("errors/unavailable.html")
    pages = {}
    for language in i18n.LANGUAGES:
        with i18n.use_language(language):
            texts = {key: i18n.gettext(text) for key, text in page.items()}
            pages[language] = str(template.render(retry_after=retry_after, **texts)).encode()
    return pages
