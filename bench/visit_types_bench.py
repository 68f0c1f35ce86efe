"""Availability with visit types against plain slots: the same code paths, in process.

Usage (PostgreSQL and Redis as for the tests; a database of its own is created):

    PYTHONPATH=. .venv/bin/python bench/visit_types_bench.py [--samples 400]

It builds a doctor with a full week (08:00-20:00 on a 15-minute grid, every day) about
70 % booked with a mix of plain slots and visits of a 45-minute type with a 10-minute
buffer after, then measures, alternating plain and typed requests so both see the same
machine:

- the pure computation of a week (`compute_days`): the CPU of a cache miss;
- a cache miss: the one statement (`fetch_doctor_days`) and the computation;
- a cache hit (`SlotCache.days`, one MGET).

With `--database-url` it measures an existing database instead (e.g. the year-scale
`scale_bench`, 1.9 M appointments): the busiest doctor's busiest week, with a 45-minute
visit type (10-minute buffer after) added for the run and deleted afterwards; nothing else
in that database is written. The load average is printed with the table.

It prints a Markdown table of medians and p99 in milliseconds. The question it answers:
does asking for a type cost more than asking for plain slots (issue 18: "availability
with visit types keeps issue 4's latency targets")?
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import statistics
import time

import asyncpg
from redis.asyncio import Redis

from app.scheduling.slots import SlotCache, compute_days, fetch_doctor_days
from app.settings import load_settings
from db.migrate import upgrade
from db.session import create_engine

ADMIN_URL = os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "medbook_bench_visit_types"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


async def build(url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(url)
    try:
        clinic = await conn.fetchval(
            "INSERT INTO clinics (name, timezone) VALUES ('B', 'Europe/Berlin') RETURNING id"
        )
        doctor = await conn.fetchval(
            "INSERT INTO doctors (clinic_id, full_name, specialty) VALUES ($1, 'D', 'GP') "
            "RETURNING id",
            clinic,
        )
        patient = await conn.fetchval("INSERT INTO patients (full_name) VALUES ('P') RETURNING id")
        for weekday in range(7):
            await conn.execute(
                "INSERT INTO doctor_schedule_templates (doctor_id, weekday, start_time, "
                "end_time, slot_minutes) VALUES ($1, $2, '08:00', '20:00', 15)",
                doctor,
                weekday,
            )
        visit_type = await conn.fetchval(
            "INSERT INTO visit_types (doctor_id, name, minutes, buffer_after_minutes) "
            "VALUES ($1, 'Check-up', 45, 10) RETURNING id",
            doctor,
        )
        rng = random.Random(18)
        first = dt.date(2030, 1, 7)
        for day in range(7):
            cursor = dt.datetime.combine(first + dt.timedelta(days=day), dt.time(7), dt.UTC)
            end = cursor + dt.timedelta(hours=12)
            while cursor < end:
                if rng.random() < 0.3:
                    cursor += dt.timedelta(minutes=15)
                    continue
                typed = rng.random() < 0.5
                length = dt.timedelta(minutes=45 if typed else 15)
                await conn.execute(
                    "INSERT INTO appointments (doctor_id, patient_id, clinic_id, starts_at, "
                    "ends_at, visit_type_id, buffer_after_minutes) VALUES ($1, $2, $3, $4, "
                    "$5, $6, $7)",
                    doctor,
                    patient,
                    clinic,
                    cursor,
                    cursor + length,
                    visit_type if typed else None,
                    10 if typed else 0,
                )
                cursor += length + dt.timedelta(minutes=15 if typed else 0)
        return doctor, visit_type
    finally:
        await conn.close()


async def borrow(url: str) -> tuple[int, int, dt.date]:
    """The busiest doctor of an existing database, its busiest week's Monday, and a visit
    type added to them for this run (deleted by `main` afterwards)."""
    conn = await asyncpg.connect(url)
    try:
        doctor, monday = await conn.fetchrow(
            "SELECT doctor_id, date_trunc('week', starts_at)::date FROM appointments "
            "WHERE status IN ('booked', 'checked_in') "
            "GROUP BY 1, 2 ORDER BY count(*) DESC, 1, 2 LIMIT 1"
        )
        visit_type = await conn.fetchval(
            "INSERT INTO visit_types (doctor_id, name, minutes, buffer_after_minutes) "
            "VALUES ($1, 'Bench check-up ' || gen_random_uuid(), 45, 10) RETURNING id",
            doctor,
        )
        return doctor, visit_type, monday
    finally:
        await conn.close()


def summary(name: str, plain: list[float], typed: list[float]) -> str:
    def p99(values: list[float]) -> float:
        return sorted(values)[int(len(values) * 0.99) - 1]

    return (
        f"| {name} | {statistics.median(plain):.3f} | {p99(plain):.3f} "
        f"| {statistics.median(typed):.3f} | {p99(typed):.3f} |"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument(
        "--database-url",
        help="measure this existing, migrated database (asyncpg URL) instead of building one",
    )
    args = parser.parse_args()
    if args.database_url:
        url = args.database_url
    else:
        admin = await asyncpg.connect(ADMIN_URL)
        await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        await admin.execute(f"CREATE DATABASE {DATABASE}")
        await admin.close()
        url = ADMIN_URL.rsplit("/", 1)[0] + f"/{DATABASE}"
    settings = load_settings(
        {
            **os.environ,
            "DATABASE_URL": url,
            "REDIS_URL": REDIS_URL,
            "SECRET_KEY": "x" * 40,
        }
    )
    if args.database_url:
        doctor, visit_type, first = await borrow(url)
    else:
        await asyncio.to_thread(upgrade, settings.database_url)
        doctor, visit_type = await build(url)
        first = dt.date(2030, 1, 7)
    engine = create_engine(settings, application_name="bench")
    redis = Redis.from_url(REDIS_URL)
    await redis.flushdb()
    cache = SlotCache(redis, engine)
    week = [first + dt.timedelta(days=i) for i in range(7)]
    lo = dt.datetime.combine(first, dt.time(), dt.UTC) - dt.timedelta(hours=15)
    hi = dt.datetime.combine(week[-1], dt.time(), dt.UTC) + dt.timedelta(hours=39)
    timings: dict[str, dict[str, list[float]]] = {
        k: {"plain": [], "typed": []} for k in ("compute", "miss", "hit")
    }
    try:
        for _ in range(args.samples):
            for kind, type_id in (("plain", None), ("typed", visit_type)):
                data = await fetch_doctor_days(engine, doctor, lo, hi, type_id)
                started = time.perf_counter()
                compute_days(data, week)
                timings["compute"][kind].append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                data = await fetch_doctor_days(engine, doctor, lo, hi, type_id)
                compute_days(data, week)
                timings["miss"][kind].append((time.perf_counter() - started) * 1000)
                await cache.days(doctor, first, 7, visit_type_id=type_id)  # stores
                started = time.perf_counter()
                found = await cache.days(doctor, first, 7, visit_type_id=type_id)
                timings["hit"][kind].append((time.perf_counter() - started) * 1000)
                assert found.visit_type is None or found.visit_type.id == visit_type
    finally:
        await redis.flushdb()
        await redis.aclose()
        await engine.dispose()
        if args.database_url:
            conn = await asyncpg.connect(url)
            await conn.execute("DELETE FROM visit_types WHERE id = $1", visit_type)
            await conn.close()
        else:
            admin = await asyncpg.connect(ADMIN_URL)
            await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
            await admin.close()
    where = args.database_url.rsplit("/", 1)[-1] if args.database_url else "a built week"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"A week of one doctor ({where}, from {first}), {args.samples} samples each (ms)")
    print(f"load average after the run: {load} on {os.cpu_count()} CPUs\n")
    print("| step | plain median | plain p99 | typed median | typed p99 |")
    print("| --- | --- | --- | --- | --- |")
    for name, label in (
        ("compute", "compute a week (pure)"),
        ("miss", "cache miss: statement + compute"),
        ("hit", "cache hit (one MGET)"),
    ):
        print(summary(label, timings[name]["plain"], timings[name]["typed"]))


if __name__ == "__main__":
    asyncio.run(main())
