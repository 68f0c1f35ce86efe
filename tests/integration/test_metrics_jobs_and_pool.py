"""/metrics beyond requests: how long web requests wait for a pooled database connection
(and how often they give up), and the SAQ worker's job durations and failures, read in
process and across processes (a real `medbook worker` beside `medbook serve`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families
from saq import Worker

from conftest import ROOT, LiveServer
from tasks.queue import create_queue
from tasks.worker import worker_settings
from tests.integration.auth_helpers import bearer, make_user
from tests.integration.test_metrics import scrape, value
from tests.integration.test_overload import backend_waiting_for_lock
from tests.processes import start_process, stop_process

WAIT = "medbook_db_pool_wait_seconds"
TIMEOUTS = "medbook_db_pool_timeouts_total"
OPENED = "medbook_db_connections_opened_total"
JOB_COUNT = "medbook_job_duration_seconds_count"
JOB_FAILURES = "medbook_job_failures_total"


async def test_each_checkout_reports_its_wait(client, session, settings):
    patient = await make_user(session, "patient", "p@example.test")
    await session.commit()
    before = await scrape(client)
    for _ in range(3):  # each request checks out one connection for its session
        assert (await client.get("/api/clinics", headers=bearer(settings, patient))).is_success
    after = await scrape(client)
    grew = value(after, f"{WAIT}_count") - value(before, f"{WAIT}_count")
    assert grew >= 3
    # An idle pool hands a connection over at once: well under the 100 ms bucket.
    fast = value(after, f"{WAIT}_bucket", le="0.1") - value(before, f"{WAIT}_bucket", le="0.1")
    assert fast == grew
    assert value(after, TIMEOUTS) == value(before, TIMEOUTS)


async def test_a_warm_pool_opens_no_more_connections(client, session, settings):
    """The start-up's connections are counted once; requests within the pool's size use
    them and open no new PostgreSQL backend (each would be a fork and slow first runs)."""
    patient = await make_user(session, "patient", "p@example.test")
    await session.commit()
    before = await scrape(client)
    assert value(before, OPENED) >= settings.db_pool_size  # warm_pool opened the pool
    for _ in range(5):
        assert (await client.get("/api/clinics", headers=bearer(settings, patient))).is_success
    assert value(await scrape(client), OPENED) == value(before, OPENED)


async def test_a_full_pool_is_timed_and_its_timeouts_counted(
    settings, session, redis, database_url
):
    """One connection, held by a request stuck behind a table lock: the next request waits
    the whole DB_POOL_TIMEOUT, answers 503, and both show in the pool series."""
    patient = await make_user(session, "patient", "p@example.test")
    await session.commit()
    headers = bearer(settings, patient)
    server = LiveServer(
        env={
            "DB_POOL_SIZE": "1",
            "DB_MAX_OVERFLOW": "0",
            "DB_POOL_TIMEOUT": "0.3",
            # Admission would otherwise let one request in (the pool's size) and hold the
            # second itself: this test is about the pool's own wait.
            "ADMISSION_MAX_IN_FLIGHT": "10",
        }
    )
    locker = None
    try:
        locker = await asyncpg.connect(database_url)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            assert (await client.get("/api/clinics", headers=headers)).status_code == 200
            before = await scrape(client)
            await locker.execute("BEGIN; LOCK TABLE clinics IN ACCESS EXCLUSIVE MODE")
            stuck = asyncio.create_task(client.get("/api/clinics", headers=headers))
            await backend_waiting_for_lock(locker)  # it holds the only connection
            busy = await client.get("/api/clinics", headers=headers)
            await locker.execute("ROLLBACK")
            assert (await stuck).status_code == 200
            after = await scrape(client)
    finally:
        if locker is not None:
            await locker.close()
        server.stop()
    assert busy.status_code == 503
    assert value(after, TIMEOUTS) - value(before, TIMEOUTS) == 1
    slow = value(after, f"{WAIT}_count") - value(after, f"{WAIT}_bucket", le="0.25")
    assert slow == 1  # only the refused request waited long
    # It waited the pool's 0.3 s timeout (less a clock tick: 0.29998 s was seen).
    assert value(after, f"{WAIT}_sum") - value(before, f"{WAIT}_sum") >= 0.29


async def boom(ctx, **kwargs):
    raise RuntimeError("this job always fails")


async def test_job_durations_and_failures_per_function(client, redis):
    """The worker's hooks, in this process: a completed and a failed job are timed by
    function name, and the failure is counted."""
    before = await scrape(client)
    config = worker_settings()
    queue = config.pop("queue")
    config.pop("cron_jobs")
    config["functions"] = [*config["functions"], boom]
    await queue.connect()
    try:
        done = await queue.enqueue("heartbeat")
        failed = await queue.enqueue("boom", retries=1)
        config["concurrency"] = 1
        config["shutdown_grace_period_s"] = 0  # the burst is done: nothing to wait for
        worker = Worker(queue, **config, burst=True, max_burst_jobs=2, dequeue_timeout=1)
        await worker.start()
        await done.refresh()
        await failed.refresh()
    finally:
        await queue.disconnect()
    assert done.status == "complete" and failed.status == "failed"
    after = await scrape(client)

    def grew(name: str, function: str) -> float:
        return value(after, name, function=function) - value(before, name, function=function)

    assert grew(JOB_COUNT, "heartbeat") == 1
    assert grew(JOB_FAILURES, "heartbeat") == 0
    assert grew(JOB_COUNT, "boom") == 1
    assert grew(JOB_FAILURES, "boom") == 1
    # Every registered function has its series from the worker's start, at zero.
    assert ("medbook_job_failures_total", frozenset({("function", "close_days")})) in after


def _scrape_url(url: str) -> dict:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_a_separate_worker_process_reports_through_the_web_scrape(
    tmp_path, db, redis, settings
):
    """`medbook worker` writes its multiprocess files to …/worker, `medbook serve` to
    …/web; the web's /metrics sums both, so job series reach Prometheus."""
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    queue = create_queue(settings)
    with (ROOT / "test-artifacts" / "worker-metrics.log").open("w") as log:
        worker = start_process(
            [sys.executable, "-m", "app.cli", "worker"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = None
    try:  # the worker is stopped even when the server never comes up
        server = LiveServer(env=env)
        await queue.connect()
        job = await queue.enqueue("heartbeat", timeout=10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            await job.refresh()
            if job.status == "complete":
                break
            await asyncio.sleep(0.2)
        assert job.status == "complete", job.status
        samples = {}
        for _ in range(20):  # the hook records after the job is marked complete
            samples = _scrape_url(server.url)
            if value(samples, JOB_COUNT, function="heartbeat") >= 1:
                break
            await asyncio.sleep(0.2)
        assert value(samples, JOB_COUNT, function="heartbeat") >= 1
        assert value(samples, JOB_FAILURES, function="heartbeat") == 0
        assert list((tmp_path / "worker").glob("histogram_*.db"))
        # The worker writes only job series: no web series come from its folder.
        worker_only = {name for name, _ in samples if name.startswith("medbook_job_")}
        assert worker_only == {
            JOB_COUNT,
            JOB_FAILURES,
            "medbook_job_duration_seconds_bucket",
            "medbook_job_duration_seconds_sum",
        }
    finally:
        await queue.disconnect()
        if server is not None:
            server.stop()
        stop_process(worker)
