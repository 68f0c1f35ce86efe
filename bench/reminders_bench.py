"""10,000 reminders falling due at once, delivered over SMTP by one worker process.

Usage:

    .venv/bin/python bench/reminders_bench.py [--count 10000] [--admin-url URL] [--redis-url URL]

It creates a database of its own (`medbook_reminders_bench`, on the server of
`--admin-url`, default postgresql://postgres@127.0.0.1:5432/postgres), migrates it, and
loads one clinic, 100 doctors, `--count` patients with an email address and one future
appointment each, plus one `reminder_24h` outbox row per appointment, all due at the next
whole minute (at least 20 s ahead) — the shape of a real burst: every 09:00 appointment
of tomorrow has its reminder due at 09:00 today. A local SMTP sink (aiosmtpd) receives.

Then it starts one `medbook worker` process (SAQ, concurrency 10, its own cron) against
that database and a Redis database of its own (flushed first), and waits. Nothing
triggers the dispatch but the worker's own every-minute cron. Reported: throughput (from
the due time, and from the first delivery), the delay from due time to the SMTP server's
acceptance (p50, p90, p99, max), the number of send jobs enqueued, and a check that every
row is `sent` exactly once (one message per Message-ID). The report is printed and
written to bench/results/reminders.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import asyncpg
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiosmtpd.controller import Controller  # noqa: E402

from db import migrate  # noqa: E402

DB_NAME = "medbook_reminders_bench"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Sink:
    """Counts accepted messages by Message-ID, with the time each was accepted."""

    def __init__(self) -> None:
        self.accepted: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        now = time.time()
        head = envelope.content.split(b"\r\n\r\n", 1)[0]
        message_id = ""
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                message_id = line.split(b":", 1)[1].strip().decode()
        with self.lock:
            self.accepted.setdefault(message_id, []).append(now)
        return "250 OK"


def with_database(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def load(admin_url: str, count: int, due: dt.datetime) -> str:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    finally:
        await conn.close()
    url = with_database(admin_url, DB_NAME)
    await asyncio.to_thread(migrate.upgrade, url)  # Alembic runs its own event loop
    conn = await asyncpg.connect(url)
    try:
        clinic = await conn.fetchval(
            "INSERT INTO clinics (name, timezone, address) "
            "VALUES ('Bench Clinic', 'Europe/Berlin', 'Benchstraße 1, Berlin') RETURNING id"
        )
        doctors = [
            r["id"]
            for r in await conn.fetch(
                "INSERT INTO doctors (clinic_id, full_name, specialty) "
                "SELECT $1, 'Dr. Bench ' || g, 'GP' FROM generate_series(1, 100) g RETURNING id",
                clinic,
            )
        ]
        await conn.copy_records_to_table(
            "patients",
            records=[(f"Patient {i}", f"p{i}@bench.test", "email") for i in range(count)],
            columns=["full_name", "email", "notify_by"],
        )
        patients = [r["id"] for r in await conn.fetch("SELECT id FROM patients ORDER BY id")]
        first = (due + dt.timedelta(days=1)).replace(second=0, microsecond=0)
        slot = dt.timedelta(minutes=30)
        appointments = [
            (
                doctors[i % len(doctors)],
                patients[i],
                clinic,
                first + slot * (i // len(doctors)),
                first + slot * (i // len(doctors) + 1),
            )
            for i in range(count)
        ]
        await conn.copy_records_to_table(
            "appointments",
            records=appointments,
            columns=["doctor_id", "patient_id", "clinic_id", "starts_at", "ends_at"],
        )
        await conn.execute(
            "INSERT INTO notifications (appointment_id, channel, kind, due_at) "
            "SELECT id, 'email', 'reminder_24h', $1 FROM appointments",
            due,
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return url


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main(args: argparse.Namespace) -> str:
    now = dt.datetime.now(dt.UTC)
    due = (now + dt.timedelta(seconds=80)).replace(second=0, microsecond=0)
    if due - now < dt.timedelta(seconds=20):
        due += dt.timedelta(minutes=1)
    t_load = time.perf_counter()
    url = await load(args.admin_url, args.count, due)
    load_seconds = time.perf_counter() - t_load
    redis.Redis.from_url(args.redis_url).flushdb()

    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    log = Path(tempfile.mkdtemp()) / "worker.log"
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": args.redis_url,
        "SECRET_KEY": "b" * 40,
        "MEDBOOK_EMBEDDED": "",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(port),
        "SMTP_TLS": "none",
        "SMTP_FROM": "medbook <reminders@bench.test>",
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
    }
    worker = subprocess.Popen(
        [
            sys.executable,
            *(["-m", "cProfile", "-o", args.profile] if args.profile else []),
            "-m",
            "app.cli",
            "worker",
        ],
        env=env,
        cwd=ROOT,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    print(f"loaded {args.count} reminders in {load_seconds:.1f} s; due {due:%H:%M:%S} UTC")
    print(f"worker log: {log}")
    try:
        deadline = due.timestamp() + args.timeout
        while time.time() < deadline:
            with sink.lock:
                delivered = len(sink.accepted)
            if delivered >= args.count:
                break
            if worker.poll() is not None:
                raise SystemExit(f"worker exited:\n{log.read_text()}")
            time.sleep(0.2)
        time.sleep(2)  # anything sent twice would arrive now
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        controller.stop()

    conn = await asyncpg.connect(url)
    try:
        statuses = dict(
            await conn.fetch("SELECT status, count(*) FROM notifications GROUP BY status")
        )
    finally:
        await conn.close()
    firsts = [times[0] for times in sink.accepted.values()]
    duplicates = sum(len(times) - 1 for times in sink.accepted.values())
    delays = [t - due.timestamp() for t in firsts]
    span_from_due = max(firsts) - due.timestamp()
    span_from_first = max(firsts) - min(firsts)
    report = f"""## Reminders: {args.count:,} due at once, one worker process, SMTP sink

| figure | value |
| --- | --- |
| messages delivered (distinct Message-ID) | {len(firsts):,} of {args.count:,} |
| delivered more than once | {duplicates} |
| outbox rows by status | {", ".join(f"{k}: {v:,}" for k, v in sorted(statuses.items()))} |
| send jobs enqueued (batches of 50) | {-(-args.count // 50)} |
| throughput from the due time | {len(firsts) / span_from_due:,.0f} messages/s |
| throughput from the first delivery | {len(firsts) / span_from_first:,.0f} messages/s |
| delay due → accepted: p50 | {percentile(delays, 50):.2f} s |
| p90 | {percentile(delays, 90):.2f} s |
| p99 | {percentile(delays, 99):.2f} s |
| max | {max(delays):.2f} s |
| first delivery after the due time | {min(delays):.2f} s |
| mean delay | {statistics.fmean(delays):.2f} s |

One `medbook worker` (SAQ concurrency 10), dispatch by its own every-minute cron; local
PostgreSQL and Redis; aiosmtpd on loopback; {os.cpu_count()} cores.
"""
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/4")
    parser.add_argument("--profile", help="write the worker's cProfile stats here")
    parser.add_argument("--timeout", type=float, default=600, help="seconds after the due time")
    arguments = parser.parse_args()
    text = asyncio.run(main(arguments))
    print(text)
    out = ROOT / "bench" / "results" / "reminders.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
