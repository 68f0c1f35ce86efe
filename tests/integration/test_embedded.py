"""Embedded mode: a real PostgreSQL and Redis started in a folder, data kept across restarts."""

import asyncio
import dataclasses
import os

import asyncpg
import pytest
import redis as redis_sync

from app import embedded
from db import migrate
from tasks.queue import create_queue


def start_write_stop(folder):
    with embedded.postgres(folder) as pg_url, embedded.redis(folder) as redis_url:
        # Redis listens on a unix socket in the data folder, and on no TCP port.
        assert redis_url == f"unix://{folder / 'redis.sock'}?db=0"
        assert (folder / "redis.sock").is_socket()
        migrate.upgrade(pg_url)

        async def write():
            conn = await asyncpg.connect(pg_url)
            await conn.execute(
                "INSERT INTO clinics (name, timezone) VALUES ('Kept', 'Europe/Berlin')"
            )
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM pg_extension WHERE extname = 'btree_gist'"
                )
                == 1
            )
            await conn.close()

        asyncio.run(write())
        client = redis_sync.Redis.from_url(redis_url)
        assert client.config_get("port") == {"port": "0"}
        client.set("kept", "yes")
        client.close()


def start_read_stop(folder):
    with embedded.postgres(folder) as pg_url, embedded.redis(folder) as redis_url:
        assert redis_url == f"unix://{folder / 'redis.sock'}?db=0"

        async def read():
            conn = await asyncpg.connect(pg_url)
            names = await conn.fetch("SELECT name FROM clinics")
            await conn.close()
            return [r["name"] for r in names]

        names = asyncio.run(read())
        client = redis_sync.Redis.from_url(redis_url)
        value = client.get("kept")
        client.close()
        return names, value


def test_data_survives_a_restart(tmp_path):
    folder = tmp_path / "var"
    start_write_stop(folder)
    assert (folder / "postgres" / "PG_VERSION").exists()
    assert (folder / "redis.db").exists()  # the dump is in the data folder too
    assert not (folder / "redis.sock").exists()  # removed when the server stopped
    names, value = start_read_stop(folder)
    assert names == ["Kept"]
    assert value == b"yes"


def test_stopping_ends_both_servers_even_with_clients_attached(tmp_path):
    import psutil

    folder = tmp_path / "var"
    with embedded.redis(folder) as redis_url:
        client = redis_sync.Redis.from_url(redis_url)
        client.ping()  # a client still attached when the block ends
        pid = int(client.info("server")["process_id"])
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def test_the_job_queue_runs_over_the_socket(tmp_path, settings):
    """SAQ's own from_url refuses unix://; tasks/queue.py builds clients that take it."""
    with embedded.redis(tmp_path / "var") as redis_url:
        queue = create_queue(dataclasses.replace(settings, redis_url=redis_url))
        await queue.connect()
        try:
            await queue.enqueue("heartbeat", key="over-the-socket")
            job = await queue.dequeue(timeout=1)
            assert job is not None and job.key == "over-the-socket"
            assert await queue.dequeue(timeout=0.1) is None
        finally:
            await queue.disconnect()


def test_a_data_folder_too_deep_for_a_socket_gets_a_short_one(tmp_path):
    folder = tmp_path / ("d" * 60) / ("e" * 60) / "var"
    assert len(os.fsencode(folder / "redis.sock")) > 107
    with embedded.redis(folder) as redis_url:
        path = redis_url.removeprefix("unix://").removesuffix("?db=0")
        assert len(os.fsencode(path)) <= 107
        client = redis_sync.Redis.from_url(redis_url)
        client.set("deep", "ok")
        client.close()
    assert (folder / "redis.db").exists()  # the data still lives in the data folder
    assert not os.path.exists(path)


def test_a_second_redis_on_the_same_data_folder_is_refused(tmp_path):
    folder = tmp_path / "var"
    with embedded.redis(folder) as first:
        with pytest.raises(embedded.EmbeddedError, match="already running"):  # noqa: SIM117
            with embedded.redis(folder):
                pass
        assert redis_sync.Redis.from_url(first).ping()  # the first one is untouched


def test_a_socket_left_by_a_killed_run_is_replaced(tmp_path):
    import socket

    folder = tmp_path / "var"
    folder.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(folder / "redis.sock"))  # bound, never listening: nobody answers
    stale.close()
    with embedded.redis(folder) as redis_url:
        assert redis_sync.Redis.from_url(redis_url).ping()


async def test_the_slow_query_page_has_statements_with_no_setup(tmp_path):
    """Zero-setup mode: pg_stat_statements is preloaded and created in the database, so
    the admin's /admin/queries lists statements instead of how to enable it."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from app.analytics.query_stats import top_statements
    from app.settings import async_database_url

    with embedded.postgres(tmp_path / "var") as pg_url:
        conn = await asyncpg.connect(pg_url)
        try:
            assert "pg_stat_statements" in await conn.fetchval("SHOW shared_preload_libraries")
            await conn.execute("SELECT 1 AS medbook_probe")
        finally:
            await conn.close()
        engine = create_async_engine(async_database_url(pg_url))
        try:
            async with AsyncSession(engine) as session:
                stats = await top_statements(session, top=50)
        finally:
            await engine.dispose()
    assert stats.unavailable is None
    assert any("medbook_probe" in s.query for s in stats.by_total)
