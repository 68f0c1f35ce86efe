"""Which failures reach the error log: a 5xx (a bug) with its traceback; an expected 4xx
answer (a taken slot, a bad query, a rate limit) never; nor a client that hangs up. SAQ's
line per enqueued job follows LOG_LEVEL."""

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
import websockets
from litestar import Litestar, get
from litestar.testing import AsyncTestClient

from app.services import Services
from app.web.asgi import create_app
from app.web.guards import PUBLIC
from conftest import free_port
from tests.integration.notification_servers import eventually
from tests.integration.notification_world import book_api
from tests.integration.test_records import add_appointment
from tests.integration.world import at, day_after_tomorrow, make_world


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.awaited: dict[str, asyncio.Event] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        for text, event in self.awaited.items():
            if text in record.getMessage():
                event.set()

    def logged(self, text: str) -> asyncio.Event:
        """Set once a record containing `text` arrives (loggers call handlers in-thread)."""
        return self.awaited.setdefault(text, asyncio.Event())

    def errors(self) -> list[str]:
        return [logging.Formatter().format(r) for r in self.records if r.levelno >= logging.ERROR]


@asynccontextmanager
async def captured(*names: str) -> AsyncIterator[Captured]:
    log = Captured()
    for name in names:
        logging.getLogger(name).addHandler(log)
    try:
        yield log
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(log)


@get("/test-only/boom", opt=PUBLIC, sync_to_thread=False)
def boom() -> None:
    raise RuntimeError("a bug")


async def test_4xx_answers_are_not_logged_as_errors_and_5xx_are(db, redis, session, settings):
    world = await make_world(session, settings.secret_key, patients=2)
    app = create_app(settings)
    app.register(boom)
    # Litestar's logging config replaces the root handlers (and so pytest's caplog).
    log = Captured()
    litestar_log = logging.getLogger("litestar")
    litestar_log.addHandler(log)
    try:
        async with AsyncTestClient(app=app) as client:
            slot = {"doctor_id": world.doctor_id, "start": f"{day_after_tomorrow()}T10:00:00+01:00"}
            first = await client.post(
                "/api/appointments", json=slot, headers=world.headers("patient0")
            )
            taken = await client.post(
                "/api/appointments", json=slot, headers=world.headers("patient1")
            )
            bad = await client.get(
                "/api/appointments/available-slots",
                params={"doctor_id": "x", "date": "2026-01-01"},
                headers=world.headers("patient0"),
            )
            anonymous = await client.get("/api/auth/me")
            missing = await client.get("/api/no-such-thing", headers=world.headers("patient0"))
            past = {"doctor_id": world.doctor_id, "start": "2020-01-06T10:00:00+01:00"}
            too_soon = await client.post(
                "/api/appointments", json=past, headers=world.headers("patient1")
            )
            assert (taken.status_code, bad.status_code, anonymous.status_code) == (409, 400, 401)
            assert too_soon.status_code == 422, too_soon.text
            assert first.status_code in (201, 422) and missing.status_code == 404
            assert [r for r in log.records if r.levelno >= logging.ERROR] == []

            failed = await client.get("/test-only/boom")
    finally:
        litestar_log.removeHandler(log)
    assert failed.status_code == 500
    errors = [logging.Formatter().format(r) for r in log.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "/test-only/boom" in errors[0]
    assert "Traceback" in errors[0] and "RuntimeError: a bug" in errors[0]


@asynccontextmanager
async def serving(app: Litestar) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """The app behind a real uvicorn on a free port, in this process: a test client never
    hangs up the way a browser does."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="info"))
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: _started(server))
        yield f"127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        await task


async def _started(server: uvicorn.Server) -> bool:
    return server.started


async def test_a_client_that_hangs_up_is_not_an_error(db, redis, session, settings):
    world = await make_world(session, settings.secret_key, patients=1)
    patient = world.patients[0]
    await add_appointment(session, world, patient, "booked", 9)
    await session.commit()
    app = create_app(dataclasses.replace(settings, log_level="INFO"))
    doctor = world.headers("doctor")
    async with serving(app) as (address, server), captured("", "litestar") as log:
        hub = Services.of(app).hub
        assert hub is not None
        # A browser that closes the live page, and one whose connection just drops.
        socket_url = (
            f"ws://{address}/ws/live?view=slots&doctor_id={world.doctor_id}"
            f"&date={day_after_tomorrow()}"
        )
        origin = {**world.headers("patient0"), "Origin": settings.public_origin}
        for close in ("close", "drop"):
            socket = await websockets.connect(socket_url, additional_headers=origin)
            assert "<" in str(await socket.recv())  # the view: the server is sending
            if close == "close":
                await socket.close()
            else:
                socket.transport.abort()
            await eventually(lambda: _no_sockets(hub))
        # One that leaves before its handshake is accepted: the server is still checking
        # who may watch what (database reads) when the connection goes.
        left = log.logged("client hung up on a websocket")
        reader, writer = await asyncio.open_connection(*address.split(":"))
        upgrade = (
            f"GET {urlsplit(socket_url).path}?{urlsplit(socket_url).query} HTTP/1.1\r\n"
            f"Host: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in origin.items())
            + "\r\n"
        )
        writer.write(upgrade.encode())
        await writer.drain()
        writer.transport.abort()
        await asyncio.wait_for(left.wait(), 30)
        await eventually(lambda: _no_sockets(hub))

        # An upload whose sender hangs up halfway through the body.
        hung_up = log.logged("hung up mid-request")
        reader, writer = await asyncio.open_connection(*address.split(":"))
        head = (
            f"POST /api/patients/{patient}/records HTTP/1.1\r\nHost: {address}\r\n"
            f"Authorization: {doctor['Authorization']}\r\n"
            "Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 5000000\r\n\r\n"
            '--B\r\nContent-Disposition: form-data; name="file"; filename="a.pdf"\r\n\r\n'
        )
        writer.write(head.encode() + b"%PDF-" + b"0" * 100_000)
        await writer.drain()
        writer.transport.abort()
        await asyncio.wait_for(hung_up.wait(), 30)

        # A download the client stops reading and drops.
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            big = b"%PDF-1.4 " + b"0" * 4_000_000
            form = {"record_type": "note", "title": "A long scan"}
            files = {"file": ("scan.pdf", big, "application/pdf")}
            uploaded = await client.post(
                f"/api/patients/{patient}/records", headers=doctor, files=files, data=form
            )
            assert uploaded.status_code == 201, uploaded.text
            listed = await client.get(f"/api/patients/{patient}/records", headers=doctor)
            url = urlsplit(listed.json()["records"][0]["document_url"])
        reader, writer = await asyncio.open_connection(*address.split(":"))
        writer.write(f"GET {url.path}?{url.query} HTTP/1.1\r\nHost: {address}\r\n\r\n".encode())
        await writer.drain()
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        writer.transport.abort()
        await eventually(lambda: _no_connections(server))

    assert log.errors() == []
    hung_up_lines = [r.levelname for r in log.records if "hung up" in r.getMessage()]
    # Litestar reports the handshake hang-up from two of its exception layers.
    assert hung_up_lines == ["INFO", "INFO", "INFO"]


async def _no_sockets(hub) -> bool:  # type: ignore[no-untyped-def]
    return hub.open_sockets == 0


async def _no_connections(server: uvicorn.Server) -> bool:
    return not server.server_state.connections


@pytest.mark.parametrize(("level", "logged"), [("WARNING", False), ("INFO", True)])
async def test_job_enqueue_lines_follow_log_level(db, redis, session, settings, level, logged):
    world = await make_world(session, settings.secret_key, patients=1)
    root_level = logging.getLogger().level
    app = create_app(dataclasses.replace(settings, log_level=level))
    try:
        async with AsyncTestClient(app=app) as client, captured("saq") as log:
            # A booking asks the worker for a notification dispatch after its commit.
            await book_api(client, world, at(day_after_tomorrow(), 10))
            await eventually(lambda: redis.keys("saq:job:medbook:notify:dispatch:*"))
            # SAQ logs "Enqueuing" after its enqueue script returns, so the job's key can
            # be seen before the line: wait for the line where it is due, and where it is
            # not, the logger must not even be enabled for it (no record is ever made).
            if logged:

                async def the_line() -> list[logging.LogRecord]:
                    return enqueue_lines(log)

                await eventually(the_line)
            saq_at_info = logging.getLogger("saq").isEnabledFor(logging.INFO)
    finally:
        logging.getLogger().setLevel(root_level)
    assert bool(enqueue_lines(log)) == logged
    assert saq_at_info == logged


def enqueue_lines(log: Captured) -> list[logging.LogRecord]:
    return [r for r in log.records if r.getMessage().startswith("Enqueuing")]


def test_the_worker_logs_at_log_level(settings, monkeypatch):
    import tasks.worker

    root_level = logging.getLogger().level
    monkeypatch.setattr(
        tasks.worker, "get_settings", lambda: dataclasses.replace(settings, log_level="WARNING")
    )
    try:
        tasks.worker.worker_settings()
        assert not logging.getLogger("saq").isEnabledFor(logging.INFO)
    finally:
        logging.getLogger().setLevel(root_level)
