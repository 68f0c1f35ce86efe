"""uvicorn with medbook's protocol (app/web/coalesced_http.py) answers as uvicorn does:
head and body in one write, keep-alive, streamed chunks as they come, 400 on garbage."""

import asyncio
import contextlib
import socket

import httpx
import pytest
import uvicorn

from app.web import coalesced_http
from app.web.coalesced_http import CoalescingHttpToolsProtocol


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for n in range(3):
            await send({"type": "http.response.body", "body": b"%d;" % n, "more_body": True})
            await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b"end"})
        return
    body = scope["path"].encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def server(monkeypatch):
    """The app on a free port; the real transports' writes are counted."""
    writes: list[bytes] = []
    flush = coalesced_http.CoalescingTransport.flush

    def counted(self):
        writes.extend(self._pending)  # what this flush sends, as one write
        writes.append(b"|")
        flush(self)

    monkeypatch.setattr(coalesced_http.CoalescingTransport, "flush", counted)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=CoalescingHttpToolsProtocol, log_level="warning"
    )
    running = uvicorn.Server(config)
    task = asyncio.create_task(running.serve())
    while not running.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", writes
    finally:
        running.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_head_and_body_go_out_in_one_write_and_keep_alive_holds(server):
    base, writes = server
    async with httpx.AsyncClient(base_url=base) as client:
        first = await client.get("/one")
        second = await client.get("/two")  # the same connection
    assert (first.status_code, first.text, second.text) == (200, "/one", "/two")
    flushed = b"".join(writes).split(b"|")[:-1]
    assert len(flushed) == 2
    assert all(w.startswith(b"HTTP/1.1 200 OK\r\n") for w in flushed)
    assert flushed[0].endswith(b"\r\n\r\n/one") and flushed[1].endswith(b"\r\n\r\n/two")


async def test_a_streamed_answer_arrives_chunk_by_chunk(server):
    base, writes = server
    async with httpx.AsyncClient(base_url=base) as client:
        response = await client.get("/stream")
    assert response.text == "0;1;2;end"
    # head with the first chunk, then each chunk as it comes, the last with the end
    assert b"".join(writes).count(b"|") == 4


async def test_garbage_gets_a_400(server):
    base, _ = server
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400")
