"""The waitlist's promise: a freed slot reaches the first waitlister's open page in under
1 s (p99) with 100 waitlisters, every one of them with "my appointments" open (at most 24 trials:
the slots of one day).

Usage (a PostgreSQL server and Redis; a database `waitlist_bench` is made afresh):

    .venv/bin/python bench/waitlist_bench.py [--waiters 100 --trials 24]
    # BENCH_POSTGRES_URL (postgresql://postgres@127.0.0.1:5432/postgres); Redis: a
    # redis-server of its own on a free port (never a shared one: it is flushed)

It starts `medbook serve --workers 2` and `medbook worker`, lets every waitlister join the
waitlist for one doctor's day over the API and open "my appointments" on a websocket
(`/ws/live?view=my_appointments`), then, per trial, books a slot of that day for another
patient, cancels it, and times cancel sent → the fragment with the offer on the socket of
the first in line (an upper bound: it includes the cancel request, the refill job's
dequeue, the hold's commit and the push). The first in line then declines, so the slot
goes down the line and the next trial's slot is offered to the first again. The report
goes to bench/results/waitlist.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import websockets
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.access.browser_sessions import COOKIE_NAME, create_session  # noqa: E402
from app.access.tokens import issue_access_token  # noqa: E402
from bench.availability_bench import free_port, start_server  # noqa: E402
from db import migrate  # noqa: E402

BERLIN = ZoneInfo("Europe/Berlin")


async def make_world(postgres: str, waiters: int) -> tuple[str, int, list[int]]:
    """A fresh migrated database with one doctor (08:00-20:00, 30-minute slots) and
    `waiters` + 1 patients with logins; returns its URL, the doctor, the users' ids."""
    admin = await asyncpg.connect(postgres)
    await admin.execute("DROP DATABASE IF EXISTS waitlist_bench WITH (FORCE)")
    await admin.execute("CREATE DATABASE waitlist_bench")
    await admin.close()
    url = postgres.rsplit("/", 1)[0] + "/waitlist_bench"
    await asyncio.to_thread(migrate.upgrade, url)
    conn = await asyncpg.connect(url)
    clinic = await conn.fetchval(
        "INSERT INTO clinics (name, timezone) VALUES ('Bench', 'Europe/Berlin') RETURNING id"
    )
    doctor = await conn.fetchval(
        "INSERT INTO doctors (clinic_id, full_name, specialty) VALUES ($1, 'Dr. Bench', 'GP')"
        " RETURNING id",
        clinic,
    )
    await conn.executemany(
        "INSERT INTO doctor_schedule_templates (doctor_id, weekday, start_time, end_time,"
        " slot_minutes) VALUES ($1, $2, '08:00', '20:00', 30)",
        [(doctor, d) for d in range(7)],
    )
    users = []
    for i in range(waiters + 1):
        patient = await conn.fetchval(
            "INSERT INTO patients (full_name) VALUES ($1) RETURNING id", f"Patient {i}"
        )
        users.append(
            await conn.fetchval(
                "INSERT INTO users (email, password_hash, role, patient_id)"
                " VALUES ($1, 'x', 'patient', $2) RETURNING id",
                f"p{i}@bench.test",
                patient,
            )
        )
    await conn.close()
    return url, doctor, users


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--waiters", type=int, default=100)
    parser.add_argument("--trials", type=int, default=24)
    args = parser.parse_args()
    postgres = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    redis_port = free_port()
    redis_server = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    time.sleep(0.5)
    database_url, doctor, users = await make_world(postgres, args.waiters)
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    secret = secrets.token_urlsafe(40)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": secret,
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT_USER_PER_MINUTE": "0",
        "BOOKING_MAX_FUTURE_PER_DOCTOR": "1000",
    }
    tokens = [
        issue_access_token(secret, user_id=u, role="patient", ttl_seconds=3600) for u in users
    ]
    booker, waiters = tokens[0], tokens[1:]
    day = dt.datetime.now(BERLIN).date() + dt.timedelta(days=2)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(env, port, log_name="waitlist_server.log")
    worker_log = open(ROOT / "bench" / "results" / "waitlist_worker.log", "w")  # noqa: SIM115
    worker = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker"],
        env=env,
        cwd=ROOT,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    offered: list[float] = []
    got_offer = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    delays: list[float] = []
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            for token in waiters:
                joined = await http.post(
                    "/api/waitlist",
                    json={"doctor_id": doctor, "from": day.isoformat(), "to": day.isoformat()},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert joined.status_code == 201, joined.text

            ready = [asyncio.Event() for _ in waiters]

            async def watch(i: int) -> None:
                cookie = (await create_session(redis, users[i + 1])).session_id
                headers = {"Cookie": f"{COOKIE_NAME}={cookie}", "Origin": base}
                url = f"ws://127.0.0.1:{port}/ws/live?view=my_appointments"
                async with websockets.connect(url, additional_headers=headers) as ws:
                    await ws.recv()  # the view sent on connect
                    ready[i].set()
                    async for message in ws:
                        if i == 0 and "data-offer-id" in str(message):
                            offered.append(time.perf_counter())
                            got_offer.set()

            tasks = [asyncio.create_task(watch(i)) for i in range(len(waiters))]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), timeout=120)
            first = {"Authorization": f"Bearer {waiters[0]}"}
            # The whole day booked by one patient, so each trial frees exactly one slot.
            booked_ids = []
            for n in range(24):
                moment = dt.datetime.combine(day, dt.time(8), tzinfo=BERLIN)
                booked = await http.post(
                    "/api/appointments",
                    json={
                        "doctor_id": doctor,
                        "start": (moment + dt.timedelta(minutes=30 * n)).isoformat(),
                    },
                    headers={"Authorization": f"Bearer {booker}"},
                )
                assert booked.status_code == 201, booked.text
                booked_ids.append(booked.json()["id"])
            for trial in range(min(args.trials, len(booked_ids))):
                got_offer.clear()
                offered.clear()
                sent = time.perf_counter()
                cancelled = await http.patch(
                    f"/api/appointments/{booked_ids[trial]}",
                    json={"status": "cancelled"},
                    headers={"Authorization": f"Bearer {booker}"},
                )
                assert cancelled.status_code == 200, cancelled.text
                try:
                    await asyncio.wait_for(got_offer.wait(), timeout=10)
                except TimeoutError:
                    print(f"trial {trial}: no offer on the first waitlister's page in 10 s")
                    continue
                delays.append((offered[0] - sent) * 1000)
                mine = (await http.get("/api/offers", headers=first)).json()["items"]
                for offer in mine:
                    if offer["status"] == "open":
                        await http.post(f"/api/offers/{offer['id']}/decline", headers=first)
                await asyncio.sleep(0.3)
    finally:
        for task in tasks:
            task.cancel()
        for process in (server, worker):
            process.terminate()
            process.wait(timeout=30)
        await redis.aclose()
        redis_server.terminate()
        redis_server.wait(timeout=10)
    ordered = sorted(delays)
    if not ordered:
        raise SystemExit("no offer measured; see bench/results/waitlist_*.log")

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]

    report = (
        "\n".join(
            [
                "# Waitlist: freed slot → the first waitlister's page"
                f" ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)",
                "",
                f'{len(waiters)} waitlisters, each with "my appointments" open on a websocket;'
                " `medbook serve --workers 2` and `medbook worker`; client on the same 2-core"
                " machine (shared with other work while measured).",
                "",
                "| measure | value |",
                "| --- | ---: |",
                f"| trials measured | {len(ordered)} of {args.trials} |",
                f"| cancel sent → offer on the page, p50 | {pct(50):.0f} ms |",
                f"| cancel sent → offer on the page, p99 | {pct(99):.0f} ms |",
                f"| max | {ordered[-1]:.0f} ms |",
                f"| mean | {statistics.fmean(ordered):.0f} ms |",
            ]
        )
        + "\n"
    )
    (ROOT / "bench" / "results" / "waitlist.md").write_text(report)
    print(report)


if __name__ == "__main__":
    asyncio.run(main())
