"""Analytics read through DATABASE_READ_URL (M-1) with their own statement timeout (S-4):
a report past its limit is cancelled and answered 503, and booking is unaffected."""

import asyncio
import dataclasses
import datetime as dt
import os
import uuid

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from app.analytics import exports
from app.settings import async_database_url
from app.web.asgi import create_app
from conftest import _recreate, with_database
from db import migrate
from db.session import create_engine
from tasks import analytics as jobs
from tests.integration.world import at, day_after_tomorrow, make_world


@pytest.fixture
async def world(client, session, settings):
    return await make_world(session, settings.secret_key, patients=2)


@pytest.fixture
async def replica_url():
    """A second database with the same schema, standing in for a read replica."""
    admin = os.environ["TEST_ADMIN_DATABASE_URL"]
    name = f"medbook_replica_{uuid.uuid4().hex[:8]}"
    await _recreate(admin, name)
    url = with_database(admin, name)
    await asyncio.to_thread(migrate.upgrade, url)
    conn = await asyncpg.connect(url)
    try:
        # Only the replica has this clinic, its rollup and its appointment.
        await conn.execute(
            """
INSERT INTO clinics (id, name, timezone) VALUES (77, 'Replica Clinic', 'UTC');
INSERT INTO doctors (id, clinic_id, full_name, specialty) VALUES (77, 77, 'Dr. R', 'GP');
INSERT INTO patients (id, full_name) VALUES (77, 'R');
INSERT INTO clinic_daily_stats (clinic_id, day, doctor_id, completed, available_minutes,
                                booked_minutes)
VALUES (77, '2026-05-04', 77, 3, 600, 90);
INSERT INTO appointments (id, doctor_id, patient_id, clinic_id, starts_at, ends_at, status)
VALUES (7777, 77, 77, 77, '2026-05-04 09:00+00', '2026-05-04 09:30+00', 'completed');"""
        )
    finally:
        await conn.close()
    yield url
    await _recreate(admin, name, drop_only=True)


def name_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def engine_activity(engine) -> set[tuple[str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT application_name, datname FROM pg_stat_activity WHERE datname IS NOT NULL")
        )
        return {(a, d) for a, d in rows}


async def test_analytics_engines_have_the_long_timeout_and_web_the_short(settings):
    """The engines as the app and worker build them (same factory, same arguments)."""
    analytics_engine = create_engine(
        settings,
        url=settings.database_read_url or settings.database_url,
        statement_timeout_ms=settings.analytics_statement_timeout_ms,
        application_name="medbook-analytics",
    )
    web = create_engine(settings, application_name="medbook-web")
    try:
        for engine, expected in (
            (analytics_engine, ("medbook-analytics", "1min")),
            (web, ("medbook-web", "5s")),
        ):
            async with engine.connect() as conn:
                got = (
                    await conn.execute(
                        text(
                            "SELECT current_setting('application_name'), "
                            "current_setting('statement_timeout')"
                        )
                    )
                ).one()
            assert tuple(got) == expected
    finally:
        await analytics_engine.dispose()
        await web.dispose()


async def test_reports_and_exports_read_the_replica(world, settings, replica_url, engine):
    replica = dataclasses.replace(settings, database_read_url=async_database_url(replica_url))
    app = create_app(replica)
    async with AsyncTestClient(app=app) as client:
        response = await client.get(
            "/api/analytics/utilisation",
            params={"from": "2026-05-02", "to": "2026-05-20"},  # days: the daily rollup
            headers=world.headers("admin"),  # the user is on the primary only
        )
        assert response.status_code == 200, response.text
        assert [r["label"] for r in response.json()["rows"]] == ["Replica Clinic"]
        # The app's analytics pool keeps its connection open: see who is on which database.
        # (The test client runs the app in its own event loop, so ask PostgreSQL.)
        seen = await engine_activity(engine)
        # (Other apps' analytics pools may be connected elsewhere: other test sessions.)
        assert ("medbook-analytics", name_of(replica_url)) in seen

        # The export job reads the replica too (the job row stays on the primary).
        export = await client.post(
            "/api/analytics/exports",
            json={"from": "2026-05-01", "to": "2026-05-31"},
            headers=world.headers("admin"),
        )
        read = create_engine(replica, url=replica.database_read_url)
        try:
            ctx = {
                "settings": replica,
                "engine": engine,
                "analytics_engine": read,
                "exports": exports.export_store(replica),
            }
            assert (await jobs.run_export(ctx, export_id=export.json()["id"]))["rows"] == 1
        finally:
            await read.dispose()
        path = exports.work_dir(replica) / f"{export.json()['id']}.csv"
        assert path.read_text().splitlines()[1].startswith("7777,77,77,77,")


async def test_a_report_past_its_timeout_is_a_503_and_booking_goes_on(world, settings, engine):
    short = dataclasses.replace(settings, analytics_statement_timeout_ms=300)
    app = create_app(short)
    blocker = await asyncpg.connect(os.environ["DATABASE_URL"].replace("+asyncpg", ""))
    try:
        # Hold the rollup table, so the report waits past its limit (lock waits count).
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("LOCK TABLE clinic_daily_stats IN ACCESS EXCLUSIVE MODE")
        async with AsyncTestClient(app=app) as client:
            started = asyncio.get_running_loop().time()
            report = await client.get("/api/analytics/no-shows", headers=world.headers("admin"))
            waited = asyncio.get_running_loop().time() - started
            assert report.status_code == 503
            assert "took too long and was cancelled" in report.json()["detail"]
            assert waited < 3
            page = await client.get("/analytics", headers=world.headers("admin"))
            assert page.status_code == 503

            # Meanwhile the booking path works, with its own (5 s) limit.
            start = at(day_after_tomorrow(), 10)
            booked = await client.post(
                "/api/appointments",
                json={"doctor_id": world.doctor_id, "start": start.isoformat()},
                headers=world.headers("patient0"),
            )
            assert booked.status_code == 201, booked.text
        await lock.rollback()
    finally:
        await blocker.close()


async def test_an_export_past_its_timeout_fails_with_a_message(world, client, settings, engine):
    export = await client.post(
        "/api/analytics/exports",
        json={"from": "2026-05-01", "to": "2026-05-31"},
        headers=world.headers("admin"),
    )
    export_id = export.json()["id"]
    read = create_engine(settings, statement_timeout_ms=300)
    blocker = await asyncpg.connect(os.environ["DATABASE_URL"].replace("+asyncpg", ""))
    try:
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("LOCK TABLE clinics IN ACCESS EXCLUSIVE MODE")
        ctx = {
            "settings": settings,
            "engine": engine,
            "analytics_engine": read,
            "exports": exports.export_store(settings),
        }
        result = await jobs.run_export(ctx, export_id=export_id)
        await lock.rollback()
    finally:
        await blocker.close()
        await read.dispose()
    assert result["status"] == "failed"
    status = await client.get(f"/api/analytics/exports/{export_id}", headers=world.headers("admin"))
    assert status.json()["status"] == "failed"
    assert "time limit" in status.json()["error"]
    assert dt.datetime.fromisoformat(status.json()["finished_at"])
