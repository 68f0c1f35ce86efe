"""PostgreSQL refusing a new connection ("too many connections", SQLSTATE 53300) while the
pool opens one beyond its size: every request of the mix that met it answers 503 with
Retry-After, never 500. The server connects as a role of its own with a connection limit
(superusers ignore such limits), so PostgreSQL itself refuses, as it does when
max_connections is taken by everyone's servers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from app.settings import async_database_url
from app.web.asgi import warm_pool
from conftest import LiveServer
from db.session import create_engine
from tests.integration.world import PASSWORD, at, day_after_tomorrow, make_world


@contextlib.asynccontextmanager
async def limited_role(database_url: str, limit: int):
    """A login role allowed `limit` connections, with read and write rights on every
    table (PostgreSQL's predefined roles); its URL, dropped at the end."""
    name = f"medbook_limited_{secrets.token_hex(4)}"
    password = secrets.token_hex(8)
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(
            f"CREATE ROLE {name} LOGIN PASSWORD '{password}' CONNECTION LIMIT {limit}"
        )
        await admin.execute(f"GRANT pg_read_all_data, pg_write_all_data TO {name}")
        parts = urlsplit(database_url)
        host = parts.netloc.rsplit("@", 1)[-1]
        yield urlunsplit(parts._replace(netloc=f"{name}:{password}@{host}"))
    finally:
        with contextlib.suppress(asyncpg.PostgresError):
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", name
            )
        await admin.execute(f"DROP ROLE IF EXISTS {name}")
        await admin.close()


async def test_postgres_refusing_a_new_connection_is_503_on_every_route(
    settings, session, redis, database_url
):
    world = await make_world(session, settings.secret_key, patients=4)
    await session.close()
    day = day_after_tomorrow()
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(limited_role(database_url, limit=1))
        env = {
            "DATABASE_URL": url,
            "DB_POOL_SIZE": "1",  # the one connection the role may have, opened at start
            "DB_MAX_OVERFLOW": "10",  # each further one refused by PostgreSQL
            "ADMISSION_MAX_IN_FLIGHT": "100",
            "RATE_LIMIT_AUTH_PER_MINUTE": "1000",
        }
        server = LiveServer(env=env)
        stack.callback(server.stop)
        client = await stack.enter_async_context(httpx.AsyncClient(base_url=server.url, timeout=60))
        signed_in = await client.post(
            "/api/auth/token", json={"email": "p0@t.test", "password": PASSWORD}
        )
        assert signed_in.status_code == 200
        refresh_token = signed_in.json()["refresh_token"]

        patient, doctor, desk = (world.headers(n) for n in ("patient1", "doctor", "desk"))
        of_doctor = f"doctor_id={world.doctor_id}&date={day.isoformat()}"
        requests = []
        for i in range(4):
            when = at(day, 8 + i).isoformat()
            requests += [
                ("GET", f"/api/appointments/available-slots?{of_doctor}", patient, None),
                ("GET", "/api/appointments", world.headers(f"patient{i}"), None),
                ("GET", f"/api/appointments?{of_doctor}", doctor, None),
                ("GET", f"/api/appointments?clinic_id={world.clinic_id}&date={day}", desk, None),
                ("GET", f"/api/patients/{world.patients[i]}/records", doctor, None),
                (
                    "POST",
                    "/api/appointments",
                    world.headers(f"patient{i}"),
                    {"doctor_id": world.doctor_id, "start": when},
                ),
                ("POST", "/api/auth/token", {}, {"email": f"p{i}@t.test", "password": PASSWORD}),
                ("POST", "/api/auth/refresh", {}, {"refresh_token": refresh_token}),
                ("GET", "/api/auth/me", patient, None),
                ("GET", "/", {"Accept": "text/html"}, None),
            ]

        async def ask(method, path, headers, body):
            response = await client.request(method, path, headers=headers, json=body)
            return method, path, response

        answers = await asyncio.gather(*(ask(*r) for r in requests * 3))
    statuses = [(m, p.split("?")[0], r.status_code) for m, p, r in answers]
    errors = [s for s in statuses if s[2] >= 500 and s[2] != 503]
    assert not errors, errors
    refused = [r for _, _, r in answers if r.status_code == 503]
    assert refused, "PostgreSQL refused no connection: the test proves nothing"
    assert all(r.headers.get("retry-after") for r in refused)


async def test_a_server_starting_while_postgres_refuses_connections_only_logs(
    settings, database_url, caplog
):
    async with limited_role(database_url, limit=0) as url:  # every connection refused
        engine = create_engine(dataclasses.replace(settings, database_url=async_database_url(url)))
        try:
            await warm_pool(engine, 2)  # the server starts; /health/ready says not ready
        finally:
            await engine.dispose()
    assert "database not reachable at start" in caplog.text
    assert "too many connections" in caplog.text
