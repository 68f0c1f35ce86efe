"""Admission at the protocol (app/web/coalesced_http.py, app/web/admission.py): in a real
uvicorn, a request over the limit gets its 503 in one write without the app ever seeing
it, the connection stays usable, probes pass, and a queued request runs or is refused."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator

import httpx
import uvicorn

from app.web.admission import BUSY_DETAIL, Admission, Refusal, Refusals, refusal_headers
from app.web.coalesced_http import CoalescingHttpToolsProtocol

PAGE = b"<p>busy</p>"


class HeldApp:
    """An ASGI app that records the paths it serves; `/hold` waits for `release`. Its
    state carries the Admission, as create_app's does."""

    def __init__(self, admission: Admission) -> None:
        json_body = json.dumps({"status_code": 503, "detail": BUSY_DETAIL}).encode()
        html = b"text/html; charset=utf-8"
        admission.refusals = Refusals(
            Refusal.of(refusal_headers(json_body, b"application/json"), json_body),
            {"en": Refusal.of(refusal_headers(PAGE, html), PAGE)},
            "en",
        )
        self.state = {"admission": admission}
        self.served: list[str] = []
        self.release = asyncio.Event()

    async def __call__(self, scope, receive, send):
        self.served.append(scope["path"])
        while (await receive()).get("more_body"):
            pass
        if scope["path"] == "/hold":
            await self.release.wait()
        body = scope["path"].encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def serving(
    app: HeldApp, protocol: type[CoalescingHttpToolsProtocol] = CoalescingHttpToolsProtocol
) -> AsyncIterator[tuple[str, int]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=protocol,
        lifespan="off",
        log_level="warning",
    )
    running = uvicorn.Server(config)
    task = asyncio.create_task(running.serve())
    while not running.started:
        await asyncio.sleep(0.01)
    try:
        yield "127.0.0.1", port
    finally:
        app.release.set()
        running.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Connection:
    """One keep-alive connection, requests written and answers read by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def ask(
        self, head: str, body: bytes = b"", read_body: bool = True
    ) -> tuple[int, dict[str, str], bytes]:
        self.writer.write(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        await self.writer.drain()
        return await self.read(read_body)

    async def read(self, read_body: bool = True) -> tuple[int, dict[str, str], bytes]:
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *lines = raw.decode().split("\r\n")[:-2]
        headers = dict(line.lower().split(": ", 1) for line in lines)
        length = int(headers.get("content-length", 0)) if read_body else 0
        answer = await asyncio.wait_for(self.reader.readexactly(length), 10)
        return int(status_line.split()[1]), headers, answer


@contextlib.asynccontextmanager
async def connection(host: str, port: int) -> AsyncIterator[Connection]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        yield Connection(reader, writer)
    finally:
        writer.close()


async def held(app: HeldApp, client: httpx.AsyncClient) -> asyncio.Task[httpx.Response]:
    """A request that takes the only slot and keeps it until `app.release`."""
    holding = asyncio.create_task(client.get("/hold"))
    async with asyncio.timeout(10):
        while "/hold" not in app.served:
            await asyncio.sleep(0.005)
    return holding


async def test_over_the_limit_the_protocol_answers_503_itself_and_the_connection_goes_on():
    admission = Admission(max_in_flight=1, max_queue=0, max_wait_ms=30)
    app = HeldApp(admission)
    async with (
        serving(app) as (host, port),
        httpx.AsyncClient(base_url=f"http://{host}:{port}") as client,
        connection(host, port) as conn,
    ):
        holding = await held(app, client)
        body = b'{"doctor_id": 1, "note": "' + b"x" * 5000 + b'"}'
        status, headers, answer = await conn.ask(
            "POST /api/appointments HTTP/1.1\nHost: t\nContent-Type: application/json\n"
            f"Content-Length: {len(body)}\n",
            body,
        )
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(answer)["detail"] == BUSY_DETAIL
        assert "connection" not in headers and "date" in headers  # uvicorn's own headers
        # HEAD: the same answer without a body (the next answer reads cleanly after it).
        status, headers, answer = await conn.ask("HEAD /api/x HTTP/1.1\nHost: t\n", read_body=False)
        assert status == 503 and int(headers["content-length"]) > 0
        status, headers, answer = await conn.ask(
            "GET /login HTTP/1.1\nHost: t\nAccept: text/html\n"
        )
        assert (status, answer) == (503, PAGE) and headers["content-type"].startswith("text/html")
        # Probes pass while every slot is taken.
        status, _, answer = await conn.ask("GET /health/live HTTP/1.1\nHost: t\n")
        assert (status, answer) == (200, b"/health/live")
        assert app.served == ["/hold", "/health/live"]  # no refused request reached the app
        app.release.set()
        assert (await holding).status_code == 200
        status, _, answer = await conn.ask("GET /after HTTP/1.1\nHost: t\n")
        assert (status, answer) == (200, b"/after")  # the same connection, admitted again
    assert admission.in_flight == 0


async def test_after_expect_100_continue_a_refusal_closes_the_connection():
    admission = Admission(max_in_flight=1, max_queue=0, max_wait_ms=30)
    app = HeldApp(admission)
    async with (
        serving(app) as (host, port),
        httpx.AsyncClient(base_url=f"http://{host}:{port}") as client,
        connection(host, port) as conn,
    ):
        holding = await held(app, client)
        status, headers, _ = await conn.ask(
            "POST /api/x HTTP/1.1\nHost: t\nContent-Length: 10\nExpect: 100-continue\n"
        )
        assert status == 503 and headers["connection"] == "close"
        assert await asyncio.wait_for(conn.reader.read(), 10) == b""  # closed by the server
        app.release.set()
        await holding
    assert app.served == ["/hold"]


async def test_a_queued_request_runs_once_the_slot_frees_or_is_refused_when_its_wait_ends():
    admission = Admission(max_in_flight=1, max_queue=5, max_wait_ms=10_000)
    app = HeldApp(admission)
    async with (
        serving(app) as (host, port),
        httpx.AsyncClient(base_url=f"http://{host}:{port}") as client,
    ):
        holding = await held(app, client)
        queued = asyncio.create_task(client.get("/queued"))
        async with asyncio.timeout(10):
            while not admission.waiters:
                await asyncio.sleep(0.005)
        assert app.served == ["/hold"]  # waiting at the protocol, not in the app
        app.release.set()
        assert (await holding).status_code == 200
        assert ((await queued).status_code, app.served) == (200, ["/hold", "/queued"])

        app.release.clear()
        app.served.clear()
        admission.max_wait = 0.05
        holding = await held(app, client)
        refused = await client.get("/api/late")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["detail"] == BUSY_DETAIL
        assert "/api/late" not in app.served
        app.release.set()
        await holding
    assert admission.in_flight == 0 and not admission.waiters


async def test_answers_to_pipelined_requests_leave_in_order_when_one_is_refused():
    admission = Admission(max_in_flight=1, max_queue=0, max_wait_ms=30)
    app = HeldApp(admission)
    async with serving(app) as (host, port), connection(host, port) as conn:
        # Both in one write: the second is parsed while the first runs, and refused as
        # the first's answer is sent (its slot is freed only after), while that answer
        # is still waiting for the end of the loop's turn.
        conn.writer.write(
            b"GET /first HTTP/1.1\r\nHost: t\r\n\r\nGET /second HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        status, _, answer = await conn.read()
        assert (status, answer) == (200, b"/first")
        status, headers, _ = await conn.read()
        assert status == 503 and headers["retry-after"] == "1"
    assert app.served == ["/first"]


class CancelledBeforeItBegins(CoalescingHttpToolsProtocol):
    """The protocol, with the task of a request to `/doomed` cancelled as soon as it is
    made: what uvicorn's graceful-shutdown timeout does to every request's task, here at
    the worst moment, after the request was given its slot or queue place and before its
    task first ran."""

    cancelled: list[asyncio.Task] = []

    def _spawn(self, cycle, app):
        task = super()._spawn(cycle, app)
        if cycle.scope["path"] == "/doomed":
            task.cancel()
            self.cancelled.append(task)
        return task


async def cancelled_and_done() -> None:
    async with asyncio.timeout(10):
        while not CancelledBeforeItBegins.cancelled:
            await asyncio.sleep(0.005)
        await asyncio.wait(CancelledBeforeItBegins.cancelled)
    assert all(task.cancelled() for task in CancelledBeforeItBegins.cancelled)
    CancelledBeforeItBegins.cancelled.clear()


async def test_a_request_task_cancelled_before_it_begins_gives_its_slot_back():
    admission = Admission(max_in_flight=1, max_queue=0, max_wait_ms=30)
    app = HeldApp(admission)
    async with (
        serving(app, CancelledBeforeItBegins) as (host, port),
        connection(host, port) as doomed,
        connection(host, port) as conn,
    ):
        doomed.writer.write(b"GET /doomed HTTP/1.1\r\nHost: t\r\n\r\n")
        await doomed.writer.drain()
        await cancelled_and_done()
        assert admission.in_flight == 0  # taken at the protocol, given back once cancelled
        # The only slot is free: the next request runs (a lost slot would refuse it).
        status, _, answer = await conn.ask("GET /after HTTP/1.1\nHost: t\n")
        assert (status, answer) == (200, b"/after")
    assert app.served == ["/after"] and admission.in_flight == 0


async def test_a_queued_request_task_cancelled_before_it_begins_leaves_the_queue():
    admission = Admission(max_in_flight=1, max_queue=5, max_wait_ms=10_000)
    app = HeldApp(admission)
    async with (
        serving(app, CancelledBeforeItBegins) as (host, port),
        httpx.AsyncClient(base_url=f"http://{host}:{port}") as client,
        connection(host, port) as doomed,
    ):
        holding = await held(app, client)
        doomed.writer.write(b"GET /doomed HTTP/1.1\r\nHost: t\r\n\r\n")
        await doomed.writer.drain()
        await cancelled_and_done()
        assert not admission.waiters  # it queued at the protocol, and left once cancelled
        app.release.set()
        assert (await holding).status_code == 200
        # The slot freed by /hold was not handed to the cancelled request.
        assert (await client.get("/after")).status_code == 200
    assert app.served == ["/hold", "/after"] and admission.in_flight == 0


class SlowToResume(Admission):
    """Admission whose queued request's task, once its wait has run out, does not resume
    until `resume` is set: a loop too busy to get back to it."""

    resume: asyncio.Event

    async def turn(self, waiting):
        admitted = await super().turn(waiting)
        if not admitted:
            await self.resume.wait()
        return admitted


async def test_a_queued_request_whose_wait_runs_out_is_answered_from_the_timer():
    """Its 503 goes out when the wait's timer fires, not when its task gets a turn; the
    task then ends without answering again and the connection serves the next request."""
    admission = SlowToResume(max_in_flight=1, max_queue=5, max_wait_ms=50)
    admission.resume = asyncio.Event()
    app = HeldApp(admission)
    async with (
        serving(app) as (host, port),
        httpx.AsyncClient(base_url=f"http://{host}:{port}") as client,
        connection(host, port) as conn,
    ):
        holding = await held(app, client)
        status, headers, body = await conn.ask("GET /api/late HTTP/1.1\nHost: t\n")
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(body)["detail"] == BUSY_DETAIL
        assert not admission.resume.is_set()  # answered while its task was held back
        admission.resume.set()
        app.release.set()
        assert (await holding).status_code == 200
        await asyncio.sleep(0.05)  # the task's end: a second answer would come first
        status, _, answer = await conn.ask("GET /next HTTP/1.1\nHost: t\n")
        assert (status, answer) == (200, b"/next")
    assert app.served == ["/hold", "/next"]
    assert admission.in_flight == 0 and not admission.waiters


async def test_requests_that_hold_their_slots_past_the_service_target_shrink_the_limit():
    # The lag target out of reach, so that only the requests' time moves the limit; the
    # test closes the controller's windows itself (no lag timer runs: `loop` is set).
    admission = Admission(
        max_in_flight=4, max_queue=0, max_wait_ms=30, lag_target_ms=60_000, service_target_ms=20
    )
    admission.loop = asyncio.get_running_loop()
    app = HeldApp(admission)

    async def hold(count: int, client: httpx.AsyncClient) -> list[asyncio.Task[httpx.Response]]:
        before = app.served.count("/hold")
        tasks = [asyncio.create_task(client.get("/hold")) for _ in range(count)]
        async with asyncio.timeout(10):
            while app.served.count("/hold") < before + count:
                await asyncio.sleep(0.005)
        return tasks

    async with (
        serving(app) as (host, port),
        httpx.AsyncClient(base_url=f"http://{host}:{port}") as client,
    ):
        holding = await hold(4, client)
        await asyncio.sleep(0.05)  # each holds its slot longer than the 20 ms target
        app.release.set()
        assert [(await task).status_code for task in holding] == [200] * 4
        admission.observe_lag(0.0, admission.loop.time())  # the window ends
        assert admission.limit == 3

        app.release.clear()
        holding = await hold(3, client)
        refused = await client.get("/api/over")  # a slot of the four is free, not allowed
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "/api/over" not in app.served
        app.release.set()
        assert [(await task).status_code for task in holding] == [200] * 3
    assert admission.in_flight == 0
