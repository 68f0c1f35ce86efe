"""medbook behind Debian's PgBouncer 1.18 in transaction mode (issue 21): `DATABASE_URL`
pointing at the pooler plus `DATABASE_POOL_MODE=transaction` is all it takes.

The pooler here has a tiny server pool (one or two server connections), so every client
connection of a test really shares a server connection with the others: anything medbook
left on a server session (a prepared statement, a SET, a session lock) would reach
another client, and the tests would see it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import sys
from collections.abc import Iterator

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.settings import Settings, plain_database_url
from app.web.asgi import create_app
from conftest import ROOT
from db.session import create_engine
from tests.integration.world import at, day_after_tomorrow, make_world
from tests.processes import run_process
from tests.topology.bookings import post_booking
from tests.topology.pgbouncer import PgBouncer


def _direct_url(settings: Settings) -> str:
    return os.environ.get("TEST_DIRECT_DATABASE_URL") or plain_database_url(settings.database_url)


@pytest.fixture
def bouncer(request) -> Iterator[PgBouncer]:
    """A PgBouncer of the test's own in transaction mode, with two server connections (or
    as many as `@pytest.mark.parametrize("bouncer", [N], indirect=True)` says)."""
    pooler = PgBouncer(
        os.environ["TEST_ADMIN_DATABASE_URL"], pool_size=getattr(request, "param", 2)
    )
    try:
        yield pooler
    finally:
        pooler.stop()


def _pooled(settings: Settings, bouncer: PgBouncer, **changes) -> Settings:
    """The settings with DATABASE_URL at the pooler and DATABASE_POOL_MODE=transaction."""
    url = bouncer.url(_direct_url(settings)).replace("postgresql://", "postgresql+asyncpg://")
    return dataclasses.replace(
        settings, database_url=url, database_pool_mode="transaction", **changes
    )


def test_seed_demo_runs_behind_pgbouncer_with_one_setting(db, bouncer, settings):
    """The operator's first try (issue 21) fails at once without the setting; with
    `DATABASE_POOL_MODE=transaction` the whole demo seed (hundreds of transactions over
    two server connections) goes through."""
    env = {**os.environ, "DATABASE_URL": bouncer.url(_direct_url(settings))}
    env.pop("DATABASE_POOL_MODE", None)
    command = [sys.executable, "-m", "app.cli", "seed", "demo"]
    refused = run_process(command, timeout=120, env=env, cwd=ROOT)
    assert refused.returncode != 0
    assert "unsupported startup parameter" in refused.stdout + refused.stderr

    seeded = run_process(
        command, timeout=300, env={**env, "DATABASE_POOL_MODE": "transaction"}, cwd=ROOT
    )
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr
    assert "demo data loaded" in seeded.stdout + seeded.stderr


@pytest.mark.parametrize("bouncer", [1], indirect=True)
async def test_timeouts_hold_per_transaction_and_leave_the_server_session_clean(
    db, bouncer, settings
):
    """S-4's statement timeout is enforced inside a transaction behind the pooler, and is
    gone from the (shared) server connection once the transaction ends."""
    engine = create_engine(_pooled(settings, bouncer, statement_timeout_ms=300))
    # The pooler has one server connection: both clients below take turns on it.
    raw = await asyncpg.connect(bouncer.url(_direct_url(settings)), statement_cache_size=0)
    try:
        async with engine.connect() as conn:
            async with conn.begin():
                assert (await conn.execute(text("SHOW statement_timeout"))).scalar() == "300ms"
                assert (
                    await conn.execute(text("SHOW idle_in_transaction_session_timeout"))
                ).scalar() == f"{settings.idle_in_transaction_timeout_ms // 1000}s"
            with pytest.raises(DBAPIError, match="statement timeout"):
                async with conn.begin():
                    await conn.execute(text("SELECT pg_sleep(3)"))
        # The same server connection, and none of medbook's settings left on it.
        assert await raw.fetchval("SHOW statement_timeout") == "0"
        assert await raw.fetchval("SHOW idle_in_transaction_session_timeout") == "0"
    finally:
        await raw.close()
        await engine.dispose()


async def test_booking_race_and_availability_through_two_server_connections(
    db, session, redis, bouncer, settings
):
    """Thirty patients race for one slot while thirty others book slots of their own and
    availability is read, all through an app whose every connection goes through a
    pooler with two server connections: exactly one wins the slot, every other booking
    is made, and every read answers."""
    pooled = _pooled(settings, bouncer, db_pool_size=20, db_max_overflow=0)
    world = await make_world(session, settings.secret_key, patients=60)
    await session.commit()
    day = day_after_tomorrow()
    contested = at(day, 10)
    async with AsyncTestClient(app=create_app(pooled), timeout=60) as client:

        async def book(i: int, start: dt.datetime) -> int:
            return (await post_booking(client, world, f"patient{i}", start)).status_code

        async def availability(i: int) -> int:
            response = await client.get(
                "/api/appointments/available-slots",
                params={"doctor_id": world.doctor_id, "date": day.isoformat(), "days": 3},
                headers=world.headers(f"patient{i}"),
            )
            return response.status_code

        own = [
            at(day + dt.timedelta(days=1 + i // 20), 8) + dt.timedelta(minutes=30 * (i % 20))
            for i in range(30)
        ]
        codes = await asyncio.gather(
            *(book(i, contested) for i in range(30)),
            *(book(30 + i, start) for i, start in enumerate(own)),
            *(availability(i) for i in range(30)),
        )
    racing, booking, reading = codes[:30], codes[30:60], codes[60:]
    assert sorted(racing) == [201] + [409] * 29, racing
    assert booking == [201] * 30, booking
    assert reading == [200] * 30, reading
    rows = await session.execute(
        text("SELECT count(*) FROM appointments WHERE doctor_id = :d AND status = 'booked'"),
        {"d": world.doctor_id},
    )
    assert rows.scalar() == 31
