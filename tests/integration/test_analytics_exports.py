"""CSV exports: the file holds exactly the query's rows, no more patient data than ids,
access is scoped, requests and downloads are audited, files expire, memory stays flat."""

import asyncio
import csv
import datetime as dt
import io
import tracemalloc
from contextlib import asynccontextmanager
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from sqlalchemy import text

from app.analytics import exports, reports
from app.settings import Settings
from db.session import create_engine
from tasks import analytics as jobs
from tasks.queue import create_queue
from tests.integration.analytics_data import add_random_appointments
from tests.integration.world import make_world

DAYS = [dt.date(2026, 4, 1) + dt.timedelta(days=i) for i in range(10)]


@pytest.fixture
async def world(client, session, settings):
    world = await make_world(session, settings.secret_key, patients=5)
    await add_random_appointments(session, world, DAYS, seed=5, per_day=5)
    return world


async def add_completed_visits(settings: Settings, world, count: int) -> None:
    """`count` completed ten-minute visits from 2020-01-01 on, one statement on a
    connection of its own with no time limit: on a busy machine the inserts take seconds,
    past the time limit the app's connections (and so the test's session) have."""
    conn = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
    try:
        await conn.execute("SET statement_timeout = 0")
        await conn.execute(
            """
INSERT INTO appointments (doctor_id, patient_id, clinic_id, starts_at, ends_at, status,
                          created_at, updated_at)
SELECT $1, $2, $3, t, t + interval '10 minutes', 'completed', t, t
FROM generate_series(0, $4 - 1) AS i,
     LATERAL (SELECT timestamptz '2020-01-01' + interval '10 minutes' * i) AS s(t)""",
            world.doctor_id,
            world.patients[0],
            world.clinic_id,
            count,
            timeout=None,
        )
    finally:
        await conn.close()


@asynccontextmanager
async def worker_ctx(settings: Settings, engine, redis):
    """What the worker's startup puts in a job's ctx, for `settings`."""
    read = create_engine(settings, statement_timeout_ms=60000, application_name="medbook-analytics")
    store = exports.export_store(settings)
    try:
        yield {
            "settings": settings,
            "engine": engine,
            "analytics_engine": read,
            "redis": redis,
            "exports": store,
        }
    finally:
        await read.dispose()


@pytest.fixture
async def ctx(settings: Settings, engine, redis):
    async with worker_ctx(settings, engine, redis) as made:
        yield made


async def request_export(client, world, who="admin", **body):
    body = {"from": "2026-04-01", "to": "2026-04-10"} | body
    return await client.post("/api/analytics/exports", json=body, headers=world.headers(who))


async def run_queued(settings, ctx, export_id):
    """The POST queued a SAQ job with a deterministic key; run it here with a real ctx
    (aborting the queued copy so no other test's burst worker picks it up)."""
    queue = create_queue(settings)
    await queue.connect()
    try:
        job = await queue.job(f"export:{export_id}")
        assert job is not None and job.function == "run_export"
        assert job.kwargs == {"export_id": export_id}
        assert job.retries > 1 and job.timeout > 0
        await queue.abort(job, "run by the test")
    finally:
        await queue.disconnect()
    return await jobs.run_export(ctx, export_id=export_id)


async def expected_rows(session, clinic_id=None):
    rows = await session.execute(
        text(
            "SELECT a.id, a.clinic_id, a.doctor_id, a.patient_id, a.starts_at, a.ends_at, "
            "a.status, a.created_at, a.cancelled_at, c.timezone FROM appointments a "
            "JOIN clinics c ON c.id = a.clinic_id ORDER BY a.starts_at, a.id"
        )
    )
    return [
        list(r[:9])
        for r in rows
        if r.starts_at.astimezone(ZoneInfo(r.timezone)).date() in DAYS
        and (clinic_id is None or r.clinic_id == clinic_id)
    ]


def parse(body: str) -> tuple[list[str], list[list]]:
    header, *rows = list(csv.reader(io.StringIO(body)))

    def value(column: str, raw: str):
        if raw == "":
            return None
        if column.endswith("_id") or column == "id":
            return int(raw)
        if column.endswith("_at"):
            return dt.datetime.fromisoformat(raw)
        return raw

    return header, [[value(c, v) for c, v in zip(header, row, strict=True)] for row in rows]


async def test_export_contents_equal_the_query_rows(client, world, session, settings, ctx):
    response = await request_export(client, world)
    assert response.status_code == 202, response.text
    export_id = response.json()["id"]
    assert response.json()["status"] == "queued"
    assert await run_queued(settings, ctx, export_id) == {"status": "done", "rows": 100}

    status = (
        await client.get(f"/api/analytics/exports/{export_id}", headers=world.headers("admin"))
    ).json()
    assert status["status"] == "done" and status["percent"] == 100
    assert status["rows_done"] == status["rows_total"] == 100
    expires = dt.datetime.fromisoformat(status["expires_at"])
    assert dt.timedelta(hours=23) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=24)

    download = await client.get(status["download_url"], headers=world.headers("admin"))
    assert download.status_code == 200
    assert "attachment" in download.headers["content-disposition"]
    header, rows = parse(download.text)
    assert header == list(exports.COLUMNS)
    assert rows == await expected_rows(session)
    assert "Patient" not in download.text  # names never leave in a CSV

    audit = (
        await session.execute(
            text("SELECT action, details->>'export_id' FROM audit_events ORDER BY id")
        )
    ).all()
    assert [tuple(a) for a in audit] == [
        ("export.requested", export_id),
        ("export.downloaded", export_id),
    ]


async def test_front_desk_exports_its_own_clinic_and_only_sees_its_own_exports(
    client, world, session, settings, ctx
):
    refused = await request_export(client, world, "desk", clinic_id=world.other_clinic_id)
    assert refused.status_code == 403
    for who in ("doctor", "patient0"):
        assert (await request_export(client, world, who)).status_code == 403
    made = await request_export(client, world, "desk")
    assert made.status_code == 202
    export_id = made.json()["id"]
    assert made.json()["clinic_id"] == world.clinic_id
    await run_queued(settings, ctx, export_id)
    file = await client.get(
        f"/api/analytics/exports/{export_id}/file", headers=world.headers("desk")
    )
    _, rows = parse(file.text)
    assert rows == await expected_rows(session, world.clinic_id)
    assert {r[1] for r in rows} == {world.clinic_id}
    for path in (f"/api/analytics/exports/{export_id}", f"/api/analytics/exports/{export_id}/file"):
        assert (await client.get(path, headers=world.headers("other_desk"))).status_code == 404
    assert (
        await client.get(f"/api/analytics/exports/{export_id}", headers=world.headers("admin"))
    ).status_code == 200


class Watched:
    """The ctx's real store, noting which of its methods the jobs call."""

    def __init__(self, store) -> None:
        self.store, self.used = store, set()

    def __getattr__(self, name: str):
        self.used.add(name)
        return getattr(self.store, name)


async def test_the_export_jobs_use_the_process_store(client, world, session, settings, ctx):
    """The worker's jobs write and purge through ctx["exports"] (Services.exports, one S3
    client per process), never a store of their own."""
    ctx = {**ctx, "exports": Watched(ctx["exports"])}
    export_id = (await request_export(client, world)).json()["id"]
    assert (await run_queued(settings, ctx, export_id))["status"] == "done"
    written = set(ctx["exports"].used)
    assert written
    await session.execute(
        text("UPDATE export_jobs SET expires_at = now() - interval '1 minute' WHERE id = :id"),
        {"id": export_id},
    )
    await session.commit()
    assert await jobs.purge_exports(ctx) == 1
    assert ctx["exports"].used > written  # the purge deleted through it too


async def test_an_expired_export_is_deleted_and_cannot_be_downloaded(
    client, world, session, settings, ctx
):
    export_id = (await request_export(client, world)).json()["id"]
    await run_queued(settings, ctx, export_id)
    path = exports.work_dir(settings) / f"{export_id}.csv"
    assert path.exists()
    await session.execute(
        text("UPDATE export_jobs SET expires_at = now() - interval '1 minute' WHERE id = :id"),
        {"id": export_id},
    )
    await session.commit()
    assert await jobs.purge_exports(ctx) == 1
    assert not path.exists()
    file = await client.get(
        f"/api/analytics/exports/{export_id}/file", headers=world.headers("admin")
    )
    assert file.status_code == 404
    # Running the job again leaves an expired export alone (idempotent).
    assert (await jobs.run_export(ctx, export_id=export_id))["status"] == "expired"


async def test_a_finished_export_whose_file_is_gone_is_a_404_not_audited(
    client, world, session, settings, ctx
):
    export_id = (await request_export(client, world)).json()["id"]
    await run_queued(settings, ctx, export_id)
    (exports.work_dir(settings) / f"{export_id}.csv").unlink()  # a lost disk, a manual clean-up
    file = await client.get(
        f"/api/analytics/exports/{export_id}/file", headers=world.headers("admin")
    )
    assert file.status_code == 404
    assert "request it again" in file.json()["detail"]
    downloads = await session.scalar(
        text("SELECT count(*) FROM audit_events WHERE action = :action"),
        {"action": exports.EXPORT_DOWNLOADED},
    )
    assert downloads == 0


async def test_export_memory_stays_flat_however_many_rows(client, world, session, settings, ctx):
    """100,000 rows (about 9 MB of CSV) pass through while Python allocates under 4 MB
    (measured: 1.4 MB)."""
    await add_completed_visits(settings, world, 100_000)
    export_id = (
        await request_export(client, world, **{"from": "2019-12-31", "to": "2022-12-31"})
    ).json()["id"]
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        view = await exports.run_export(
            ctx["engine"],
            ctx["analytics_engine"],
            exports.export_store(settings),
            exports.work_dir(settings),
            export_id,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert view.status == "done" and view.rows_done == 100_000
    assert view.size_bytes > 8_000_000
    assert peak < 4_000_000, f"peak {peak / 1e6:.1f} MB"


async def test_export_pages_show_progress_then_a_link(client, world, settings, ctx):
    page = await client.get("/analytics/exports", headers=world.headers("desk"))
    assert page.status_code == 200 and 'name="from"' in page.text
    started = await client.post(
        "/analytics/exports",
        data={"from": "2026-04-01", "to": "2026-04-10", "clinic_id": ""},
        headers=world.headers("desk") | {"HX-Request": "true"},
    )
    assert started.status_code in (200, 201), started.text
    assert 'hx-trigger="every 1s"' in started.text and "<progress" in started.text
    assert started.headers["vary"] == "HX-Request"
    export_id = started.text.split('id="export-')[1].split('"')[0]
    await run_queued(settings, ctx, export_id)
    done = await client.get(
        f"/analytics/exports/{export_id}", headers=world.headers("desk") | {"HX-Request": "true"}
    )
    assert "hx-trigger" not in done.text
    assert f'href="/api/analytics/exports/{export_id}/file"' in done.text
    assert "Available until" in done.text
    listing = await client.get("/analytics/exports", headers=world.headers("desk"))
    assert export_id in listing.text


async def test_the_page_shows_partial_progress_while_the_job_writes(
    client, world, session, settings, ctx, monkeypatch
):
    """Mid-run, the polled fragment shows rows so far of the total and a partial bar. The
    job is held right after its first progress write (a gate around COPY's output;
    nothing faked, no sleeps): the page and the API are read then, and the job let go."""
    await add_completed_visits(settings, world, 20_000)
    monkeypatch.setattr(exports, "PROGRESS_EVERY_SECONDS", 0)  # a progress write per chunk
    written = asyncio.Event()
    go_on = asyncio.Event()
    real_copy = exports.copy_appointments

    async def held_copy(read_engine, first_day, last_day, clinic_id, output):
        lines = 0

        async def gated(chunk: bytes) -> None:
            nonlocal lines
            await output(chunk)  # writes the file and, here, the progress row
            lines += chunk.count(b"\n")
            # 1 % written and recorded (the header line is not a row)
            if lines - 1 >= 20_000 // 100 and not written.is_set():
                written.set()
                await go_on.wait()

        await real_copy(read_engine, first_day, last_day, clinic_id, gated)

    monkeypatch.setattr(exports, "copy_appointments", held_copy)
    started = await client.post(
        "/analytics/exports",
        data={"from": "2019-12-31", "to": "2020-06-30", "clinic_id": str(world.clinic_id)},
        headers=world.headers("admin") | {"HX-Request": "true"},
    )
    assert started.status_code in (200, 201), started.text
    export_id = started.text.split('id="export-')[1].split('"')[0]
    job = asyncio.create_task(run_queued(settings, ctx, export_id))
    try:
        await asyncio.wait_for(written.wait(), timeout=60)
        fragment = await client.get(
            f"/analytics/exports/{export_id}",
            headers=world.headers("admin") | {"HX-Request": "true"},
        )
        status = (
            await client.get(f"/api/analytics/exports/{export_id}", headers=world.headers("admin"))
        ).json()
    finally:
        go_on.set()
        result = await asyncio.wait_for(job, timeout=120)
    assert status["status"] == "running"
    assert status["rows_total"] == 20_000
    assert 0 < status["rows_done"] < 20_000
    assert 0 < status["percent"] < 100
    assert 'hx-trigger="every 1s"' in fragment.text  # still polling
    assert f'value="{status["percent"]}"' in fragment.text
    assert f"Writing: {status['rows_done']:,} of 20,000 rows" in " ".join(fragment.text.split())
    assert result == {"status": "done", "rows": 20_000}


async def test_ranges_past_the_caps_are_a_clear_422(client, world):
    """Exports take up to MAX_EXPORT_DAYS (ten years), reports MAX_RANGE_DAYS (three)."""
    last = dt.date(2026, 4, 10)
    at_cap = last - dt.timedelta(days=reports.MAX_EXPORT_DAYS - 1)
    ok = await request_export(client, world, **{"from": str(at_cap), "to": str(last)})
    assert ok.status_code == 202, ok.text
    too_long = await request_export(
        client, world, **{"from": str(at_cap - dt.timedelta(days=1)), "to": str(last)}
    )
    assert too_long.status_code == 422
    assert too_long.json()["detail"] == "a range covers at most 3660 days"
    report_cap = last - dt.timedelta(days=reports.MAX_RANGE_DAYS - 1)
    for path in ("/api/analytics/no-shows", "/analytics", "/api/analytics/report.csv"):
        params = {"to": str(last), "report": "no-shows"}
        fine = await client.get(
            path, params=params | {"from": str(report_cap)}, headers=world.headers("admin")
        )
        assert fine.status_code == 200, (path, fine.text)
        refused = await client.get(
            path,
            params=params | {"from": str(report_cap - dt.timedelta(days=1))},
            headers=world.headers("admin"),
        )
        assert refused.status_code == 422, (path, refused.text)
        assert refused.json()["detail"] == "a range covers at most 1100 days"
