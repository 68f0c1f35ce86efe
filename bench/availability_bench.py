"""Availability and booking at year scale against two server processes (issue: booking engine).

Usage (after `medbook seed scale` loaded the year into DATABASE_URL):

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/scale_bench \
        .venv/bin/python bench/availability_bench.py [--seconds 30]

It starts `medbook serve --workers 2` on a free port against that database and a Redis
database of its own (REDIS_URL, default redis://127.0.0.1:6379/2, flushed first), then
measures, each for `--seconds`:

- a bare JSON route (`/health/live`) at the target rate: the framework's floor;
- availability at 200 requests/s, all cache hits, then all cache misses;
- availability at 200 requests/s with bookings at 20/s mixed in;
- the closed-loop throughput of cached availability and of the bare route (wrk), at the
  highest connection count whose p99 stays under 50 ms;
- in process, the review's "before" design (no index: a sequential scan, then one
  comparison per slot and booking in Python) against medbook's query + pure function.

The Markdown report is printed and written to bench/results/availability.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.access.tokens import issue_access_token  # noqa: E402
from app.scheduling.availability import TemplateRange, day_grid  # noqa: E402
from app.settings import plain_database_url  # noqa: E402
from bench.loadgen import HEADER, Client, run  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(database_url: str, redis_url: str, secret: str, **extra: str) -> dict[str, str]:
    """The environment of a bench's `medbook` processes: server mode, quiet logs."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": secret,
        "LOG_LEVEL": "WARNING",
        "MEDBOOK_EMBEDDED": "",
        # Benches rerun on one year and their patients keep what earlier runs booked; the
        # per-doctor limit is still checked (its count is part of every booking's query),
        # only its threshold is out of the way.
        "BOOKING_MAX_FUTURE_PER_DOCTOR": "1000",
        **extra,
    }


START_SECONDS = 180


def start_server(
    env: dict[str, str],
    port: int,
    server: str = "uvicorn",
    log_name: str = "server.log",
    workers: int = 2,
    new_session: bool = False,
) -> subprocess.Popen:
    """`medbook serve --workers 2` on `port`, once /health/ready answers; its output goes
    to bench/results/`log_name`. Every bench starts its server with this. `new_session`:
    in a process group of its own, which the caller stops with os.killpg."""
    log = open(ROOT / "bench" / "results" / log_name, "w")  # noqa: SIM115
    serve = ["serve", "--workers", str(workers), "--port", str(port), "--server", server]
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", *serve],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=new_session,
    )
    # A loaded machine (another bench, a test run) has taken over 50 s to start two
    # processes: wait long, but give up at once on a server that exited.
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.3)
    if new_session:
        os.killpg(process.pid, signal.SIGKILL)
    else:
        process.kill()
    raise SystemExit(f"server did not become ready; see bench/results/{log_name}")


async def load_fixtures(database_url: str, secret: str, today: dt.date) -> dict:
    conn = await asyncpg.connect(plain_database_url(database_url))
    try:
        doctors = [
            (r["id"], r["timezone"])
            for r in await conn.fetch(
                "SELECT d.id, c.timezone FROM doctors d JOIN clinics c ON c.id = d.clinic_id "
                "WHERE d.active ORDER BY d.id"
            )
        ]
        patients = await conn.fetch(
            "SELECT id, patient_id FROM users WHERE role = 'patient' ORDER BY id LIMIT 1000"
        )
        counts = await conn.fetchval("SELECT count(*) FROM appointments")
    finally:
        await conn.close()
    if not doctors or len(patients) < 100:
        raise SystemExit("load the year first: medbook seed scale")
    tokens = [
        issue_access_token(secret, user_id=p["id"], role="patient", ttl_seconds=3600)
        for p in patients
    ]
    return {"doctors": doctors, "tokens": tokens, "appointments": counts, "today": today}


async def free_slots(client, headers, doctors, today, wanted: int) -> list[tuple[int, str]]:
    """Free slots far enough ahead, spread over doctors, for the booking stream: up to three
    per doctor-day, walking doctor-days 20-80 days ahead in a shuffled order (reruns on
    the same year book what earlier runs found, so later runs look further)."""
    pairs = [(d, today + dt.timedelta(days=k)) for d, _ in doctors for k in range(20, 81)]
    random.Random(7).shuffle(pairs)
    found = await first_free(client, headers, pairs, wanted)
    if len(found) < wanted:
        raise SystemExit(f"only {len(found)} free slots 20-80 days ahead; reload the year")
    return found


async def first_free(
    client, headers, pairs, wanted: int, after: dt.datetime | None = None
) -> list[tuple[int, str]]:
    """Up to three free slots (starting after `after`, when given) of each (doctor, day)
    in turn, until `wanted` are found (fewer when the days run out)."""
    found: list[tuple[int, str]] = []
    for doctor_id, day in pairs:
        response = await client.get(
            "/api/appointments/available-slots",
            params={"doctor_id": doctor_id, "date": day.isoformat()},
            headers=headers,
        )
        free = [
            s["start"]
            for s in response.json()["slots"]
            if s["available"] and (after is None or dt.datetime.fromisoformat(s["start"]) > after)
        ]
        found += [(doctor_id, start) for start in free[:3]]
        if len(found) >= wanted:
            break
    return found[:wanted]


def cache_counts(base: str) -> tuple[float, float]:
    """The server's slot-cache hit and miss counters (every process), read from /metrics."""
    text = httpx.get(f"{base}/metrics", timeout=10).text

    def total(name: str) -> float:
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))

    return total("medbook_slot_cache_hits_total"), total("medbook_slot_cache_misses_total")


def cpu_seconds(server_pid: int) -> dict[str, float]:
    """CPU seconds used so far by the server's processes, every PostgreSQL and Redis
    process on the machine, and this load generator: the four that share the two cores."""
    groups = dict.fromkeys(
        ["server", "server (system)", "postgres", "redis", "load generator"], 0.0
    )
    server = {server_pid}
    with contextlib.suppress(psutil.NoSuchProcess):
        server |= {c.pid for c in psutil.Process(server_pid).children(recursive=True)}
    for proc in psutil.process_iter(["name"]):
        try:
            name = proc.info["name"] or ""
            group = (
                "server"
                if proc.pid in server
                else "load generator"
                if proc.pid == os.getpid()
                else "postgres"
                if name.startswith("postgres")
                else "redis"
                if name.startswith("redis")
                else None
            )
            if group is not None:
                times = proc.cpu_times()
                groups[group] += times.user + times.system
                if group == "server":  # its kernel share, already counted in "server"
                    groups["server (system)"] += times.system
        except psutil.NoSuchProcess:
            continue
    return groups


def cpu_line(name: str, before: dict[str, float], after: dict[str, float], count: int) -> str:
    """CPU milliseconds per request of each group over one phase."""
    parts = [f"{g} {(after[g] - before[g]) * 1000 / count:.2f}" for g in before]
    total = sum(after[g] - before[g] for g in before if g != "server (system)")
    return f"{name}: CPU ms per request: {', '.join(parts)} (all {total * 1000 / count:.2f})."


def wrk_run(url: str, tokens: list[str], paths: list[str], seconds: int, connections: int) -> dict:
    script = ROOT / "bench" / "results" / "wrk_paths.lua"
    quoted = ",".join(f'"{p}"' for p in paths)
    bearer = ",".join(f'"Bearer {t}"' for t in tokens)
    script.write_text(
        f"local paths = {{{quoted}}}\n"
        f"local tokens = {{{bearer}}}\n"
        "request = function()\n"
        "  local headers = {Authorization = tokens[math.random(#tokens)]}\n"
        "  return wrk.format(nil, paths[math.random(#paths)], headers)\n"
        "end\n"
    )
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(label: str) -> float:
        value, unit = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50": pct("50"),
        "p99": pct("99"),
        "connections": connections,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def best_under_50ms(url: str, tokens: list[str], paths: list[str], seconds: int) -> dict:
    best: dict | None = None
    for connections in (4, 8, 16, 32, 64):
        result = wrk_run(url, tokens, paths, seconds, connections)
        if result["p99"] < 50 and (best is None or result["rps"] > best["rps"]):
            best = result
    return best or {"rps": 0.0, "p50": float("nan"), "p99": float("nan"), "connections": 0}


async def before_and_after(database_url: str, redis_url: str, doctors, today, samples=30):
    """In process: the review's design against medbook's, on the same doctor-days."""
    from app.scheduling.slots import SlotCache, compute_days, fetch_doctor_days
    from app.settings import load_settings
    from db.session import create_engine

    settings = load_settings(
        {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "SECRET_KEY": "x" * 40}
    )
    engine = create_engine(settings, application_name="bench")
    from redis.asyncio import Redis

    cache = SlotCache(Redis.from_url(redis_url), engine)
    conn = await asyncpg.connect(plain_database_url(database_url))
    await conn.execute(
        "SET enable_indexscan = off; SET enable_bitmapscan = off;SET enable_indexonlyscan = off"
    )
    rng = random.Random(11)
    picks = [
        (rng.choice(doctors), today + dt.timedelta(days=rng.randint(-60, 60)))
        for _ in range(samples)
    ]
    before, miss, hit = [], [], []
    for (doctor_id, timezone), day in picks:
        tz = ZoneInfo(timezone)
        started = time.perf_counter()
        ranges = [
            TemplateRange(r["weekday"], r["start_time"], r["end_time"], r["slot_minutes"])
            for r in await conn.fetch(
                "SELECT weekday, start_time, end_time, slot_minutes "
                "FROM doctor_schedule_templates WHERE doctor_id = $1",
                doctor_id,
            )
        ]
        lo = dt.datetime.combine(day, dt.time(), tz)
        rows = await conn.fetch(
            "SELECT starts_at, ends_at FROM appointments WHERE doctor_id = $1 "
            "AND starts_at >= $2 AND starts_at < $3 AND status <> 'cancelled'",
            doctor_id,
            lo,
            lo + dt.timedelta(days=1),
        )
        rows += await conn.fetch(  # leave and closures block slots too
            "SELECT starts_at, ends_at FROM schedule_exceptions "
            "WHERE (doctor_id = $1 OR (doctor_id IS NULL AND clinic_id = "
            "(SELECT clinic_id FROM doctors WHERE id = $1))) "
            "AND starts_at < $3 AND ends_at > $2",
            doctor_id,
            lo,
            lo + dt.timedelta(days=1),
        )
        slots = []
        for slot in day_grid(day, ranges, tz):  # one comparison per slot and booking
            taken = False
            for row in rows:
                if row["starts_at"] < slot.end and slot.start < row["ends_at"]:
                    taken = True
            slots.append((slot, taken))
        before.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        lo_utc = dt.datetime.combine(day, dt.time(), dt.UTC) - dt.timedelta(hours=15)
        # As SlotCache does on a miss: a pooled connection, the statement through asyncpg.
        data = await fetch_doctor_days(engine, doctor_id, lo_utc, lo_utc + dt.timedelta(hours=54))
        ours = compute_days(data, [day])
        miss.append((time.perf_counter() - started) * 1000)
        assert [s.taken for s in ours[0].slots] == [t for _, t in slots], "designs disagree"

        await cache.days(doctor_id, day, 1)
        started = time.perf_counter()
        await cache.days(doctor_id, day, 1)
        hit.append((time.perf_counter() - started) * 1000)
    await conn.close()
    await engine.dispose()
    return before, miss, hit


SCENARIOS = ["bare", "hit", "miss", "mixed", "wrk", "before"]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--booking-rate", type=float, default=20)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SCENARIOS,
        default=SCENARIOS,
        help="run just these parts (default: all), e.g. `--only miss` while tuning misses",
    )
    args = parser.parse_args()
    only = set(args.only)
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        raise SystemExit("set DATABASE_URL to the database `medbook seed scale` loaded")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/2")
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    redis.Redis.from_url(redis_url).flushdb()
    secret = secrets.token_urlsafe(40)
    env = server_env(database_url, redis_url, secret)
    port = free_port()
    today = dt.date.today()
    fixtures = await load_fixtures(database_url, secret, today)
    doctors, tokens = fixtures["doctors"], fixtures["tokens"]
    server = start_server(env, port)
    base = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    try:
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10) as http:
            auth = {"Authorization": f"Bearer {tokens[0]}"}
            bookable = await free_slots(
                http, auth, doctors, today, int(args.booking_rate * args.seconds) + 10
            )
            # Forget the days that search cached, so the miss phase meets only misses.
            cache = redis.Redis.from_url(redis_url)
            for key in cache.scan_iter("avail:*", count=1000):
                cache.delete(key)
            rng = random.Random(3)
            warm = [
                (d, today + dt.timedelta(days=rng.randint(1, 14)))
                for d, _ in rng.sample(doctors, 200)
            ]
            for doctor_id, day in warm:
                await http.get(
                    "/api/appointments/available-slots",
                    params={"doctor_id": doctor_id, "date": day.isoformat()},
                    headers=auth,
                )
        cold = [(d, today + dt.timedelta(days=k)) for k in range(15, 80) for d, _ in doctors]
        random.Random(5).shuffle(cold)
        # Many users, as in life: each stays far below the per-user rate limit.
        user_headers = [{"Authorization": f"Bearer {t}"} for t in tokens]

        def availability(pairs, offset=0):
            def make(n):
                doctor_id, day = pairs[(n + offset) % len(pairs)]
                path = f"/api/appointments/available-slots?doctor_id={doctor_id}"
                return (
                    "GET",
                    f"{path}&date={day.isoformat()}",
                    None,
                    user_headers[n % len(tokens)],
                )

            return make

        def me(n):
            return ("GET", "/api/auth/me", None, user_headers[n % len(tokens)])

        def bare(n):
            return ("GET", "/health/live", None, None)

        def booking(n):
            doctor_id, start = bookable[n % len(bookable)]
            body = {"doctor_id": doctor_id, "start": start}
            return ("POST", "/api/appointments", body, user_headers[n % len(tokens)])

        client = Client("127.0.0.1", port)
        s = args.seconds
        # Warm-up, not measured: every user signs in once (their Principal gets cached),
        # connection pools fill, the interpreter warms. Steady state is what we report.
        await run(client, {"warm-up": (args.rate, me)}, len(tokens) / args.rate)
        await run(client, {"warm-up": (args.rate, availability(cold, len(cold) // 2))}, 5)
        results = []
        counted: list[str] = []  # what the server says each phase was, hits or misses
        cpu_used: list[str] = []  # where each phase's CPU went
        for part, name, stream in (
            ("bare", "bare JSON route", bare),
            ("hit", "availability, cache hit", availability(warm)),
            ("miss", "availability, cache miss", availability(cold)),
        ):
            if part not in only:
                continue
            hits, misses = cache_counts(base)
            cpu_before = cpu_seconds(server.pid)
            measured = (await run(client, {name: (args.rate, stream)}, s)).values()
            cpu_used.append(cpu_line(name, cpu_before, cpu_seconds(server.pid), int(args.rate * s)))
            results += measured
            if part != "bare":
                now_hits, now_misses = cache_counts(base)
                counted.append(
                    f"{name}: the server counted {now_hits - hits:,.0f} hits and "
                    f"{now_misses - misses:,.0f} misses."
                )
        if "mixed" in only:
            mixed = await run(
                client,
                {
                    "availability (hit) with bookings": (args.rate, availability(warm)),
                    "booking at 20/s": (args.booking_rate, booking),
                },
                s,
            )
            results += mixed.values()
        client.close()

        lines += [
            f"Data: {fixtures['appointments']:,} appointments, {len(doctors)} doctors. "
            f"Server: `medbook serve --workers 2` (uvicorn), load generator on the same "
            f"2-core machine, open loop, latency from each request's scheduled time.",
            "",
            f"### Open loop, {args.seconds:.0f} s per scenario",
            "",
            HEADER,
        ]
        lines += [r.row() for r in results]
        lines += ["", *counted, "", *cpu_used]

        if "wrk" in only and shutil.which("wrk"):
            paths = [
                f"/api/appointments/available-slots?doctor_id={d}&date={day.isoformat()}"
                for d, day in warm
            ]
            wrk_seconds = max(5, int(args.seconds // 3))
            cached = best_under_50ms(base, tokens, paths, wrk_seconds)
            floor = best_under_50ms(base, tokens, ["/health/live"], wrk_seconds)
            ratio = cached["rps"] / floor["rps"] if floor["rps"] else float("nan")
            lines += [
                "",
                "### Closed loop (wrk), best rate with p99 < 50 ms",
                "",
                "| route | connections | req/s | p50 ms | p99 ms | non-2xx |",
                "| --- | ---: | ---: | ---: | ---: | ---: |",
                f"| cached availability | {cached['connections']} | {cached['rps']:.0f} | "
                f"{cached['p50']:.2f} | {cached['p99']:.2f} | {cached.get('non2xx', 0)} |",
                f"| bare JSON route | {floor['connections']} | {floor['rps']:.0f} | "
                f"{floor['p50']:.2f} | {floor['p99']:.2f} | {floor.get('non2xx', 0)} |",
                "",
                f"Cached availability reaches **{ratio:.2f}×** the bare route's "
                "throughput (target ≥ 0.25).",
            ]
        elif "wrk" in only:
            lines += ["", "wrk not found (`apt-get install wrk`): closed-loop part skipped."]
    finally:
        server.terminate()
        server.wait(timeout=15)

    if "before" not in only:
        finish(lines)
        return
    before, miss, hit = await before_and_after(database_url, redis_url, doctors, today)
    lines += [
        "",
        "### The review's design against medbook's, in process, same doctor-days",
        "",
        "| design | median ms | mean ms | max ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, values in (
        ("before: no index, per-slot loop", before),
        ("medbook, cache miss (one indexed query + sweep)", miss),
        ("medbook, cache hit", hit),
    ):
        lines.append(
            f"| {name} | {statistics.median(values):.2f} | "
            f"{statistics.fmean(values):.2f} | {max(values):.2f} |"
        )
    speedup = statistics.median(before) / statistics.median(miss)
    lines += [
        "",
        f"Medbook's miss path is **{speedup:.0f}×** faster than the review's design, its hit path "
        f"**{statistics.median(before) / statistics.median(hit):.0f}×** (medians).",
    ]
    finish(lines)


def finish(lines: list[str]) -> None:
    """Print the report and write it to bench/results/availability.md."""
    report = "\n".join(lines) + "\n"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    (ROOT / "bench" / "results" / "availability.md").write_text(
        f"# Availability and booking benchmark ({stamp})\n\n{report}"
    )
    print(report)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
