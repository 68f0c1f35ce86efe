"""Analytics at year scale (issue 8): backfill, annual reports, full export, booking beside it.

Usage (after `medbook seed scale` loaded the year into DATABASE_URL):

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/scale_bench \
        .venv/bin/python bench/analytics_bench.py [--requests 100] [--skip-backfill]

Steps, each against the real stack:

1. `medbook analytics backfill` over every clinic-local day of the data (a subprocess, as
   an operator runs it): wall time.
2. `medbook serve --workers 2` on a free port (Redis: REDIS_URL, default
   redis://127.0.0.1:6379/3, flushed first); the annual report (all 50 clinics, the whole
   year) for every report and grouping, `--requests` sequential requests each over HTTP:
   p50 / p95 / p99, and the CPU time per request of the server processes plus the
   PostgreSQL backends serving this database (a figure that a busy, shared machine
   disturbs far less than wall time). Also the dashboard page (all its reports), once
   repeating one range and once with a different range every request (nothing cached can
   answer), and one clinic's year. The rollup tables are ANALYZEd first (autovacuum may be
   off, as on the test cluster; without statistics the planner spills small sorts to disk).
3. Bookings at 20/s for a while alone, then the export of every appointment (requested
   through the API, written by the export job in a child process, as the worker would)
   with bookings at 20/s beside it: booking latency both ways; the export's rows per
   second and the child's peak resident memory (ru_maxrss), with its size before the
   export started for comparison. The bench's bookings are deleted afterwards.

The Markdown report is printed and written to bench/results/analytics.md (`--out`).
`--reports-only` stops after step 2.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.access.tokens import issue_access_token  # noqa: E402
from app.settings import plain_database_url  # noqa: E402
from bench.availability_bench import server_env, start_server  # noqa: E402

REPORTS = [
    ("no-shows", {"group_by": "clinic"}),
    ("no-shows", {"group_by": "doctor"}),
    ("no-shows", {"group_by": "weekday"}),
    ("no-shows", {"group_by": "hour"}),
    ("no-shows", {"group_by": "lead_time"}),
    ("popular-slots", {}),
    ("utilisation", {}),
    ("cancellations", {}),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> str:
    return (
        f"{statistics.median(values):.1f} | {pct(values, 95):.1f} | {pct(values, 99):.1f} | "
        f"{len(values)}"
    )


async def data_span(url: str) -> tuple[dt.date, dt.date, int, list[int], list[int]]:
    conn = await asyncpg.connect(url)
    try:
        first, last = await conn.fetchrow(
            "SELECT min((a.starts_at AT TIME ZONE c.timezone)::date), "
            "max((a.starts_at AT TIME ZONE c.timezone)::date) "
            "FROM appointments a JOIN clinics c ON c.id = a.clinic_id"
        )
        admin = await conn.fetchval("SELECT id FROM users WHERE role = 'admin' ORDER BY id")
        patients = [
            r["id"]
            for r in await conn.fetch(
                "SELECT id FROM users WHERE role = 'patient' ORDER BY id LIMIT 2000"
            )
        ]
        doctors = [r["id"] for r in await conn.fetch("SELECT id FROM doctors WHERE active")]
    finally:
        await conn.close()
    if not admin or len(patients) < 500:
        raise SystemExit("load the year first: medbook seed scale")
    return first, last, admin, patients, doctors


ROLLUPS = "clinic_daily_stats, clinic_bucket_stats, clinic_monthly_stats, clinic_monthly_buckets"


async def analyze_rollups(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"ANALYZE {ROLLUPS}")
    finally:
        await conn.close()


class CpuMeter:
    """CPU seconds of the server's process tree and of the PostgreSQL backends connected
    to the bench's database (the server's pools: they stay connected between requests)."""

    def __init__(self, server_pid: int, url: str) -> None:
        self.server_pid = server_pid
        self.url = url

    async def seconds(self) -> float:
        conn = await asyncpg.connect(self.url)
        try:
            pids = [
                r["pid"]
                for r in await conn.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid()"
                )
            ]
        finally:
            await conn.close()
        procs: list[psutil.Process] = []
        try:
            root = psutil.Process(self.server_pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
        for pid in pids:
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                continue
        total = 0.0
        for proc in procs:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total


def backfill(env: dict[str, str], first: dt.date, last: dt.date) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "app.cli", "analytics", "backfill", "--from", str(first),
         "--to", str(last)],
        env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - started


async def timed_get(client: httpx.AsyncClient, path: str, params: dict, headers: dict) -> float:
    started = time.perf_counter()
    response = await client.get(path, params=params, headers=headers)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise SystemExit(f"{path} {params}: {response.status_code} {response.text[:300]}")
    return elapsed


async def timed_case(
    client, meter: CpuMeter, path: str, params_for, headers: dict, requests: int
) -> str:
    """`requests` sequential GETs (after 5 warm-ups): latency percentiles, CPU per request."""
    for i in range(5):
        await timed_get(client, path, params_for(i), headers)
    before = await meter.seconds()
    times = [await timed_get(client, path, params_for(i), headers) for i in range(requests)]
    cpu_ms = (await meter.seconds() - before) * 1000 / requests
    return f"{summary(times)} | {cpu_ms:.1f} |"


async def reports(
    client, meter: CpuMeter, admin_headers, year: dict, requests: int, clinic_id: int
) -> list[str]:
    rows = []
    cases = [(f"/api/analytics/{name}", extra) for name, extra in REPORTS]
    cases.append(("/analytics", {}))
    for path, extra in cases:
        params = year | extra
        line = await timed_case(client, meter, path, lambda _, p=params: p, admin_headers, requests)
        label = path + (f"?group_by={extra['group_by']}" if extra else "")
        rows.append(f"| {label} (year, 50 clinics) | {line}")

    first, last = (dt.date.fromisoformat(year[k]) for k in ("from", "to"))

    def shifted(i: int) -> dict:
        """A different year-long range each request (a day later each time, wrapping
        within the data), so no cached answer can serve it."""
        k = i % 60
        return {
            "from": str(first + dt.timedelta(days=k)),
            "to": str(last - dt.timedelta(days=59 - k)),
        }

    line = await timed_case(client, meter, "/analytics", shifted, admin_headers, requests)
    rows.append(f"| /analytics (10 months, 50 clinics, another range each request) | {line}")
    one = year | {"clinic_id": clinic_id}
    line = await timed_case(
        client, meter, "/api/analytics/utilisation", lambda _: one, admin_headers, requests
    )
    rows.append(f"| /api/analytics/utilisation (year, one clinic) | {line}")
    return rows


async def free_slots(client, headers, doctors, today, wanted: int) -> list[tuple[int, str]]:
    rng = random.Random(8)
    found: list[tuple[int, str]] = []
    while len(found) < wanted:
        doctor = rng.choice(doctors)
        day = today + dt.timedelta(days=rng.randint(5, 85))
        response = await client.get(
            "/api/appointments/available-slots",
            params={"doctor_id": doctor, "date": day.isoformat()},
            headers=headers,
        )
        free = [s["start"] for s in response.json()["slots"] if s["available"]]
        found += [(doctor, start) for start in rng.sample(free, min(2, len(free)))]
    return found[:wanted]


async def book_stream(
    client, slots, tokens, rate: float, stop, booked_ids: list[int]
) -> list[float]:
    """Book at `rate` per second until `stop()` says so; latencies in ms."""
    times: list[float] = []
    interval = 1 / rate
    next_at = time.perf_counter()
    while slots and not stop(len(times)):
        doctor, start = slots.pop()
        token = tokens.pop()
        began = time.perf_counter()
        response = await client.post(
            "/api/appointments",
            json={"doctor_id": doctor, "start": start},
            headers={"Authorization": f"Bearer {token}"},
        )
        times.append((time.perf_counter() - began) * 1000)
        if response.status_code == 201:
            booked_ids.append(response.json()["id"])
        elif response.status_code != 409:
            raise SystemExit(f"booking: {response.status_code} {response.text[:300]}")
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    return times


def export_child(export_id: str) -> None:
    """Run one export as the worker would, then print rows, seconds and memory as JSON."""
    from app.analytics.exports import export_store, run_export, work_dir
    from app.settings import get_settings
    from db.session import create_engine

    async def go() -> dict:
        settings = get_settings()
        engine = create_engine(settings, application_name="medbook-worker")
        read = create_engine(
            settings,
            url=settings.database_read_url or settings.database_url,
            statement_timeout_ms=settings.analytics_statement_timeout_ms,
            application_name="medbook-analytics",
        )
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        started = time.perf_counter()
        view = await run_export(engine, read, export_store(settings), work_dir(settings), export_id)
        seconds = time.perf_counter() - started
        await engine.dispose()
        await read.dispose()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {
            "status": view.status,
            "rows": view.rows_done,
            "bytes": view.size_bytes,
            "seconds": seconds,
            "rss_before_mb": before,
            "rss_peak_mb": peak,
        }

    print(json.dumps(asyncio.run(go())))


async def main(args: argparse.Namespace) -> None:
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        raise SystemExit("set DATABASE_URL to the year-scale database")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/3")
    redis.Redis.from_url(redis_url).flushdb()
    secret = secrets.token_urlsafe(40)
    env = server_env(
        database_url,
        redis_url,
        secret,
        MEDBOOK_DATA_DIR=str(ROOT / "var" / "bench"),
        RATE_LIMIT_USER_PER_MINUTE="0",
        DB_SLOW_QUERY_MS="0",  # the backfill's statements are slow by nature
    )
    url = plain_database_url(database_url)
    first, last, admin_id, patients, doctors = await data_span(url)
    lines = [
        "# Analytics at year scale",
        "",
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
        f"data {first} to {last} (`medbook seed scale`).",
        "",
    ]
    if not args.skip_backfill:
        seconds = backfill(env, first, last)
        days = (last - first).days + 1
        lines += [f"Backfill of {days} days, all clinics: **{seconds:.1f} s**.", ""]

    await analyze_rollups(url)
    port = free_port()
    server = start_server(env, port, log_name="analytics-server.log")
    booked_ids: list[int] = []
    try:
        admin = {
            "Authorization": "Bearer "
            + issue_access_token(secret, user_id=admin_id, role="admin", ttl_seconds=7200)
        }
        year = {"from": str(first), "to": str(last)}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            meter = CpuMeter(server.pid, url)
            lines += [
                "| request | p50 ms | p95 ms | p99 ms | n | CPU ms per request |",
                "| --- | --- | --- | --- | --- | --- |",
                *await reports(client, meter, admin, year, args.requests, clinic_id=1),
                "",
                "CPU per request: the two server processes plus the PostgreSQL backends "
                "connected to this database, user + system.",
                "",
            ]
            if args.reports_only:
                finish(lines, args.out)
                return
            tokens = [
                issue_access_token(secret, user_id=p, role="patient", ttl_seconds=7200)
                for p in patients
            ]
            random.Random(3).shuffle(tokens)
            slots = await free_slots(client, admin, doctors, dt.date.today(), 1200)
            alone = await book_stream(client, slots, tokens, 20, lambda n: n >= 200, booked_ids)

            made = await client.post("/api/analytics/exports", json=year, headers=admin)
            export_id = made.json()["id"]
            child = await asyncio.create_subprocess_exec(
                sys.executable, str(Path(__file__)), "--export-child", export_id,
                env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            beside = await book_stream(
                client, slots, tokens, 20, lambda n: child.returncode is not None, booked_ids
            )
            out, _ = await child.communicate()
            result = json.loads(out.decode().strip().splitlines()[-1])
            # The 180 MB file has been measured; do not keep it around.
            (ROOT / "var" / "bench" / "exports" / f"{export_id}.csv").unlink(missing_ok=True)
        lines += [
            f"Export of every appointment ({result['rows']:,} rows, "
            f"{result['bytes'] / 1e6:.0f} MB of CSV): **{result['seconds']:.1f} s**, "
            f"**{result['rows'] / result['seconds']:,.0f} rows/s**; peak resident memory of "
            f"the exporting process **{result['rss_peak_mb']:.0f} MB** "
            f"({result['rss_before_mb']:.0f} MB before the export started).",
            "",
            "| booking (POST /api/appointments, 20/s) | p50 ms | p95 ms | p99 ms | n |",
            "| --- | --- | --- | --- | --- |",
            f"| alone | {summary(alone)} |",
            f"| while the export runs | {summary(beside)} |",
            "",
        ]
    finally:
        server.terminate()
        server.wait(timeout=20)
        if booked_ids:
            conn = await asyncpg.connect(url)
            try:
                await conn.execute("DELETE FROM appointments WHERE id = ANY($1)", booked_ids)
            finally:
                await conn.close()
        redis.Redis.from_url(redis_url).flushdb()
    finish(lines, args.out)


def finish(lines: list[str], out: Path) -> None:
    report = "\n".join(lines)
    print(report)
    out.write_text(report + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--skip-backfill", action="store_true")
    parser.add_argument("--reports-only", action="store_true", help="stop after the reports")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "analytics.md")
    parser.add_argument("--export-child", help=argparse.SUPPRESS)
    cli_args = parser.parse_args()
    if cli_args.export_child:
        export_child(cli_args.export_child)
    else:
        asyncio.run(main(cli_args))
