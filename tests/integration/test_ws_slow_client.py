"""A websocket client that stops reading is dropped, not kept forever: once a send has
waited SEND_TIMEOUT_SECONDS for room in the full buffers, the server forgets the socket
(its Redis subscription goes) and closes it with 1013, which the client finds after the
fragments it never read, so the page resyncs."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
from urllib.parse import urlsplit

import pytest

from app.live.realtime import CLOSE_RESYNC, channel_prefix, doctor_channel
from tests.integration.world import day_after_tomorrow, make_world

# For the whole scenario on a loaded machine (the send timeout and close grace are 10 s
# each); a limit on waiting, not a speed check.
DEADLINE_SECONDS = 180


@pytest.fixture
async def world(session, settings, redis):
    # `redis` empties the cache, so the server loads this test's users afresh.
    return await make_world(session, settings.secret_key, patients=1)


class RawClient:
    """A websocket client on a bare socket with a small receive buffer, which reads only
    when told to."""

    def __init__(self, url: str, path: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(30)
        self.sock.connect((parts.hostname, parts.port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {parts.netloc}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            f"Origin: {url}",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.buffer += self._recv()
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def frame(self) -> tuple[int, bytes]:
        """The next frame from the server (unmasked): its opcode and payload."""
        first, second = self._take(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._take(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._take(8))
        return first & 0x0F, self._take(length)

    def close(self) -> None:
        self.sock.close()


def read_until_close(client: RawClient) -> tuple[int, int, int]:
    """Read every frame the server left in the buffers: (text frames, their bytes, the
    close code)."""
    texts = size = 0
    while True:
        opcode, payload = client.frame()
        if opcode == 0x8:
            return texts, size, struct.unpack("!H", payload[:2])[0]
        if opcode == 0x1:
            texts += 1
            size += len(payload)


async def test_a_client_that_stops_reading_is_dropped_and_told_to_resync(world, live_server, redis):
    day = day_after_tomorrow()
    path = f"/ws/live?view=slots&doctor_id={world.doctor_id}&date={day.isoformat()}"
    client = await asyncio.to_thread(RawClient, live_server.url, path, world.headers("patient0"))
    try:
        opcode, view = await asyncio.to_thread(client.frame)  # sent once subscribed
        assert opcode == 0x1 and "hx-swap-oob" in view.decode()
        # From here on the client reads nothing. Every event makes the server render and
        # send the day's slots again, until its buffers and ours are full and a send waits.
        channel = channel_prefix(redis) + doctor_channel(world.doctor_id, day)
        event = json.dumps({"doctor_id": world.doctor_id, "day": day.isoformat()})
        published = 0
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            receivers = await redis.publish(channel, event)
            if receivers == 0:  # the server dropped the socket, so its subscription
                break
            published += 1
            assert time.monotonic() < deadline, f"still subscribed after {published} events"
            if published % 20 == 0:
                await asyncio.sleep(0.05)  # pace the producer to the server's renders
        texts, size, code = await asyncio.to_thread(read_until_close, client)
    finally:
        client.close()
    assert code == CLOSE_RESYNC
    assert 0 < texts < published  # it fell behind: the rest was never sent
    print(f"published {published}, delivered {texts} fragments ({size:,} bytes) then 1013")
