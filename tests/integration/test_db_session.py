"""Connection validation (M-5): idle connections are pinged on checkout, busy ones are not.

A real PostgreSQL backend is killed with pg_terminate_backend while its connection sits in
the pool; the next checkout must notice and hand out a working connection instead.
"""

import asyncio

from sqlalchemy import text

from db.session import create_engine

IDLE = 0.3  # seconds: a short alive-bypass window, so the test need not wait long


async def backend_pid(engine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text("SELECT pg_backend_pid()")))


async def terminate(admin_engine, pid: int) -> None:
    async with admin_engine.connect() as conn:
        assert await conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


def count_pings(engine) -> list[int]:
    pings: list[int] = []
    real_ping = engine.dialect.do_ping

    def counting_ping(dbapi_connection):
        pings.append(1)
        return real_ping(dbapi_connection)

    engine.dialect.do_ping = counting_ping
    return pings


async def test_a_connection_killed_while_idle_is_replaced_on_checkout(settings, engine):
    pooled = create_engine(settings, ping_after_idle_seconds=IDLE)
    try:
        pings = count_pings(pooled)
        first = await backend_pid(pooled)
        await terminate(engine, first)
        await asyncio.sleep(IDLE * 2)
        second = await backend_pid(pooled)  # would raise without the ping on checkout
        assert second != first
        assert len(pings) == 1
    finally:
        await pooled.dispose()


async def test_a_connection_back_a_moment_ago_is_not_pinged(settings):
    pooled = create_engine(settings, ping_after_idle_seconds=60)
    try:
        pings = count_pings(pooled)
        pids = {await backend_pid(pooled) for _ in range(5)}
        assert len(pids) == 1  # the same pooled connection each time
        assert pings == []
    finally:
        await pooled.dispose()


async def test_a_connection_idle_past_the_window_is_pinged_once_and_kept(settings):
    pooled = create_engine(settings, ping_after_idle_seconds=IDLE)
    try:
        pings = count_pings(pooled)
        first = await backend_pid(pooled)
        await asyncio.sleep(IDLE * 2)
        assert await backend_pid(pooled) == first  # alive: kept, not replaced
        assert len(pings) == 1
    finally:
        await pooled.dispose()
