"""Live-update fan-out: 1,000 open websockets over 100 doctor-day channels, two processes.

Usage (year-scale data loaded by `medbook seed scale` into DATABASE_URL):

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/scale_bench \
        .venv/bin/python bench/websocket_bench.py [--sockets 1000 --channels 100 --bookings 100]

It starts `medbook serve --workers 2`, opens the sockets as patients watching a doctor's
day (`/ws/live?view=slots`), waits for each socket's initial resync, then books one slot on
each channel in turn through the HTTP API and records, for every socket of that channel,
the time from sending the booking to the fragment's arrival (an upper bound on
commit-to-arrival: it includes the booking request itself).
It reports p50/p99 of that delay and the server processes' resident memory per idle
socket. The report goes to bench/results/websockets.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import secrets
import statistics
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import psutil
import websockets
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.access.browser_sessions import COOKIE_NAME, create_session  # noqa: E402
from app.access.tokens import issue_access_token  # noqa: E402
from app.settings import plain_database_url  # noqa: E402
from bench.availability_bench import free_port, start_server  # noqa: E402


def rss_mb(process: psutil.Process) -> float:
    procs = [process, *process.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--bookings", type=int, default=100)
    args = parser.parse_args()
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        raise SystemExit("set DATABASE_URL to the database `medbook seed scale` loaded")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/2")
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    secret = secrets.token_urlsafe(40)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": secret,
        "LOG_LEVEL": "WARNING",
        "MEDBOOK_EMBEDDED": "",
        "RATE_LIMIT_USER_PER_MINUTE": "0",
    }
    conn = await asyncpg.connect(plain_database_url(database_url))
    doctors = [r["id"] for r in await conn.fetch("SELECT id FROM doctors WHERE active ORDER BY id")]
    patients = await conn.fetch("SELECT id FROM users WHERE role = 'patient' ORDER BY id LIMIT 200")
    await conn.close()
    day = dt.date.today() + dt.timedelta(days=30)
    # A working day: the seed closes every clinic at weekends, on 1 January and 25 December.
    while day.weekday() >= 5 or (day.month, day.day) in {(1, 1), (12, 25)}:
        day += dt.timedelta(days=1)
    rng = random.Random(9)
    channels = [(d, day) for d in rng.sample(doctors, args.channels)]
    cookies = [(await create_session(redis, p["id"])).session_id for p in patients]
    tokens = [
        issue_access_token(secret, user_id=p["id"], role="patient", ttl_seconds=3600)
        for p in patients
    ]

    port = free_port()
    server = start_server(env, port)
    base = f"http://127.0.0.1:{port}"
    server_proc = psutil.Process(server.pid)
    time.sleep(1)
    idle_before = rss_mb(server_proc)
    arrivals: dict[int, list[float]] = {i: [] for i in range(args.channels)}
    first_seen: dict[int, asyncio.Event] = {}
    sockets = []

    async def watch(index: int, channel: int) -> None:
        doctor_id, when = channels[channel]
        url = (
            f"ws://127.0.0.1:{port}/ws/live?view=slots&doctor_id={doctor_id}"
            f"&date={when.isoformat()}&days=1"
        )
        headers = {"Cookie": f"{COOKIE_NAME}={cookies[index % len(cookies)]}", "Origin": base}
        ready = first_seen.setdefault(index, asyncio.Event())
        async with handshakes:  # people do not all open the page in the same millisecond
            ws = await websockets.connect(url, additional_headers=headers, max_size=None)
            await ws.recv()  # the resync sent on connect
        ready.set()
        async with ws:
            sockets.append(ws)
            async for _ in ws:
                arrivals[channel].append(time.perf_counter())

    handshakes = asyncio.Semaphore(20)
    opened = time.perf_counter()
    tasks = [asyncio.create_task(watch(i, i % args.channels)) for i in range(args.sockets)]
    await asyncio.wait_for(
        asyncio.gather(*(e.wait() for e in _events(first_seen, args))), timeout=120
    )
    open_seconds = time.perf_counter() - opened
    await asyncio.sleep(2)
    idle_after = rss_mb(server_proc)

    delays: list[float] = []
    booked = 0
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        for n in range(args.bookings):
            channel = n % args.channels
            doctor_id, when = channels[channel]
            slots = (
                await http.get(
                    "/api/appointments/available-slots",
                    params={"doctor_id": doctor_id, "date": when.isoformat()},
                    headers={"Authorization": f"Bearer {tokens[0]}"},
                )
            ).json()
            free = [s["start"] for s in slots["slots"] if s["available"]]
            if not free:
                continue
            arrivals[channel].clear()
            sent = time.perf_counter()
            response = await http.post(
                "/api/appointments",
                json={"doctor_id": doctor_id, "start": free[0]},
                headers={"Authorization": f"Bearer {tokens[(n + 1) % len(tokens)]}"},
            )
            if response.status_code != 201:
                print(f"booking {n}: {response.status_code} {response.text[:120]}")
                continue
            booked += 1
            watchers = args.sockets // args.channels
            deadline = time.perf_counter() + 5
            while len(arrivals[channel]) < watchers and time.perf_counter() < deadline:
                await asyncio.sleep(0.001)
            # Measured from sending the booking: an upper bound on commit -> arrival (the
            # fragment is published right after the commit, often before the 201 arrives).
            delays += [(t - sent) * 1000 for t in arrivals[channel]]
            missing = watchers - len(arrivals[channel])
            if missing:
                print(f"booking {n}: {missing} sockets got nothing within 5 s")
    for task in tasks:
        task.cancel()
    server.terminate()
    server.wait(timeout=15)

    ordered = sorted(delays)
    if not ordered:
        raise SystemExit(f"no fragment measured ({booked} bookings made on {day}); see the log")

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * len(ordered)) - 1)]

    per_socket_kb = (idle_after - idle_before) * 1024 / args.sockets
    expected = booked * (args.sockets // args.channels)
    report = (
        "\n".join(
            [
                f"# Websocket fan-out ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)",
                "",
                f"{args.sockets} sockets over {args.channels} doctor-day channels on "
                "`medbook serve --workers 2`; client on the same 2-core machine.",
                "",
                "| measure | value |",
                "| --- | ---: |",
                f"| sockets opened (with resync) in | {open_seconds:.1f} s |",
                f"| bookings made (doctors with hours that day) | {booked} |",
                f"| fragments received | {len(delays)} (expected {expected}) |",
                f"| booking sent → fragment, p50 | {pct(50):.1f} ms |",
                f"| booking sent → fragment, p99 | {pct(99):.1f} ms |",
                f"| booking sent → fragment, max | {ordered[-1]:.1f} ms |",
                f"| mean | {statistics.fmean(delays):.1f} ms |",
                f"| server RSS idle, no sockets | {idle_before:.0f} MB |",
                f"| server RSS with {args.sockets} idle sockets | {idle_after:.0f} MB |",
                f"| memory per idle socket | {per_socket_kb:.0f} KB |",
            ]
        )
        + "\n"
    )
    (ROOT / "bench" / "results" / "websockets.md").write_text(report)
    print(report)


def _events(first_seen: dict[int, asyncio.Event], args: argparse.Namespace):
    # Sockets register their event when their task starts; wait until all have.
    return [first_seen.setdefault(i, asyncio.Event()) for i in range(args.sockets)]


if __name__ == "__main__":
    asyncio.run(main())
