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

Pure ASGI on the hot path: an admitted request with a free slot costs two integer updates
and a prefix test (its cost in process is in bench/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from litestar.types import ASGIApp, HTTPResponseStartEvent, Receive, Scope, Send

from app import i18n
from app.i18n import N_
from app.settings import Settings
from app.web.i18n import scope_language
from app.web.metrics import (
    ADMISSION_SHED_QUEUE_FULL,
    ADMISSION_SHED_STANDING,
    ADMISSION_SHED_WAITED,
)

BYPASS_PREFIXES = ("/health/", "/metrics", "/static/")
RETRY_AFTER_SECONDS = 1
# CoDel's interval and target: a queue whose waits have all been over the target for the
# interval is standing, not a burst.
STANDING_QUEUE_SECONDS = 0.1
GOOD_WAIT_SECONDS = 0.005
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
    middleware instance (Litestar builds the middleware stack once per route)."""

    def __init__(
        self,
        max_in_flight: int,
        max_queue: int,
        max_wait_ms: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.max_wait = max_wait_ms / 1000
        self.clock = clock
        self.in_flight = 0
        # Futures of waiting requests, oldest first; True when handed a slot, False when
        # their wait ran out.
        self.waiters: deque[asyncio.Future[bool]] = deque()
        # The last time the queue was found empty or a waiter got its slot quickly.
        self.good_at = 0.0
        # The busy page per language, rendered at start-up (create_app), else on first use.
        self.pages: dict[str, bytes] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Admission:
        return cls(
            settings.admission_max_in_flight,
            settings.admission_max_queue,
            settings.admission_max_wait_ms,
        )

    def try_enter(self) -> bool:
        """Take a free slot now, unless others are already waiting for one (first come,
        first served)."""
        if self.in_flight < self.max_in_flight and not self.waiters:
            self.in_flight += 1
            return True
        return False

    async def wait(self) -> bool:
        """Wait up to max_wait for a slot; False when none came, or at once when the queue
        is full or standing."""
        if len(self.waiters) >= self.max_queue or self.max_wait <= 0:
            ADMISSION_SHED_QUEUE_FULL.inc()
            return False
        arrived = self.clock()
        if not self.waiters:
            self.good_at = arrived
        elif arrived - self.good_at >= STANDING_QUEUE_SECONDS:
            ADMISSION_SHED_STANDING.inc()
            return False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self.waiters.append(waiter)
        timer = loop.call_later(self.max_wait, _expire, waiter)
        try:
            admitted = await waiter
        except BaseException:  # cancelled while waiting: give back a slot handed over
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.leave()
            raise
        finally:
            timer.cancel()
            if waiter.cancelled() or not waiter.done() or not waiter.result():
                _discard(self.waiters, waiter)  # still queued unless leave() took it
        if not admitted:
            ADMISSION_SHED_WAITED.inc()
        elif (now := self.clock()) - arrived < GOOD_WAIT_SECONDS:
            self.good_at = now
        return admitted

    def leave(self) -> None:
        """Free a slot, handing it straight to the oldest request still waiting."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)  # the slot passes on; in_flight is unchanged
                return
        self.in_flight -= 1


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


def _discard(waiters: deque[asyncio.Future[bool]], waiter: asyncio.Future[bool]) -> None:
    with contextlib.suppress(ValueError):  # already taken off by leave()
        waiters.remove(waiter)


class AdmissionMiddleware:
    """Admits each HTTP request into `admission`, or answers 503 with Retry-After."""

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        admission = self.admission
        if scope["type"] != "http" or scope["path"].startswith(BYPASS_PREFIXES):
            await self.app(scope, receive, send)
            return
        if not admission.try_enter() and not await admission.wait():
            await _refuse(scope, send, admission)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            admission.leave()


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
        "headers": [
            (b"content-type", media_type),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
            (b"cache-control", b"no-store"),
        ],
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
