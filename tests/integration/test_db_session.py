"""Connections: validation (M-5), per-connection limits (S-4), the slow-query log (S-5).

Validation: idle connections are pinged on checkout, busy ones are not.

A real PostgreSQL backend is killed with pg_terminate_backend while its connection sits in
the pool; the next checkout must notice and hand out a working connection instead.
"""

import asyncio
import dataclasses
import logging
import re

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from db.session import create_engine, driver_fetchrow

# What asyncpg raises on a connection whose backend is gone, by how far it got to notice.
DRIVER_CONNECTION_ERRORS = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)
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


# --- per-connection limits (S-4), application_name and the slow-query log (S-5) ---------


async def test_every_connection_carries_its_timeouts_and_name(settings):
    limits = dataclasses.replace(
        settings, statement_timeout_ms=1234, idle_in_transaction_timeout_ms=4321
    )
    pooled = create_engine(limits, application_name="medbook-limits-test")
    try:
        async with pooled.connect() as conn:
            assert await conn.scalar(text("SHOW statement_timeout")) == "1234ms"
            assert await conn.scalar(text("SHOW idle_in_transaction_session_timeout")) == "4321ms"
            assert await conn.scalar(text("SHOW application_name")) == "medbook-limits-test"
            # What the server shows other sessions (and the DBA) for this connection.
            seen = await conn.scalar(
                text("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()")
            )
            assert seen == "medbook-limits-test"
    finally:
        await pooled.dispose()


async def test_a_longer_limit_for_analytics_overrides_the_default(settings):
    pooled = create_engine(settings, statement_timeout_ms=60000)
    try:
        async with pooled.connect() as conn:
            assert await conn.scalar(text("SHOW statement_timeout")) == "1min"
    finally:
        await pooled.dispose()


async def test_a_statement_past_its_limit_is_cancelled(settings):
    pooled = create_engine(dataclasses.replace(settings, statement_timeout_ms=100))
    try:
        async with pooled.connect() as conn:
            with pytest.raises(DBAPIError, match="statement timeout"):
                await conn.execute(text("SELECT pg_sleep(5)"))
    finally:
        await pooled.dispose()


async def test_a_transaction_left_idle_is_ended_by_the_server(settings):
    pooled = create_engine(dataclasses.replace(settings, idle_in_transaction_timeout_ms=100))
    # The observer has the default timeout: a new connection's set-up runs in a transaction
    # too, and under load its steps can be 100 ms apart (the server then ended it, a flake).
    observer = create_engine(settings)
    try:
        async with pooled.connect() as conn:
            await conn.execute(text("SELECT 1"))  # opens the transaction (autobegin)
            pid = await conn.scalar(text("SELECT pg_backend_pid()"))
            await asyncio.sleep(0.2)
            # The server ends the session 100 ms into the idle transaction; poll (with a
            # deadline) from another connection until it is gone rather than guess a sleep.
            async with observer.connect() as other:
                for _ in range(100):
                    alive = await other.scalar(
                        text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"),
                        {"pid": pid},
                    )
                    if not alive:
                        break
                    await asyncio.sleep(0.1)
                assert not alive
            with pytest.raises(DBAPIError):
                await conn.execute(text("SELECT 1"))
    finally:
        await pooled.dispose()
        await observer.dispose()


async def test_a_slow_statement_is_logged_with_its_duration(settings, caplog):
    pooled = create_engine(dataclasses.replace(settings, slow_query_ms=100))
    try:
        with caplog.at_level(logging.WARNING, logger="medbook.slow_query"):
            async with pooled.connect() as conn:
                await conn.execute(text("SELECT pg_sleep(:seconds)"), {"seconds": 0.25})
    finally:
        await pooled.dispose()
    slow = [r for r in caplog.records if r.name == "medbook.slow_query"]
    assert len(slow) == 1
    message = slow[0].getMessage()
    match = re.fullmatch(r"slow query (\d+\.\d) ms: (.*)", message)
    assert match, message
    assert float(match.group(1)) >= 250  # pg_sleep waits at least that long
    assert "pg_sleep" in match.group(2)
    assert "0.25" not in match.group(2)  # values are bound, never written to the log


async def test_the_slow_query_log_can_be_turned_off(settings, caplog):
    pooled = create_engine(dataclasses.replace(settings, slow_query_ms=0))
    try:
        with caplog.at_level(logging.DEBUG, logger="medbook.slow_query"):
            async with pooled.connect() as conn:
                await conn.execute(text("SELECT pg_sleep(0.1)"))
    finally:
        await pooled.dispose()
    assert [r for r in caplog.records if r.name == "medbook.slow_query"] == []


async def test_a_slow_driver_statement_is_logged_too(settings, caplog):
    """The availability miss path runs its statement through asyncpg directly
    (driver_fetchrow): the slow-query log still sees it, without its values."""
    # A limit far above what `SELECT 1` takes even on a loaded machine (at 100 ms, one took
    # 140 ms at the end of a full run and was rightly logged too).
    pooled = create_engine(dataclasses.replace(settings, slow_query_ms=1000))
    try:
        with caplog.at_level(logging.WARNING, logger="medbook.slow_query"):
            row = await driver_fetchrow(pooled, "SELECT pg_sleep($1), 7 AS seven", 1.05)
            fast = await driver_fetchrow(pooled, "SELECT 1")
    finally:
        await pooled.dispose()
    assert row["seven"] == 7 and fast[0] == 1
    slow = [r.getMessage() for r in caplog.records if r.name == "medbook.slow_query"]
    assert len(slow) == 1, slow
    match = re.fullmatch(r"slow query (\d+\.\d) ms: (.*)", slow[0])
    assert match and float(match.group(1)) >= 1050 and "pg_sleep($1)" in match.group(2)


async def test_a_driver_statement_on_a_killed_backend_replaces_the_connection(settings, engine):
    """A pooled connection whose backend died (within the no-ping window) fails its
    statement; it is invalidated, so the next checkout gets a new backend instead of
    failing again."""
    pooled = create_engine(dataclasses.replace(settings, db_pool_size=1, db_max_overflow=0))
    try:
        pid = (await driver_fetchrow(pooled, "SELECT pg_backend_pid()"))[0]
        await terminate(engine, pid)
        with pytest.raises(DRIVER_CONNECTION_ERRORS):
            await driver_fetchrow(pooled, "SELECT 1")
        fresh = (await driver_fetchrow(pooled, "SELECT pg_backend_pid()"))[0]
        assert fresh != pid
        assert pooled.sync_engine.pool.checkedout() == 0  # every checkout went back
    finally:
        await pooled.dispose()
