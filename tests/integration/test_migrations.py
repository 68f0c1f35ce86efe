"""Migrations: upgrade from empty, downgrade to base, upgrade again."""

import asyncio
import os
import uuid

import asyncpg

from conftest import _recreate, with_database
from db import migrate


async def tables(url):
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        )
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()


async def test_up_down_up():
    admin = os.environ["TEST_ADMIN_DATABASE_URL"]
    name = f"medbook_migrations_{uuid.uuid4().hex[:8]}"
    await _recreate(admin, name)
    url = with_database(admin, name)
    try:
        await asyncio.to_thread(migrate.upgrade, url)
        assert "(head)" in await asyncio.to_thread(migrate.current, url)
        assert {"appointments", "clinics", "users", "notifications"} <= await tables(url)

        await asyncio.to_thread(migrate.downgrade, url, "base")
        assert await asyncio.to_thread(migrate.current, url) == ""
        assert await tables(url) <= {"alembic_version"}

        await asyncio.to_thread(migrate.upgrade, url)
        assert "(head)" in await asyncio.to_thread(migrate.current, url)
        assert "appointments" in await tables(url)
    finally:
        await _recreate(admin, name, drop_only=True)
