"""An exhausted connection pool answers 503 with Retry-After, never a 500."""

import asyncio
import contextlib

import asyncpg

from tests.integration.test_admission import server_and_locker
from tests.integration.world import make_world


async def backend_waiting_for_lock(conn: asyncpg.Connection) -> None:
    """Return once a web server's backend waits for a lock (no event tells us so: poll)."""
    async with asyncio.timeout(60):
        while not await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'medbook-web'"
            " AND wait_event_type = 'Lock'"
        ):
            await asyncio.sleep(0.02)


async def test_pool_exhaustion_is_503(settings, session, redis, database_url):
    world = await make_world(session, settings.secret_key, patients=1)
    await session.close()
    env = {
        "DB_POOL_SIZE": "1",
        "DB_MAX_OVERFLOW": "0",
        "DB_POOL_TIMEOUT": "0.3",
        # Admission would otherwise allow one request in flight (the pool's size) and
        # answer the second itself: this test is about the pool's own limit.
        "ADMISSION_MAX_IN_FLIGHT": "10",
    }
    headers = world.headers("patient0")
    async with contextlib.AsyncExitStack() as stack:
        client, locker = await server_and_locker(stack, env, database_url)
        assert (await client.get("/api/clinics", headers=headers)).status_code == 200
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE clinics IN ACCESS EXCLUSIVE MODE")
        first = asyncio.create_task(client.get("/api/clinics", headers=headers))
        await backend_waiting_for_lock(locker)  # it holds the only connection
        busy = await client.get("/api/clinics", headers=headers)
        await tx.rollback()
        done = await first
    assert busy.status_code == 503
    assert busy.headers["retry-after"] == "1"
    assert "busy" in busy.json()["detail"]
    assert done.status_code == 200  # it waited for the lock and then answered
