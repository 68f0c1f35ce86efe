"""A real streaming replica behind DATABASE_READ_URL (issue 21, review M-1): a primary
made with initdb and a hot standby made from it with pg_basebackup.

Which reads may be stale (docs/deploy.md, "Read replica"): analytics reports and CSV
exports read the replica; everything a user has just changed (their appointments, the
boards, availability, records) reads the primary. With the replica's replay paused (a
lagging replica), a patient's booking is on their own list at once while the report
still shows the past; with the replica gone, bookings and the user's pages go on, the
app stays ready, and the reports answer 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Iterator

import pytest
from litestar.testing import AsyncTestClient

from app.analytics.rollups import refresh_days
from app.settings import async_database_url
from app.web.asgi import create_app
from conftest import ALLOW_AUDIT_TRUNCATE, DATA_TABLES
from db import migrate
from db.session import create_engine, session_factory
from tests.integration.world import World, at, day_after_tomorrow, make_world
from tests.topology.bookings import post_booking
from tests.topology.postgres import Cluster


@pytest.fixture(scope="module")
def clusters() -> Iterator[tuple[Cluster, Cluster]]:
    """A migrated primary and its streaming replica, for this module's tests."""
    primary = Cluster.primary()
    replica = None
    try:
        asyncio.run(primary.fetchval("CREATE DATABASE medbook"))
        migrate.upgrade(primary.url("medbook"))
        replica = primary.replica()
        yield primary, replica
    finally:
        if replica is not None:
            replica.remove()
        primary.remove()


@pytest.fixture
async def pair(clusters, settings, redis):
    """Settings pointing at the pair, and a small world made on the primary."""
    primary, replica = clusters
    paired = dataclasses.replace(
        settings,
        database_url=async_database_url(primary.url("medbook")),
        database_read_url=async_database_url(replica.url("medbook")),
    )
    engine = create_engine(paired)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(ALLOW_AUDIT_TRUNCATE)
            await conn.exec_driver_sql(f"TRUNCATE {DATA_TABLES} RESTART IDENTITY CASCADE")
        async with session_factory(engine)() as session:
            world = await make_world(session, paired.secret_key, patients=2)
        yield paired, world, engine
    finally:
        await engine.dispose()


async def _replayed(replica: Cluster, primary: Cluster) -> None:
    """Wait until the replica has replayed everything the primary has written so far."""
    target = await primary.fetchval("SELECT pg_current_wal_insert_lsn()::text")
    for _ in range(300):
        if await replica.fetchval(
            "SELECT pg_last_wal_replay_lsn() >= CAST($1::text AS pg_lsn)", target
        ):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the replica did not catch up in 15 s")


def _report_params(day: dt.date) -> dict[str, str]:
    return {"from": day.isoformat(), "to": day.isoformat()}


async def _utilisation(client, world: World, day: dt.date) -> list[str]:
    response = await client.get(
        "/api/analytics/utilisation", params=_report_params(day), headers=world.headers("admin")
    )
    assert response.status_code == 200, response.text
    return [row["label"] for row in response.json()["rows"]]


async def _book_then_list(client, world: World, patient: str, start: dt.datetime):
    """A patient books, then opens their own list: the booking's id and the list's ids."""
    booked = await post_booking(client, world, patient, start)
    assert booked.status_code == 201, booked.text
    mine = await client.get("/api/appointments", headers=world.headers(patient))
    assert mine.status_code == 200, mine.text
    return booked.json()["id"], [a["id"] for a in mine.json()["items"]]


async def test_a_lagging_replica_serves_reports_and_never_a_patient_s_own_write(clusters, pair):
    primary, replica = clusters
    settings, world, engine = pair
    day = day_after_tomorrow()
    await _replayed(replica, primary)
    await replica.fetchval("SELECT pg_wal_replay_pause()")
    try:
        async with AsyncTestClient(app=create_app(settings)) as client:
            # The patient's own list reads the primary: the booking is there at once ...
            booked, mine = await _book_then_list(client, world, "patient0", at(day, 9))
            assert booked in mine
            async with engine.begin() as conn:  # the nightly rollup, on the primary
                await refresh_days(conn, [day])
            # ... although the replica has not seen it (it really lags) ...
            on_replica = "SELECT count(*) FROM appointments"
            assert await replica.fetchval(on_replica, database="medbook") == 0
            # ... and the report reads the replica: the past, as M-1 allows.
            assert await _utilisation(client, world, day) == []

            await replica.fetchval("SELECT pg_wal_replay_resume()")
            await _replayed(replica, primary)
            assert "Berlin" in await _utilisation(client, world, day)
    finally:
        await replica.fetchval("SELECT pg_wal_replay_resume()")


async def test_with_the_replica_down_booking_goes_on_and_reports_answer_503(clusters, pair):
    """Runs last in this module: it stops the replica."""
    _, replica = clusters
    settings, world, _ = pair
    day = day_after_tomorrow()
    replica.kill()
    async with AsyncTestClient(app=create_app(settings)) as client:
        booked, mine = await _book_then_list(client, world, "patient1", at(day, 10))
        assert mine == [booked]
        assert (await client.get("/health/ready")).status_code == 200

        report = await client.get(
            "/api/analytics/utilisation", params=_report_params(day), headers=world.headers("admin")
        )
        assert report.status_code == 503, report.text
        assert int(report.headers["retry-after"]) > 0
