"""uvicorn's httptools protocol, with a response's head and body sent in one write.

uvicorn writes the status line and headers when the app sends `http.response.start`, and
the body on `http.response.body`: two `transport.write` calls, each a `send` system call
on an idle socket (uvloop writes at once), two segments on the wire and two wake-ups of
the client. An app sends both in the same turn of the event loop (nothing between them
waits), so the writes of one turn are gathered and sent as one at the end of the turn.
A streaming response's chunks sent turns apart still go out as they come.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """A connection's transport as one response cycle sees it: what is written in one
    turn of the event loop is sent in one write at the end of that turn (or at once
    before a close). Everything else is the transport's own."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

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
    (`medbook serve` passes it to uvicorn as its `http` protocol)."""

    def on_headers_complete(self) -> None:
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not None and self.cycle is not before:  # not an upgrade
            # Made for this request and not run yet: nothing is written.
            self.cycle.transport = CoalescingTransport(self.transport, self.loop)  # type: ignore[assignment]

    def _flush(self) -> None:
        """What the current cycle wrote this turn goes out before the protocol's own
        writes and closes."""
        transport = getattr(self.cycle, "transport", None)
        if isinstance(transport, CoalescingTransport):
            transport.flush()

    def send_400_response(self, msg: str) -> None:
        self._flush()
        super().send_400_response(msg)

    def shutdown(self) -> None:
        self._flush()
        super().shutdown()
