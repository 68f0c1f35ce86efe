"""A live page's socket as the browser keeps it, without a browser: what
static/vendor/htmx-ext-ws-2.0.4.min.js does with `ws-connect`. Each (re)connect's first
frame is the whole current view (app/routes/live.py: the resync); later frames are oob
swaps. A close with one of RECONNECT_CODES makes the page connect again to the same URL
(the browser waits a full-jitter delay first); any other code leaves the page dead.
"""

from __future__ import annotations

import asyncio
import re
import time

import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

# htmx-ext-ws 2.0.4: `[1006,1011,1012,1013].indexOf(e.code)>=0` -> reconnect
RECONNECT_CODES = (1006, 1011, 1012, 1013)
RECONNECT_DELAY = 0.2  # the browser's first full-jitter delay is up to 1 s


def slot_states(html: str) -> dict[str, bool]:
    """Each slot's start (ISO) -> whether the view shows it free."""
    found = re.findall(r'data-slot-start="([^"]+)" data-available="(true|false)"', html)
    return {start: available == "true" for start, available in found}


class LivePage:
    """`url` is the proxy's (or a server's) http URL; `path` the page's ws-connect value."""

    def __init__(self, url: str, path: str) -> None:
        self.origin = url
        self.ws_url = url.replace("http://", "ws://", 1) + path
        self.socket: websockets.ClientConnection | None = None
        self.served_by = "?"
        self.view = ""  # the last whole view received (a connect's first frame)
        self.slots: dict[str, bool] = {}  # what the page shows: the views and swaps merged
        self.connects = 0

    async def open(self, timeout: float = 15) -> str:
        """Connect and take the first frame as the view. A connect refused or closed
        before its view with a reconnect code is tried again (the browser would), until
        `timeout`; the view is returned."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket = await websockets.connect(
                    self.ws_url,
                    origin=self.origin,
                    open_timeout=timeout,  # type: ignore[arg-type]
                )
                try:
                    first = await asyncio.wait_for(socket.recv(), timeout)
                except BaseException:
                    await socket.close()
                    raise
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else 1006
                if code not in RECONNECT_CODES or time.monotonic() > deadline:
                    raise
            except (InvalidStatus, OSError):  # the proxy had no server for it: 503
                if time.monotonic() > deadline:
                    raise
            else:
                self.socket, self.view = socket, str(first)
                self.slots.update(slot_states(self.view))
                self.served_by = socket.response.headers.get("X-Served-By", "?")
                self.connects += 1
                return self.view
            await asyncio.sleep(RECONNECT_DELAY)

    async def next_frame(self, timeout: float = 15) -> str:
        assert self.socket is not None
        frame = str(await asyncio.wait_for(self.socket.recv(), timeout))
        self.slots.update(slot_states(frame))  # a day's section swapped in whole
        return frame

    async def wait_for_frame(self, wanted, timeout: float = 15) -> str:
        """Frames until one for which `wanted(frame)` holds."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.next_frame(max(0.1, deadline - time.monotonic()))
            if wanted(frame):
                return frame

    async def closed(self, timeout: float = 60) -> int:
        """Read (and drop) frames until the server closes the socket; its close code
        (1006 when the connection just ended)."""
        assert self.socket is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self.slots.update(slot_states(str(await self.socket.recv())))
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else 1006

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()
