"""PostgreSQL or Redis unreachable: bookings, lists, login, password reset and pages
answer 503 with Retry-After (pages in words), never 500; when the service is back the
app recovers by itself."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import socket
import threading
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import httpx
from litestar import get
from litestar.testing import AsyncTestClient

from app.access.browser_sessions import COOKIE_NAME, create_session
from app.settings import Settings
from app.web.asgi import create_app
from app.web.guards import PUBLIC
from conftest import OwnRedis, free_port
from tests.integration.world import PASSWORD, World, at, day_after_tomorrow, make_world

PAGE = {"Accept": "text/html"}
CSRF = "outage-test-csrf-token"
ANONYMOUS_FORM = {**PAGE, "Cookie": f"medbook_csrf={CSRF}"}  # the double-submit cookie
DOWN_WORDS = "medbook is briefly unavailable"


class Proxy:
    """A TCP relay to a server that we can cut and restore: the machine's PostgreSQL,
    shared with others, seen going down and coming back without being touched."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.listener: socket.socket | None = None
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()

    def start(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and drop the open ones, as a crashed server would."""
        if self.listener is not None:
            _close(self.listener)  # shutdown() wakes the thread blocked in accept()
            self.listener = None
        with self.lock:
            open_sockets, self.sockets = self.sockets, set()
        for sock in open_sockets:
            _close(sock)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_relay, args=(source, sink), daemon=True).start()


def _relay(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def through(url: str, port: int) -> str:
    """The database URL with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return parts._replace(netloc=f"{user}@127.0.0.1:{port}").geturl()


@contextlib.asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[AsyncTestClient]:
    """A client that keeps no cookies: each request names its own."""
    async with AsyncTestClient(app=create_app(settings)) as client:
        client.follow_redirects = False
        client.cookies = NoCookies()
        yield client


class NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        pass


def signed_in(session_id: str) -> dict[str, str]:
    return {**PAGE, "Cookie": f"{COOKIE_NAME}={session_id}"}


def booking(world: World, hour: int) -> dict[str, object]:
    start = at(day_after_tomorrow(), hour).isoformat()
    return {"doctor_id": world.doctor_id, "start": start}


def assert_unavailable(response, *, page: bool = False) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    if page:
        assert "text/html" in response.headers["content-type"]
        assert DOWN_WORDS in response.text and "try again" in response.text
    else:
        assert "briefly unavailable" in response.json()["detail"]


async def test_postgres_unreachable_is_503_and_the_app_recovers(
    settings, session, redis, database_url
):
    world = await make_world(session, settings.secret_key, patients=1)
    await session.close()
    host = urlsplit(database_url)
    proxy = Proxy((host.hostname or "127.0.0.1", host.port or 5432))
    proxy.start()
    patient = world.headers("patient0")
    cookie = (await create_session(redis, world.users["patient0"].id, "Patient 0")).session_id
    through_proxy = dataclasses.replace(
        settings, database_url=through(settings.database_url, proxy.port), db_pool_timeout=2
    )
    try:
        async with app_client(through_proxy) as client:
            first = await client.post("/api/appointments", json=booking(world, 9), headers=patient)
            assert first.status_code == 201

            proxy.cut()
            # Twice each: once on the pooled connection the cut killed, once on a new
            # connection the database refuses.
            for _ in range(2):
                assert_unavailable(
                    await client.post("/api/appointments", json=booking(world, 10), headers=patient)
                )
                assert_unavailable(await client.get("/api/appointments", headers=patient))
                assert_unavailable(
                    await client.get("/me/appointments", headers=signed_in(cookie)),
                    page=True,
                )

            proxy.start()
            back = await client.post("/api/appointments", json=booking(world, 11), headers=patient)
            assert back.status_code == 201
            listed = await client.get("/api/appointments", headers=patient)
            assert listed.status_code == 200
            page = await client.get("/me/appointments", headers=signed_in(cookie))
            assert page.status_code == 200
    finally:
        proxy.cut()
    conn = await asyncpg.connect(database_url)
    try:  # nothing half-done: the two bookings answered 201, and only those
        starts = await conn.fetch("SELECT starts_at FROM appointments ORDER BY starts_at")
    finally:
        await conn.close()
    assert [r["starts_at"] for r in starts] == [at(day_after_tomorrow(), h) for h in (9, 11)]


async def login(client: AsyncTestClient, email: str, password: str):
    return await client.post(
        "/login",
        data={"email": email, "password": password, "csrf_token": CSRF},
        headers=ANONYMOUS_FORM,
    )


async def test_redis_unreachable_is_503_and_the_app_recovers(settings, session, tmp_path):
    world = await make_world(session, settings.secret_key, patients=1)
    await session.close()
    email = world.users["patient0"].email
    own = OwnRedis(tmp_path)
    own.start()
    try:
        async with app_client(dataclasses.replace(settings, redis_url=own.url)) as client:
            first = await login(client, email, PASSWORD)
            assert first.status_code == 303
            cookie = signed_in(first.cookies[COOKIE_NAME])

            own.stop()
            assert_unavailable(await login(client, email, PASSWORD), page=True)
            reset = await client.post(
                "/password-reset",
                data={"email": email, "csrf_token": CSRF},
                headers=ANONYMOUS_FORM,
            )
            assert_unavailable(reset, page=True)
            assert_unavailable(await client.get("/me/appointments", headers=cookie), page=True)
            token = await client.post(
                "/api/auth/token", json={"email": email, "password": PASSWORD}
            )
            assert_unavailable(token)

            own.start()  # the same port and data: the session survived
            page = await client.get("/me/appointments", headers=cookie)
            assert page.status_code == 200
            assert (await login(client, email, PASSWORD)).status_code == 303
    finally:
        own.stop()


@get("/test-only/disk-full", opt=PUBLIC, sync_to_thread=False)
def disk_full() -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


async def test_other_errors_of_the_same_types_stay_500(db, redis, settings):
    """An OSError that is no dependency's outage (a full disk) is a bug's 500, not a 503
    that would tell the client to wait it out."""
    app = create_app(settings)
    app.register(disk_full)
    async with AsyncTestClient(app=app) as client:
        answer = await client.get("/test-only/disk-full")
    assert answer.status_code == 500
    assert "retry-after" not in answer.headers


async def test_the_503_page_speaks_the_language_asked_for(settings, session, tmp_path):
    """Redis down while authenticating: no Principal and no saved language, yet the page
    answers in the cookie's or Accept-Language's language, `<html lang>` with it."""
    world = await make_world(session, settings.secret_key, patients=1)
    await session.close()
    own = OwnRedis(tmp_path)
    own.start()
    try:
        async with app_client(dataclasses.replace(settings, redis_url=own.url)) as client:
            first = await login(client, world.users["patient0"].email, PASSWORD)
            assert first.status_code == 303
            session_cookie = f"{COOKIE_NAME}={first.cookies[COOKIE_NAME]}"
            own.stop()
            german = await client.get(
                "/me/appointments",
                headers={**PAGE, "Cookie": session_cookie, "Accept-Language": "de-DE,de;q=0.9"},
            )
            by_cookie = await client.get(
                "/me/appointments",
                headers={**PAGE, "Cookie": f"{session_cookie}; medbook_lang=de"},
            )
            english = await client.get(
                "/me/appointments", headers={**PAGE, "Cookie": session_cookie}
            )
    finally:
        own.stop()
    for answer in (german, by_cookie):
        assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
        assert '<html lang="de">' in answer.text
        assert "medbook ist gerade nicht erreichbar" in answer.text
        assert "Warten Sie 5 Sekunden" in answer.text and DOWN_WORDS not in answer.text
    assert_unavailable(english, page=True)
    assert '<html lang="en">' in english.text
