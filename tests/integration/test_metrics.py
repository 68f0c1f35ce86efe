"""GET /metrics: request histograms per route template, counts by status, cache, rate
limit and scrape-time gauges, read back through prometheus-client's own parser."""

import dataclasses

from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from app.web import metrics
from app.web.asgi import create_app
from tests.integration.auth_helpers import bearer, make_user
from tests.integration.world import day_after_tomorrow, make_world

SLOTS = "/api/appointments/available-slots"
RECORDS = "/api/patients/{patient_id}/records"


async def scrape(client) -> dict[tuple[str, frozenset], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples, name: str, **labels: str) -> float:
    """The value of a series that must be in the scrape (`value` reads a missing one as 0)."""
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no series {name}{labels}"
    return samples[key]


async def test_request_histogram_is_labelled_with_the_route_template(client, session, settings):
    world = await make_world(session, settings.secret_key, patients=1)
    patient_id = world.patients[0]
    before = await scrape(client)
    params = {"doctor_id": world.doctor_id, "date": day_after_tomorrow().isoformat()}
    for _ in range(3):
        ok = await client.get(SLOTS, params=params, headers=world.headers("patient0"))
        assert ok.status_code == 200
    own = world.headers("patient0")
    records = await client.get(f"/api/patients/{patient_id}/records", headers=own)
    assert records.status_code == 200
    after = await scrape(client)

    count = "medbook_http_request_duration_seconds_count"
    assert (
        value(after, count, method="GET", route=SLOTS)
        - value(before, count, method="GET", route=SLOTS)
        == 3
    )
    # The template, never the raw path with its ids (bounded label values).
    assert value(after, count, method="GET", route=RECORDS) >= 1
    routes = {dict(labels).get("route") for name, labels in after if name == count}
    assert not any(str(patient_id) in (r or "") for r in routes)
    buckets = {
        dict(labels)["le"]
        for name, labels in after
        if name == "medbook_http_request_duration_seconds_bucket" and ("route", SLOTS) in labels
    }
    assert {"0.001", "0.005", "0.0075", "0.015", "0.025", "1.0", "5.0", "+Inf"} <= buckets
    assert (
        value(
            after,
            "medbook_http_request_duration_seconds_bucket",
            method="GET",
            route=SLOTS,
            le="+Inf",
        )
        >= 3
    )
    # The scrape itself and static files are not timed.
    assert not any(dict(labels).get("route") == "/metrics" for _, labels in after)


async def test_requests_are_counted_by_status(client, session, settings):
    patient = await make_user(session, "patient", "p@example.test")
    await session.commit()
    before = await scrape(client)
    assert (await client.get("/api/clinics")).status_code == 401  # refused by the middleware
    signed_in = bearer(settings, patient)
    assert (await client.get("/admin/queries", headers=signed_in)).status_code == 403
    assert (await client.get("/api/clinics", headers=signed_in)).status_code == 200
    after = await scrape(client)
    total = "medbook_http_requests_total"

    def grew(route: str, status: str) -> float:
        labels = {"method": "GET", "route": route, "status": status}
        return value(after, total, **labels) - value(before, total, **labels)

    assert grew("/api/clinics", "401") == 1
    assert grew("/api/clinics", "200") == 1
    assert grew("/admin/queries", "403") == 1


async def test_slot_cache_hits_and_misses_move(client, session, settings):
    world = await make_world(session, settings.secret_key, patients=1)
    params = {"doctor_id": world.doctor_id, "date": day_after_tomorrow().isoformat()}
    before = await scrape(client)
    for _ in range(2):  # the first computes the day, the second reads it from Redis
        answer = await client.get(SLOTS, params=params, headers=world.headers("patient0"))
        assert answer.status_code == 200
    after = await scrape(client)
    for name in ("medbook_slot_cache_misses_total", "medbook_slot_cache_hits_total"):
        assert value(after, name) - value(before, name) >= 1, name


async def test_rate_limit_rejections_are_counted(settings, db, redis):
    tight = dataclasses.replace(settings, rate_limit_anonymous_per_minute=2)
    async with AsyncTestClient(app=create_app(tight)) as client:
        before = await scrape(client)
        statuses = [(await client.get("/login")).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        after = await scrape(client)
    name = "medbook_rate_limited_total"
    assert value(after, name, route="/login") - value(before, name, route="/login") == 1


async def test_every_exported_name_is_in_a_scrape(client, session, settings):
    from tasks import metrics as job_metrics
    from tasks.worker import FUNCTIONS

    job_metrics.prepare(FUNCTIONS)  # what a worker does at start (in its own process)
    tight = dataclasses.replace(settings, rate_limit_anonymous_per_minute=1)
    async with AsyncTestClient(app=create_app(tight)) as limited:
        for _ in range(2):  # the second is refused: the rate-limit series exists
            await limited.get("/login")
    await make_user(session, "patient", "p@example.test")
    assert (await client.get("/health/live")).status_code == 200  # one timed request
    samples = await scrape(client)
    names = {name for name, _ in samples}
    assert names >= metrics.EXPORTED, metrics.EXPORTED - names
    assert series(samples, "medbook_notifications_dead") == 0
    # Redis was flushed for this test and nothing enqueued a job since.
    assert series(samples, "medbook_queue_jobs", state="queued") == 0
    assert series(samples, "medbook_queue_jobs", state="active") == 0
    assert series(samples, "medbook_db_pool_size") >= settings.db_pool_size
    assert series(samples, "medbook_db_pool_wait_seconds_count") >= 1
    # Created at zero by `prepare`; no heartbeat fails in this process.
    assert series(samples, "medbook_job_failures_total", function="heartbeat") == 0


def test_two_server_processes_report_one_sum(tmp_path, settings):
    """`medbook serve --workers 2` in multiprocess mode: whichever process answers the
    scrape, it reports every process's requests."""
    import httpx

    from conftest import LiveServer

    server = LiveServer(workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    try:
        for _ in range(20):  # a new connection each time, so both processes take some
            assert httpx.get(f"{server.url}/health/live", timeout=5).status_code == 200
        counted = set()
        for _ in range(6):
            text = httpx.get(f"{server.url}/metrics", timeout=5).text
            samples = {
                (s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
            labels = {"method": "GET", "route": "/health/live", "status": "200"}
            counted.add(value(samples, "medbook_http_requests_total", **labels))
        assert counted == {20.0}
        assert list((tmp_path / "web").glob("counter_*.db"))
    finally:
        server.stop()
