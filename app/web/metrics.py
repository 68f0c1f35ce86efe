"""Prometheus metrics: the request middleware, the counters it keeps and `GET /metrics`.

Several server processes report correctly through prometheus-client's multiprocess mode:
`medbook serve` sets PROMETHEUS_MULTIPROC_DIR (under the data folder, emptied at start)
before any worker imports this module, and a scrape of any process sums every process's
files. Without it, one in-process registry. Per-process values kept elsewhere as plain
attributes (SlotCache.hits/misses, Hub.pushed, Hub.open_sockets, the pool's checked-out
connections) are copied into the metrics after each request, every few seconds and at
scrape. The web pool reports each checkout's wait as it happens (db/session.py). Values
that belong to no process (dead notifications, SAQ queue depth) are read at scrape with
short timeouts, by the process answering it.

The SAQ worker is a separate process with a folder of its own (`…/metrics/worker`, beside
`…/metrics/web`; app/cli.py empties each when its process starts): a scrape sums both
folders, so job durations and failures (tasks/metrics.py) appear in every web process's
/metrics on the worker's host, counted once per host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from litestar import Litestar, Request, get
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.middleware import AbstractMiddleware
from litestar.response import Response
from litestar.types import Message, Receive, Scope, Send
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import event, text
from sqlalchemy.pool import AsyncAdaptedQueuePool

from app.errors import DomainError
from app.notifications.breaker import PROVIDERS, read_state
from app.services import Services
from app.web.guards import PUBLIC
from db.models import OFFER_STATUSES
from db.session import observe_pool_waits
from tasks.queue import QUEUE_NAME

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SCRAPE_TIMEOUT = 0.5  # seconds for each scrape-time query; a slow one is skipped, not waited
SYNC_INTERVAL = 5.0
# A request copies the process's plain counters and gauges into the metrics at most this
# often (each Gauge.set and Counter.inc is a write to a shared memory map, several per
# request); the lifespan's task does it every SYNC_INTERVAL when no request comes.
REQUEST_SYNC_INTERVAL = 1.0
# Fine at the bottom, where medbook's targets are (p99 < 15 ms), coarse up to seconds,
# where the review's SLAs and the timeouts are.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
EXCLUDED_PREFIXES = ("/metrics", "/static/")

disable_created_metrics()  # `_created` series double the output and no rule reads them

REQUEST_SECONDS = Histogram(
    "medbook_http_request_duration_seconds",
    "Time from a request's arrival to its last response byte, per route template.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
REQUESTS = Counter(
    "medbook_http_requests",
    "Requests answered, per route template, method and status.",
    ["method", "route", "status"],
)
RATE_LIMITED = Counter(
    "medbook_rate_limited",
    "Requests refused with 429 (rate limits and login locks), per route template.",
    ["route"],
)
CACHE_HITS = Counter("medbook_slot_cache_hits", "Doctor-days served from the slot cache.")
CACHE_MISSES = Counter("medbook_slot_cache_misses", "Doctor-days computed from PostgreSQL.")
PUSHES = Counter("medbook_websocket_pushes", "Fragments pushed to open websockets.")
OPEN_SOCKETS = Gauge(
    "medbook_websockets_open", "Open live-update websockets.", multiprocess_mode="livesum"
)
EFFECTS_WAITING = Gauge(
    "medbook_after_commit_waiting",
    "Committed changes whose cache invalidation and live update wait for Redis to answer.",
    multiprocess_mode="livesum",
)
POOL_IN_USE = Gauge(
    "medbook_db_pool_in_use",
    "Database connections checked out of the web pool.",
    multiprocess_mode="livesum",
)
POOL_SIZE = Gauge(
    "medbook_db_pool_size",
    "Connections the web pool may hold (pool_size + max_overflow).",
    multiprocess_mode="livesum",
)
# A checkout usually finds an idle connection (microseconds) or opens one (milliseconds);
# a full pool makes requests queue, up to DB_POOL_TIMEOUT (5 s by default) and a 503.
POOL_WAIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
POOL_WAIT_SECONDS = Histogram(
    "medbook_db_pool_wait_seconds",
    "Time a web request waited for a database connection from the pool.",
    buckets=(*POOL_WAIT_BUCKETS, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
# Each is a new PostgreSQL backend (a fork, authentication, and the first, slow, run of
# each statement on it): after the start-up's pool, opening more means overflow
# connections come and go under bursts (DB_POOL_SIZE / DB_MAX_OVERFLOW).
CONNECTIONS_OPENED = Counter(
    "medbook_db_connections_opened",
    "Database connections the web pool opened (the start-up's pool included).",
)
POOL_TIMEOUTS = Counter(
    "medbook_db_pool_timeouts",
    "Checkouts that gave up after DB_POOL_TIMEOUT (answered 503).",
)
ADMISSION_SHED = Counter(
    "medbook_admission_shed",
    "Requests refused with 503 by admission control (app/web/admission.py): the wait "
    "queue was full (or longer than its slots serve within the wait), no slot came "
    "within ADMISSION_MAX_WAIT_MS, the queue was standing (not empty for 100 ms: "
    "refused without waiting), or the event loop kept running later than "
    "ADMISSION_MAX_WAIT_MS (lagging).",
    ["reason"],
)
# Bound once: the shed path must stay cheap, and every series exists from the start.
ADMISSION_SHED_QUEUE_FULL = ADMISSION_SHED.labels("queue_full")
ADMISSION_SHED_WAITED = ADMISSION_SHED.labels("waited")
ADMISSION_SHED_STANDING = ADMISSION_SHED.labels("standing")
ADMISSION_SHED_LAGGING = ADMISSION_SHED.labels("lagging")
ADMISSION_LIMIT = Gauge(
    "medbook_admission_limit",
    "Requests the server processes admit at once now (each process's limit follows its "
    "event loop's lag, up to ADMISSION_MAX_IN_FLIGHT).",
    multiprocess_mode="livesum",
)
LOOP_LAG_SECONDS = Histogram(
    "medbook_event_loop_lag_seconds",
    "How late a server process's event loop ran a 10 ms timer: how long a request's "
    "bytes wait before the process reads them.",
    buckets=(0.0005, *LATENCY_BUCKETS),
)

# Read at scrape by the answering process; global values, not per process.
DEAD_NOTIFICATIONS = "medbook_notifications_dead"
WAITLIST_OFFERS = "medbook_waitlist_offers"
QUEUE_JOBS = "medbook_queue_jobs"
BREAKER_OPEN = "medbook_notify_breaker_open"
BREAKER_OPEN_UNTIL = "medbook_notify_breaker_open_until_seconds"
BREAKER_FAILURES = "medbook_notify_breaker_failures"

# Every series name /metrics exposes (what alert rules may reference). A test compares
# this with a real scrape.
EXPORTED = frozenset(
    {
        "medbook_http_request_duration_seconds_bucket",
        "medbook_http_request_duration_seconds_sum",
        "medbook_http_request_duration_seconds_count",
        "medbook_http_requests_total",
        "medbook_rate_limited_total",
        "medbook_slot_cache_hits_total",
        "medbook_slot_cache_misses_total",
        "medbook_websocket_pushes_total",
        "medbook_websockets_open",
        "medbook_after_commit_waiting",
        "medbook_db_pool_in_use",
        "medbook_db_pool_size",
        "medbook_db_pool_wait_seconds_bucket",
        "medbook_db_pool_wait_seconds_sum",
        "medbook_db_pool_wait_seconds_count",
        "medbook_db_connections_opened_total",
        "medbook_db_pool_timeouts_total",
        "medbook_admission_shed_total",
        "medbook_admission_limit",
        "medbook_event_loop_lag_seconds_bucket",
        "medbook_event_loop_lag_seconds_sum",
        "medbook_event_loop_lag_seconds_count",
        # From the worker's folder, once a worker on this host has started (tasks/metrics.py).
        "medbook_job_duration_seconds_bucket",
        "medbook_job_duration_seconds_sum",
        "medbook_job_duration_seconds_count",
        "medbook_job_failures_total",
        DEAD_NOTIFICATIONS,
        QUEUE_JOBS,
        BREAKER_OPEN,
        BREAKER_OPEN_UNTIL,
        BREAKER_FAILURES,
    }
)


def _route(scope: Scope) -> str:
    return str(scope.get("path_template") or "unmatched")


def _status(exc: BaseException) -> int:
    if isinstance(exc, HTTPException | DomainError):
        return int(exc.status_code)
    return 500


class MetricsMiddleware(AbstractMiddleware):
    """Times each HTTP request and counts it by route template, method and status.

    Outermost of the app's middleware, so the time includes authentication and rate
    limiting. An exception raised by inner middleware (401, 403, 429) is answered by
    Litestar outside this middleware; its status is read from the exception.
    """

    scopes = {ScopeType.HTTP}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"].startswith(EXCLUDED_PREFIXES):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException as exc:
            status = _status(exc)
            raise
        finally:
            route, method = _route(scope), str(scope.get("method", "GET"))
            REQUEST_SECONDS.labels(method, route).observe(time.perf_counter() - started)
            REQUESTS.labels(method, route, str(status)).inc()
            if status == 429:
                RATE_LIMITED.labels(route).inc()
            app = scope["app"]
            if time.monotonic() - app.state.get("metrics_synced_at", 0.0) >= REQUEST_SYNC_INTERVAL:
                sync_process_values(app)


def _connection_opened(_dbapi_connection: Any, _record: Any) -> None:
    CONNECTIONS_OPENED.inc()


def _pool_wait(seconds: float, timed_out: bool) -> None:
    POOL_WAIT_SECONDS.observe(seconds)
    if timed_out:
        POOL_TIMEOUTS.inc()


def sync_process_values(app: Litestar) -> None:
    """Copy this process's plain counters into the metrics (only what grew since last)."""
    services = Services.of(app)
    app.state["metrics_synced_at"] = time.monotonic()
    seen: dict[str, int] = app.state.setdefault("metrics_seen", {})
    cache, hub = services.slot_cache, services.hub
    sources = [("hits", cache.hits, CACHE_HITS), ("misses", cache.misses, CACHE_MISSES)]
    if hub is not None:
        sources.append(("pushed", hub.pushed, PUSHES))
        OPEN_SOCKETS.set(hub.open_sockets)
    EFFECTS_WAITING.set(len(services.effects.missed))
    for name, value, counter in sources:
        grown = value - seen.get(name, 0)
        if grown > 0:
            counter.inc(grown)
        seen[name] = value
    if isinstance(pool := services.engine.pool, AsyncAdaptedQueuePool):
        POOL_IN_USE.set(pool.checkedout())


def _multiprocess_folders(web: Path) -> list[Path]:
    """This host's folders of multiprocess files: the web processes' and, when `medbook
    serve` laid them out (`…/web`), the worker's beside it."""
    worker = web.parent / "worker"
    return [web, worker] if web.name == "web" and worker.is_dir() else [web]


class _MultiprocessFiles:
    """prometheus-client's multiprocess collector over several folders: every file of
    every folder merged into one set of families (sums across processes)."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders = folders

    def collect(self) -> Iterable[Metric]:
        for attempt in range(3):
            files = [str(f) for folder in self.folders for f in sorted(folder.glob("*.db"))]
            try:
                return multiprocess.MultiProcessCollector.merge(files, accumulate=True)
            except FileNotFoundError:  # a restarting worker emptied its folder meanwhile
                if attempt == 2:
                    raise
        return []


class _Snapshot:
    """A collector that yields metric families read just before the scrape."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


async def _dead_notifications(app: Litestar) -> list[Metric]:
    family = GaugeMetricFamily(DEAD_NOTIFICATIONS, "Notifications not delivered (dead letters).")
    async with asyncio.timeout(SCRAPE_TIMEOUT), Services.of(app).engine.connect() as conn:
        # The partial index ix_notifications_dead makes this an index-only count.
        count = await conn.scalar(text("SELECT count(*) FROM notifications WHERE status = 'dead'"))
    family.add_metric([], int(count or 0))
    return [family]


async def _waitlist_offers(app: Litestar) -> list[Metric]:
    family = GaugeMetricFamily(
        WAITLIST_OFFERS,
        "Waitlist offers ever made, by what became of them (open: held now).",
        labels=["status"],
    )
    async with asyncio.timeout(SCRAPE_TIMEOUT), Services.of(app).engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT status, count(*) FROM waitlist_offers GROUP BY status")
        )
        counts: dict[str, int] = {status: n for status, n in rows.all()}
    for status in OFFER_STATUSES:
        family.add_metric([status], int(counts.get(status, 0)))
    return [family]


async def _queue_jobs(app: Litestar) -> list[Metric]:
    family = GaugeMetricFamily(QUEUE_JOBS, "SAQ jobs waiting and running.", labels=["state"])
    redis: Any = Services.of(app).redis  # redis-py's stubs mix its sync and async types
    async with asyncio.timeout(SCRAPE_TIMEOUT):
        queued = await redis.llen(f"saq:{QUEUE_NAME}:queued")
        active = await redis.llen(f"saq:{QUEUE_NAME}:active")
    family.add_metric(["queued"], int(queued))
    family.add_metric(["active"], int(active))
    return [family]


async def _breakers(app: Litestar) -> list[Metric]:
    opened = GaugeMetricFamily(
        BREAKER_OPEN,
        "1 while a provider's circuit breaker is open or half-open (sends wait), else 0.",
        labels=["channel"],
    )
    until = GaugeMetricFamily(
        BREAKER_OPEN_UNTIL,
        "Epoch seconds an open breaker's cooldown ends (0 when closed).",
        labels=["channel"],
    )
    failures = GaugeMetricFamily(
        BREAKER_FAILURES,
        "Transient send failures in a row, counted by a closed breaker.",
        labels=["channel"],
    )
    async with asyncio.timeout(SCRAPE_TIMEOUT):
        for name in PROVIDERS:
            state = await read_state(Services.of(app).redis, name, time.time())
            opened.add_metric([name], int(state.state != "closed"))
            until.add_metric([name], state.open_until.timestamp() if state.open_until else 0)
            failures.add_metric([name], state.failures)
    return [opened, until, failures]


async def scrape(app: Litestar) -> bytes:
    """The Prometheus text exposition for this process (or all of them, multiprocess)."""
    sync_process_values(app)
    families = []
    for read in (_dead_notifications, _queue_jobs, _breakers, _waitlist_offers):
        try:
            families += await read(app)
        except Exception as exc:  # a scrape must answer even when PostgreSQL or Redis lag
            log.warning("metrics: %s skipped: %r", read.__name__, exc)
    if folder := os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        registry.register(_MultiprocessFiles(_multiprocess_folders(Path(folder))))
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    now = CollectorRegistry(auto_describe=False)
    now.register(_Snapshot(families))
    return body + generate_latest(now)


@get("/metrics", opt=PUBLIC, include_in_schema=False, tags=["ops"])
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus metrics. Public like /health: expose it to the scraper's network only."""
    return Response(await scrape(request.app), media_type=CONTENT_TYPE_LATEST)


@contextlib.asynccontextmanager
async def metrics_lifespan(app: Litestar) -> AsyncIterator[None]:
    """Keep per-process values fresh between requests; retire this process's live gauges
    on shutdown, so a stopped worker's sockets and connections stop counting."""
    services = Services.of(app)
    POOL_SIZE.set(services.settings.db_pool_size + services.settings.db_max_overflow)
    observe_pool_waits(services.engine, _pool_wait)
    # The start-up's connections (app/web/asgi.py warm_pool) were opened before this
    # lifespan began: count the pool's present connections, then each new one.
    pool = services.engine.pool
    if isinstance(pool, AsyncAdaptedQueuePool):
        CONNECTIONS_OPENED.inc(pool.checkedin() + pool.checkedout())
    event.listen(services.engine.sync_engine, "connect", _connection_opened)

    async def refresh() -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL)
            sync_process_values(app)

    task = asyncio.create_task(refresh())
    try:
        yield
    finally:
        observe_pool_waits(services.engine, None)
        event.remove(services.engine.sync_engine, "connect", _connection_opened)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if os.environ.get(MULTIPROC_ENV):
            multiprocess.mark_process_dead(os.getpid())
