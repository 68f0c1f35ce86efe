"""An exhausted connection pool answers 503 with Retry-After, never a 500."""

import asyncio

import asyncpg
import httpx

from conftest import LiveServer
from tests.integration.world import make_world


async def test_pool_exhaustion_is_503(settings, session, redis, database_url):
    world = await make_world(session, settings.secret_key, patients=1)
    await session.close()
    headers = world.headers("patient0")
    server = LiveServer(env={"DB_POOL_SIZE": "1", "DB_MAX_OVERFLOW": "0", "DB_POOL_TIMEOUT": "0.3"})
    locker = None
    try:
        locker = await asyncpg.connect(database_url)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            assert (await client.get("/api/clinics", headers=headers)).status_code == 200
            tx = locker.transaction()
            await tx.start()
            await locker.execute("LOCK TABLE clinics IN ACCESS EXCLUSIVE MODE")

            async def second():
                await asyncio.sleep(0.3)  # the first request now holds the only connection
                return await client.get("/api/clinics", headers=headers)

            async def release():
                await asyncio.sleep(1.5)
                await tx.rollback()

            first, busy, _ = await asyncio.gather(
                client.get("/api/clinics", headers=headers), second(), release()
            )
    finally:
        if locker is not None:
            await locker.close()
        server.stop()
    assert busy.status_code == 503
    assert busy.headers["retry-after"] == "1"
    assert "busy" in busy.json()["detail"]
    assert first.status_code == 200  # it waited for the lock and then answered
