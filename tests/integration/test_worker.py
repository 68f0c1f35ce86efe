"""The SAQ worker runs our jobs against the real Redis, and stops at once when idle."""

import asyncio
import dataclasses
import gc
import signal
import subprocess
import sys
import time

import pytest
from saq.job import Status

from conftest import ROOT
from tasks.housekeeping import HEARTBEAT_KEY
from tasks.queue import create_queue
from tasks.worker import Worker, worker_settings
from tests.processes import start_process, stop_process


async def test_worker_runs_the_heartbeat_job(redis):
    settings = worker_settings()
    queue = settings.pop("queue")
    settings.pop("cron_jobs")
    await queue.connect()
    try:
        job = await queue.enqueue("heartbeat")
        settings["concurrency"] = 1
        worker = Worker(queue, **settings, burst=True, max_burst_jobs=1, dequeue_timeout=1)
        await worker.start()
        await job.refresh()
        assert job.status == "complete"
        assert await redis.get(HEARTBEAT_KEY) == job.result.encode()
        # Jobs share the process's stores (one S3 client per process), not one per job.
        services = worker.context["services"]
        assert worker.context["exports"] is services.exports
        assert worker.context["documents"] is services.documents
        # Frozen once started (tasks/worker.py `tune_gc`), handed back at its stop: this
        # process goes on, and its objects must be collectable again.
        assert gc.get_freeze_count() == 0
    finally:
        await queue.disconnect()


async def test_a_worker_that_ends_its_process_leaves_its_heap_frozen(redis):
    """`run`'s worker (`medbook worker`) ends with its process: unfrozen at its stop, the
    interpreter's collections at exit walked the whole heap again, most of an idle
    worker's stop on a loaded machine (issue 16)."""
    settings = worker_settings()
    queue = settings.pop("queue")
    settings.pop("cron_jobs")
    await queue.connect()
    try:
        await queue.enqueue("heartbeat")
        settings["concurrency"] = 1
        worker = Worker(queue, **settings, burst=True, max_burst_jobs=1, dequeue_timeout=1)
        worker.unfreeze_at_shutdown = False  # as `run` sets it
        await worker.start()
        assert gc.get_freeze_count() > 10_000  # modules, services, pools
    finally:
        gc.unfreeze()
        await queue.disconnect()


def start_worker(log, *command) -> subprocess.Popen:
    """`medbook worker`, or `command` (a Python one), in a process group of its own."""
    with log.open("w") as out:
        return start_process(
            [sys.executable, *(command or ("-m", "app.cli", "worker"))],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


# Issue 16: an idle `medbook worker` (and `medbook demo`) stops in under 3 s from the
# signal, measured with a busy core beside it in bench/README.md ("The demo's stop");
# running jobs still get their 20 s grace (the test after this one). The tests' bound is
# half that grace: what they guard against is an idle worker waiting out its grace period
# or its loops' sleeps. A wall-clock bound of 3 s failed twice at the end of a full run
# on two cores, where the worker (below the web's CPU priority, WORKER_NICENESS) waited
# for a core (docs/testing.md).
IDLE_STOP_SECONDS = 10


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_an_idle_worker_stops_at_once(stop, redis, settings, tmp_path):
    """SAQ waited its whole grace period for its own upkeep loops and blocked dequeues."""
    log = tmp_path / "worker.log"
    worker = start_worker(log)
    queue = create_queue(settings)
    await queue.connect()
    try:
        job = await queue.enqueue("heartbeat")
        await job.refresh(until_complete=60)  # the worker is up, and idle again
        assert job.status == "complete", log.read_text()
        signalled = time.monotonic()
        worker.send_signal(stop)
        code = await asyncio.to_thread(worker.wait, 60)  # then measured against the bound
        took = time.monotonic() - signalled
        assert code == 0, log.read_text()
        assert took < IDLE_STOP_SECONDS, (
            f"an idle worker took {took:.1f} s to stop after {stop.name} (SAQ waiting its "
            "grace period for its own loops?)"
        )
    finally:
        await queue.disconnect()
        stop_process(worker)


# A worker whose one extra job goes on working for 2 s once the worker is told to stop.
WORKER_WITH_A_JOB_AT_WORK = """
import asyncio
import dataclasses
from tasks.worker import run, worker_settings

async def still_working(ctx):
    await ctx["worker"].event.wait()  # set by SIGTERM
    await asyncio.sleep(2)
    return "finished"

settings = worker_settings()
settings["functions"] = [*settings["functions"], still_working]
settings["cron_jobs"] = []
run(settings)
"""


async def test_a_running_job_finishes_when_the_worker_is_told_to_stop(redis, settings, tmp_path):
    log = tmp_path / "worker.log"
    worker = start_worker(log, "-c", WORKER_WITH_A_JOB_AT_WORK)
    queue = create_queue(settings)
    await queue.connect()
    try:
        job = await queue.enqueue("still_working", timeout=60)
        await queue.listen([job.key], lambda _, status: status == Status.ACTIVE, timeout=60)
        worker.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.wait, 60)
        assert code == 0, log.read_text()
        await job.refresh()
        assert (job.status, job.result) == ("complete", "finished"), log.read_text()
    finally:
        await queue.disconnect()
        stop_process(worker)


async def test_the_sweep_period_is_a_setting(settings, monkeypatch):
    """WORKER_SWEEP_SECONDS reaches SAQ's sweep timer (SAQ passes it as the sweep's lock)."""
    import tasks.worker

    swept_often = dataclasses.replace(settings, worker_sweep_seconds=7)
    monkeypatch.setattr(tasks.worker, "get_settings", lambda: swept_often)
    options = worker_settings()
    try:
        assert Worker(**options).timers["sweep"] == 7
    finally:
        await options["queue"].disconnect()
