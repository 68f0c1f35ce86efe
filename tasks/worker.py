"""SAQ worker settings: `medbook worker` runs `saq` with `worker_settings()`.

Cron schedules are UTC (SAQ's default). Every job is idempotent and has an explicit
timeout and retry count, so a job run twice, or swept after a killed worker, is harmless.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from typing import Any

from saq import CronJob
from saq import Worker as SaqWorker

from app.services import start_services
from app.settings import get_settings
from tasks import analytics, fhir_holds, metrics, reminders, waitlist
from tasks.fhir_feed import FEED_RETRIES, FEED_TIMEOUT_SECONDS, publish_fhir_feed
from tasks.housekeeping import heartbeat, sweep_documents
from tasks.queue import create_queue

# The worker's jobs are background work: a CPU-heavy one (the FHIR feed's build, seconds
# of CPU every 10 minutes) must not take a core from the web processes' requests on a
# shared box. Niceness 5 gives it about a third of a web process's share when both want
# the same core, and all of an idle one.
WORKER_NICENESS = 5

FUNCTIONS = [
    heartbeat,
    sweep_documents,
    analytics.refresh_rollups,
    analytics.close_days,
    analytics.run_export,
    analytics.purge_exports,
    reminders.dispatch_notifications,
    reminders.send_notifications,
    waitlist.refill_waitlist,
    waitlist.expire_offer,
    waitlist.sweep_waitlist,
    publish_fhir_feed,
    fhir_holds.expire_fhir_hold,
    fhir_holds.sweep_fhir_holds,
]


async def startup(ctx: dict[str, Any]) -> None:
    services = await start_services(get_settings(), process="worker", queue=ctx["worker"].queue)
    ctx["services"] = services
    # Jobs read their services from ctx by these names (tests hand a job its own).
    ctx["settings"] = services.settings
    ctx["engine"] = services.engine
    ctx["sessions"] = services.sessions
    ctx["redis"] = services.redis
    ctx["documents"] = services.documents  # the web's store: S3, or the same disk folder
    ctx["exports"] = services.exports  # built once per process, like documents
    ctx["analytics_engine"] = services.analytics_engine
    ctx["rollup_engine"] = services.rollup_engine
    await reminders.startup(ctx)
    metrics.prepare(FUNCTIONS)
    tune_gc()


def tune_gc() -> None:
    """Once everything has started: move every object alive so far (modules, services,
    pools) out of the garbage collector's reach, as the web processes do
    (app/web/asgi.py `freeze_startup_heap`). A full collection then walks only what the
    jobs made since; before, each walked the start-up heap too, several times in each
    FHIR feed's build (bench/README.md). `shutdown` hands the objects back, unless the
    process ends with the worker (`Worker.unfreeze_at_shutdown`)."""
    gc.collect()
    gc.freeze()


async def shutdown(ctx: dict[str, Any]) -> None:
    await reminders.shutdown(ctx)
    await ctx["services"].stop()
    if getattr(ctx.get("worker"), "unfreeze_at_shutdown", True):
        gc.unfreeze()  # a worker started and stopped in a test process is collected


def worker_settings() -> dict[str, Any]:
    """Built on call, so settings are read only once the environment is final."""
    settings = get_settings()
    # LOG_LEVEL decides, as in the web app (`medbook worker` starts at the CLI's level):
    # SAQ logs each job it enqueues, runs and finishes at INFO.
    logging.getLogger().setLevel(settings.log_level)
    return {
        "queue": create_queue(settings),
        "functions": FUNCTIONS,
        "cron_jobs": [
            CronJob(heartbeat, cron="* * * * *", timeout=10, retries=1),
            # Strays come only from a process killed mid-upload: once a day is plenty.
            CronJob(sweep_documents, cron="17 3 * * *", timeout=1800, retries=2),
            CronJob(analytics.refresh_rollups, cron="*/5 * * * *", timeout=240, retries=2),
            CronJob(analytics.close_days, cron="30 12 * * *", timeout=1800, retries=3),
            CronJob(analytics.purge_exports, cron="7 * * * *", timeout=300, retries=2),
            CronJob(reminders.dispatch_notifications, cron="* * * * *", timeout=120, retries=2),
            # Lapsed holds whose expiry job was lost (a killed worker): at most a minute late.
            CronJob(waitlist.sweep_waitlist, cron="* * * * *", timeout=60, retries=2),
            # The same for the holds of FHIR's $hold (tasks/fhir_holds.py).
            CronJob(fhir_holds.sweep_fhir_holds, cron="* * * * *", timeout=60, retries=2),
            CronJob(
                publish_fhir_feed,
                cron="*/10 * * * *",
                timeout=FEED_TIMEOUT_SECONDS,
                retries=FEED_RETRIES,
            ),
        ],
        "concurrency": 10,
        # How often SAQ sweeps jobs left active by a dead worker (WORKER_SWEEP_SECONDS); SAQ
        # passes the period as the sweep's lock too, so the fleet sweeps once a period.
        "timers": {"sweep": settings.worker_sweep_seconds},
        # On SIGTERM let running jobs finish (they are idempotent, but finishing is kinder).
        "shutdown_grace_period_s": 20,
        "startup": startup,
        "shutdown": shutdown,
        # Job durations and failures for /metrics (tasks/metrics.py).
        "before_process": metrics.before_process,
        "after_process": metrics.after_process,
    }


class Worker(SaqWorker):
    """SAQ's worker, stopping at once when idle (SAQ 0.26 waits the whole grace period).

    On SIGTERM or SIGINT SAQ waits for every task of its own, up to the grace period:
    not only the jobs running, but its upkeep loops (the sweep sleeps 60 s) and the
    dequeues blocked in Redis (tobymao/saq#280). We cancel those two and wait only for
    the jobs. A dequeue cancelled just as Redis handed it a job leaves that job in the
    active list, not started; the next sweep (any worker's) retries it.
    """

    # Whether `shutdown` hands the heap frozen at start-up (`tune_gc`) back to the
    # collector: yes for a worker in a process that goes on (a test's); `run` says no,
    # since its process ends with the worker. Handed back there, the interpreter's full
    # collections at exit walked the whole heap again, most of an idle worker's stop on
    # a loaded machine (bench/README.md, "The demo's stop").
    unfreeze_at_shutdown = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._upkeep_tasks: list[asyncio.Task[None]] = []
        self._dequeuing: set[asyncio.Task[Any]] = set()
        dequeue = self.queue.dequeue

        async def tracked_dequeue(*args: Any, **kwargs: Any) -> Any:
            task = asyncio.current_task()
            assert task is not None
            self._dequeuing.add(task)
            try:
                return await dequeue(*args, **kwargs)
            finally:
                self._dequeuing.discard(task)

        # SAQ's process() calls queue.dequeue itself: this is where we see who waits in it.
        self.queue.dequeue = tracked_dequeue  # type: ignore[method-assign]

    async def upkeep(self) -> list[asyncio.Task[None]]:
        self._upkeep_tasks = await super().upkeep()
        return self._upkeep_tasks

    async def stop(self) -> None:
        self.event.set()  # no new dequeue starts from here on
        for task in (*self._upkeep_tasks, *self._dequeuing):
            task.cancel()
        await super().stop()


def run(settings: dict[str, Any]) -> None:
    """Run a worker with `settings` until SIGTERM or SIGINT, below the web processes'
    CPU priority (WORKER_NICENESS)."""
    os.nice(WORKER_NICENESS)
    worker = Worker(**settings)
    worker.unfreeze_at_shutdown = False

    async def work() -> None:
        try:
            await worker.queue.connect()
            await worker.start()
        finally:
            await worker.queue.disconnect()

    asyncio.run(work())
