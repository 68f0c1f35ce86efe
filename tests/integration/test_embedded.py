"""Embedded mode: a real PostgreSQL and Redis started in a folder, data kept across restarts."""

import asyncio

import asyncpg
import redis as redis_sync

from app import embedded
from db import migrate


def start_write_stop(folder):
    with embedded.postgres(folder) as pg_url, embedded.redis(folder) as redis_url:
        assert redis_url.startswith("redis://127.0.0.1:")  # broadcaster and SAQ need TCP
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
        client.set("kept", "yes")
        client.close()


def start_read_stop(folder):
    with embedded.postgres(folder) as pg_url, embedded.redis(folder) as redis_url:

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
