"""Where an accepted request's time goes under overload, per request, in the server
processes (issue 17, shed17d): installed by bench/trace_site/sitecustomize.py when
MEDBOOK_ADMISSION_TRACE names a folder; `python bench/admission_trace.py <folder>` reads
what the processes wrote.

For each request the protocol admitted or queued (app/web/coalesced_http.py) it records,
on the process's monotonic clock: the time from its headers' parse to its slot (queued in
admission), from then to its task's first step (the loop's ready queue), the pool's
checkout wait and the time spent awaiting asyncpg (outermost calls: PostgreSQL, the
network and the loop's delay in resuming after the answer came), and the rest of its
time in flight (its own CPU and its turns behind the other requests in flight on the
same loop); with the in-flight count and the limit it found. Refusals at the protocol
are counted per second. Not how medbook runs: a bench aid only (each request pays a few
microseconds for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

CLASSES = (
    ("GET", re.compile(r"^/api/appointments/available-slots"), "availability"),
    ("POST", re.compile(r"^/api/appointments$"), "booking"),
    ("PATCH", re.compile(r"^/api/appointments/"), "cancel"),
    ("GET", re.compile(r"^/api/patients/\d+/records"), "records"),
    ("GET", re.compile(r"^/api/appointments$"), "lists"),
    ("POST", re.compile(r"^/api/auth/token$"), "sign-in"),
    ("POST", re.compile(r"^/api/auth/refresh"), "refresh"),
)
KEY = "medbook.trace"


def classify(method: str, path: str) -> str:
    for want, pattern, name in CLASSES:
        if method == want and pattern.match(path):
            return name
    return f"{method} other"


def install(folder: str) -> None:
    import asyncpg.connection
    import asyncpg.prepared_stmt

    from app.web import admission as admission_module
    from app.web import coalesced_http
    from db import session as db_session

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"trace-{os.getpid()}.jsonl"
    records: list[str] = []
    refused: dict[int, int] = defaultdict(int)
    # Per task: [pool wait, asyncpg time, asyncpg calls, depth].
    per_task: dict[int, list[float]] = {}
    clock = time.monotonic

    def flush() -> None:
        lines = list(records)
        records.clear()
        if refused:
            lines.append(json.dumps({"refused": dict(refused)}))
            refused.clear()
        if lines:
            with path.open("a") as file:
                file.write("\n".join(lines) + "\n")

    def every_two_seconds(loop: asyncio.AbstractEventLoop) -> None:
        flush()
        loop.call_later(2.0, every_two_seconds, loop)

    started_flushing: set[int] = set()

    protocol = coalesced_http.CoalescingHttpToolsProtocol
    original_start = protocol._start_asgi_task

    def start(self: Any, cycle: Any, app: Any) -> None:
        if id(self.loop) not in started_flushing:
            started_flushing.add(id(self.loop))
            self.loop.call_later(2.0, every_two_seconds, self.loop)
        admission = self.admission
        scope = cycle.scope
        if admission is not None:
            scope[KEY] = [clock(), admission.in_flight, admission.limit, len(admission.waiters)]
        original_start(self, cycle, app)

    protocol._start_asgi_task = start  # type: ignore[method-assign]

    original_refuse = protocol._refuse

    def refuse(self: Any, cycle: Any, admission: Any) -> None:
        refused[int(time.time())] += 1
        original_refuse(self, cycle, admission)

    protocol._refuse = refuse  # type: ignore[method-assign]

    def traced(app: Any, waiting: Any) -> Any:
        async def run(scope: Any, receive: Any, send: Any) -> None:
            first_step = clock()
            task = asyncio.current_task()
            key = id(task)
            counters = per_task[key] = [0.0, 0.0, 0.0, 0.0]
            status: list[int] = [0]

            async def send_traced(message: Any) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_traced)
            finally:
                ended = clock()
                per_task.pop(key, None)
                mark = scope.get(KEY)
                if mark is not None:
                    parsed, in_flight, limit, ahead = mark
                    records.append(
                        json.dumps(
                            {
                                "t": time.time(),
                                "class": classify(scope["method"], scope["path"]),
                                "status": status[0],
                                "queued": first_step - parsed if waiting is not None else 0.0,
                                "ready": first_step - parsed if waiting is None else 0.0,
                                "total": ended - parsed,
                                "pool": counters[0],
                                "pg": counters[1],
                                "pg_calls": counters[2],
                                "in_flight": in_flight,
                                "limit": limit,
                                "ahead": ahead,
                                "queued_path": waiting is not None,
                            }
                        )
                    )

        return run

    original_admitted = admission_module.Admission.admitted
    original_queued = admission_module.Admission.queued

    def admitted(self: Any, app: Any) -> Any:
        return original_admitted(self, traced(app, None))

    def queued(self: Any, app: Any, waiting: Any) -> Any:
        # The traced app starts once the queued request has its slot.
        return original_queued(self, traced(app, waiting), waiting)

    admission_module.Admission.admitted = admitted  # type: ignore[method-assign]
    admission_module.Admission.queued = queued  # type: ignore[method-assign]

    def counting(cls: Any, name: str, index: int) -> None:
        original = getattr(cls, name)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            task = asyncio.current_task()
            counters = per_task.get(id(task)) if task is not None else None
            if counters is None or counters[3]:
                return await original(*args, **kwargs)
            counters[3] = 1
            began = clock()
            try:
                return await original(*args, **kwargs)
            finally:
                counters[index] += clock() - began
                counters[2] += index == 1
                counters[3] = 0

        setattr(cls, name, wrapper)

    for name in ("execute", "executemany", "fetch", "fetchrow", "fetchval", "_prepare"):
        counting(asyncpg.connection.Connection, name, 1)
    for name in (
        "fetch",
        "fetchrow",
        "fetchval",
        "executemany",
        "_PreparedStatement__bind_execute",
    ):
        if hasattr(asyncpg.prepared_stmt.PreparedStatement, name):
            counting(asyncpg.prepared_stmt.PreparedStatement, name, 1)

    pool_get = db_session.TimedPool._do_get

    def do_get(self: Any) -> Any:
        began = time.perf_counter()
        try:
            return pool_get(self)
        finally:
            task = None
            with contextlib.suppress(RuntimeError):
                task = asyncio.current_task()
            counters = per_task.get(id(task)) if task is not None else None
            if counters is not None:
                counters[0] += time.perf_counter() - began

    db_session.TimedPool._do_get = do_get  # type: ignore[method-assign]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(folder: str, busiest: int = 30) -> str:
    """Per class, over the `busiest` seconds (most requests, refusals included): p50 /
    p99 of each part of an accepted request's time, in ms."""
    rows: list[dict] = []
    refused: dict[int, int] = defaultdict(int)
    for file in Path(folder).glob("trace-*.jsonl"):
        for line in file.read_text().splitlines():
            item = json.loads(line)
            if "refused" in item:
                for second, count in item["refused"].items():
                    refused[int(second)] += count
            else:
                rows.append(item)
    per_second: dict[int, int] = defaultdict(int)
    for row in rows:
        per_second[int(row["t"])] += 1
    for second, count in refused.items():
        per_second[second] += count
    chosen = set(sorted(per_second, key=per_second.__getitem__)[-busiest:])
    burst = [row for row in rows if int(row["t"]) in chosen]
    shed = sum(refused[s] for s in chosen)
    lines = [
        f"{len(burst)} accepted and {shed} refused at the protocol in the {len(chosen)} "
        f"busiest seconds ({len(burst) / max(1, len(chosen)):.0f} accepted/s)",
        "",
        "| class | n | total p50 / p99 | queued p50 / p99 | ready p50 / p99 | pool p99 "
        "| asyncpg p50 / p99 | rest (CPU + turns) p50 / p99 "
        "| in flight at parse p50 / max | limit p50 |",
        "| --- | ---: | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    by_class: dict[str, list[dict]] = defaultdict(list)
    for row in burst:
        by_class[row["class"]].append(row)
    by_class["all"] = burst
    for name, items in sorted(by_class.items(), key=lambda kv: -len(kv[1])):

        def ms(key: str, items: list[dict] = items) -> str:
            values = [row[key] * 1000 for row in items]
            return f"{percentile(values, 0.5):.1f} / {percentile(values, 0.99):.1f}"

        rest = [(r["total"] - r["queued"] - r["ready"] - r["pool"] - r["pg"]) * 1000 for r in items]
        pool = [r["pool"] * 1000 for r in items]
        flight = [r["in_flight"] for r in items]
        limit = [r["limit"] for r in items]
        lines.append(
            f"| {name} | {len(items)} | {ms('total')} | {ms('queued')} | {ms('ready')} "
            f"| {percentile(pool, 0.99):.1f} | {ms('pg')} "
            f"| {percentile(rest, 0.5):.1f} / {percentile(rest, 0.99):.1f} "
            f"| {percentile(flight, 0.5):.0f} / {max(flight)} | {percentile(limit, 0.5):.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 30))
