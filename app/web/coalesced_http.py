"""uvicorn's httptools protocol, with a response's head and body sent in one write, and
admission control taken at the protocol (app/web/admission.py).

uvicorn writes the status line and headers when the app sends `http.response.start`, and
the body on `http.response.body`: two `transport.write` calls, each a `send` system call
on an idle socket (uvloop writes at once), two segments on the wire and two wake-ups of
the client. An app sends both in the same turn of the event loop (nothing between them
waits), so the writes of one turn are gathered and sent as one at the end of the turn.
A streaming response's chunks sent turns apart still go out as they come.

Admission at the protocol: under overload most of a refused request's time was spent
before the admission middleware saw it (a task, Litestar's routing and the metrics
middleware, each waiting its turn on a busy loop) and in sending the 503 through the
ASGI machinery. Here the decision is taken when the request's headers are parsed, in
the same turn as its bytes are read: a free slot starts the app's task as uvicorn
would, a queue place starts a task that first waits for its slot (and, when the wait runs
out, gets the same 503 written from the wait's timer, ahead of the loop's other ready
work), and a refusal is one write of a 503 made at start-up, with no task at all. The
request's body, if any, is read and dropped by the parser; the connection stays open for
the next request.
"""

from __future__ import annotations

import asyncio
import contextvars
from functools import partial
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from app.web.admission import (
    ADMITTED,
    BYPASS_PREFIXES,
    PENDING,
    REFUSED,
    SHED_ROUTE,
    STATE_KEY,
    Admission,
)
from app.web.metrics import REQUESTS


class CoalescingTransport:
    """A connection's transport as its response cycles see it: what is written in one
    turn of the event loop is sent in one write at the end of that turn (or at once
    before a close). Everything else is the transport's own. One per connection, so
    that answers to pipelined requests leave in order."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def write_now(self, data: bytes) -> None:
        """Send `data` at once, or after what is pending, in order."""
        if self._pending:
            self._pending.append(data)
        elif not self._transport.is_closing():
            self._transport.write(data)

    def flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` whose response cycles write through a `CoalescingTransport`
    and whose requests are admitted before their task starts (`medbook serve` passes it
    to uvicorn as its `http` protocol)."""

    admission: Admission | None = None
    admitted_app: Any = None
    out: CoalescingTransport | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.out = CoalescingTransport(transport, self.loop)
        self.admission = find_admission(self.app)
        if self.admission is not None:
            self.admitted_app = self.admission.admitted(self.app)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        admission = self.admission
        scope: Any = cycle.scope
        if (
            admission is None
            or admission.refusals is None
            or app is not self.app  # uvicorn's own 503 (limit_concurrency)
            or scope["path"].startswith(BYPASS_PREFIXES)
        ):
            super()._start_asgi_task(cycle, app)
            return
        admission.watch(self.loop)
        if admission.try_enter():
            waiting = None
            task = self._spawn(cycle, self.admitted_app)
        else:
            waiting = admission.join_queue(partial(self._refuse_queued, cycle, admission))
            if waiting is None:
                self._refuse(cycle, admission)
                return
            task = self._spawn(cycle, admission.queued(app, waiting))
        scope[ADMITTED] = PENDING
        # Cancelled before it begins (uvicorn's graceful-shutdown timeout), the task would
        # never free its slot or leave the queue.
        task.add_done_callback(partial(admission.unstarted, scope, waiting))

    def _spawn(self, cycle: RequestResponseCycle, app: Any) -> asyncio.Task[None]:
        """uvicorn's `_start_asgi_task`, returning the task."""
        run = cycle.run_asgi(app)
        if self.config.reset_contextvars:
            task = self.loop.create_task(run, context=contextvars.Context())
        else:
            task = self.loop.create_task(run)
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
        return task

    def _refuse(self, cycle: RequestResponseCycle, admission: Admission) -> None:
        """The 503 in one write, the request over: what is left of its body is dropped
        (on_body, on_message_complete) and the next request may follow."""
        assert admission.refusals is not None
        scope: Any = cycle.scope
        cycle.response_started = cycle.response_complete = True
        # After `Expect: 100-continue` the client may never send the body the parser
        # would wait for: close rather than read its next request as that body.
        keep_alive = cycle.keep_alive and not cycle.waiting_for_100_continue
        refusal = admission.refusals.choose(scope)
        assert self.out is not None
        self.out.write_now(  # after an earlier answer still pending (pipelining)
            refusal.response(
                self.server_state.default_headers, keep_alive, head=scope["method"] == "HEAD"
            )
        )
        REQUESTS.labels(scope["method"], SHED_ROUTE, "503").inc()
        if not keep_alive:
            self.out.close()
        self.on_response_complete()

    def _refuse_queued(self, cycle: RequestResponseCycle, admission: Admission) -> None:
        """A queued request whose wait ran out: its 503 written from the timer, as a
        refusal at once is, not two turns of a busy loop later through its task (which
        then ends without answering)."""
        if cycle.response_started or cycle.disconnected:
            return
        scope: Any = cycle.scope
        scope[REFUSED] = True
        self._refuse(cycle, admission)

    def on_headers_complete(self) -> None:
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not None and self.cycle is not before:  # not an upgrade
            # Made for this request and not run yet: nothing is written.
            self.cycle.transport = self.out  # type: ignore[assignment]

    def _flush(self) -> None:
        """What the connection's cycles wrote this turn goes out before the protocol's
        own writes and closes."""
        if self.out is not None:
            self.out.flush()

    def handle_websocket_upgrade(self) -> None:
        self._flush()
        super().handle_websocket_upgrade()

    def send_400_response(self, msg: str) -> None:
        self._flush()
        super().send_400_response(msg)

    def shutdown(self) -> None:
        self._flush()
        super().shutdown()


def find_admission(app: Any) -> Admission | None:
    """The Admission create_app prepared, in the state of the app under uvicorn's
    wrappers (proxy headers); None for an app without one."""
    for _ in range(8):
        state = getattr(app, "state", None)
        if state is not None and hasattr(state, "get"):
            found = state.get(STATE_KEY)
            return found if isinstance(found, Admission) else None
        app = getattr(app, "app", None)
        if app is None:
            break
    return None
