"""Job metrics of the SAQ worker: how long each job function runs and how often it fails.

The worker is a process of its own: `medbook worker` sets PROMETHEUS_MULTIPROC_DIR to
`…/metrics/worker` (app/cli.py), beside the web processes' `…/metrics/web`, so these values
land in prometheus-client's multiprocess files there, and `GET /metrics` of a web process on
the same host sums that folder with its own (app/web/metrics.py). Only these two series live
here: the worker imports nothing of the web layer's metrics, so it writes no web series.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Histogram

# From a heartbeat (milliseconds) to an export or the nightly close (up to an hour).
JOB_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    900,
    1800,
    3600,
)

JOB_SECONDS = Histogram(
    "medbook_job_duration_seconds",
    "Time each SAQ job attempt ran, per job function (failed attempts included).",
    ["function"],
    buckets=JOB_BUCKETS,
)
JOB_FAILURES = Counter(
    "medbook_job_failures",
    "SAQ job attempts that raised or timed out, per job function (retried or not).",
    ["function"],
)

_STARTED = "medbook_started"


def prepare(functions: Iterable[Any]) -> None:
    """Create every function's series at zero, so the first failure is an increase that
    `increase()` and `rate()` can see, not a series appearing from nothing."""
    for function in functions:
        name = getattr(function, "__qualname__", str(function))
        JOB_SECONDS.labels(name)
        JOB_FAILURES.labels(name)


async def before_process(ctx: dict[str, Any]) -> None:
    """SAQ hook: each job gets a context of its own; note when the attempt started."""
    ctx[_STARTED] = time.perf_counter()


async def after_process(ctx: dict[str, Any]) -> None:
    """SAQ hook, after every attempt (completed, failed, timed out or retried)."""
    job = ctx.get("job")
    started = ctx.get(_STARTED)
    if job is None or started is None:
        return
    JOB_SECONDS.labels(job.function).observe(time.perf_counter() - started)
    if ctx.get("exception") is not None:  # SAQ puts the error there, timeouts included
        JOB_FAILURES.labels(job.function).inc()
