"""Double booking under real concurrency: two server processes, and raw concurrent inserts."""

import asyncio
import random

import asyncpg
import httpx
import psutil
import pytest
from sqlalchemy import text

from conftest import EVERY_RACER_ADMITTED, LiveServer
from tests.integration.world import at, day_after_tomorrow, make_world


@pytest.fixture
async def two_processes(db, redis):
    # `redis` empties the run's Redis: user ids restart with every test's world, and a
    # Principal an earlier test cached for the same id must not speak for these users.
    # This test is about the constraint: no racer is shed (test_admission.py sheds).
    server = LiveServer(workers=2, env=EVERY_RACER_ADMITTED)
    yield server
    server.stop()


async def test_fifty_patients_one_slot_exactly_one_wins(two_processes, session, settings):
    assert len(psutil.Process(two_processes.process.pid).children()) >= 2  # two workers
    world = await make_world(session, settings.secret_key, patients=50)
    start = at(day_after_tomorrow(), 10).isoformat()
    async with httpx.AsyncClient(base_url=two_processes.url, timeout=30) as http:

        async def attempt(i):
            return await http.post(
                "/api/appointments",
                json={"doctor_id": world.doctor_id, "start": start},
                headers=world.headers(f"patient{i}"),
            )

        responses = await asyncio.gather(*(attempt(i) for i in range(50)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(201) == 1, codes
    assert codes.count(409) == 49, codes
    rows = await session.execute(
        text("SELECT count(*) FROM appointments WHERE doctor_id = :d AND status <> 'cancelled'"),
        {"d": world.doctor_id},
    )
    assert rows.scalar() == 1
    assert all("alternatives" in r.json() for r in responses if r.status_code == 409)


async def test_random_overlapping_workload_never_overlaps(db, database_url):
    """Many connections insert random intervals of mixed lengths for two doctors at once;
    the exclusion constraint must leave no overlapping pair of active appointments."""
    setup = await asyncpg.connect(database_url)
    clinic = await setup.fetchval(
        "INSERT INTO clinics (name, timezone) VALUES ('C', 'UTC') RETURNING id"
    )
    doctors = [
        await setup.fetchval(
            "INSERT INTO doctors (clinic_id, full_name, specialty) VALUES ($1, 'D', 'GP') "
            "RETURNING id",
            clinic,
        )
        for _ in range(2)
    ]
    patient = await setup.fetchval("INSERT INTO patients (full_name) VALUES ('P') RETURNING id")
    await setup.close()

    async def worker(seed):
        rng = random.Random(seed)
        conn = await asyncpg.connect(database_url)
        won = 0
        try:
            for _ in range(60):
                start = rng.randrange(0, 8 * 60, 5)
                length = rng.choice((10, 15, 20, 30, 45, 60))
                status = "cancelled" if rng.random() < 0.1 else "booked"
                try:
                    await conn.execute(
                        "INSERT INTO appointments (doctor_id, patient_id, clinic_id, starts_at, "
                        "ends_at, status) VALUES ($1, $2, $3, "
                        "'2030-01-07 08:00+00'::timestamptz + make_interval(mins => $4), "
                        "'2030-01-07 08:00+00'::timestamptz + make_interval(mins => $4 + $5), $6)",
                        rng.choice(doctors),
                        patient,
                        clinic,
                        start,
                        length,
                        status,
                    )
                    won += status == "booked"
                except (asyncpg.ExclusionViolationError, asyncpg.DeadlockDetectedError):
                    # Concurrent conflicting inserts can wait on each other's exclusion
                    # check; PostgreSQL then aborts one: refused, like a violation.
                    pass
        finally:
            await conn.close()
        return won

    wins = await asyncio.gather(*(worker(seed) for seed in range(12)))
    check = await asyncpg.connect(database_url)
    try:
        overlaps = await check.fetchval(
            "SELECT count(*) FROM appointments a JOIN appointments b "
            "ON a.doctor_id = b.doctor_id AND a.id < b.id "
            "AND tstzrange(a.starts_at, a.ends_at) && tstzrange(b.starts_at, b.ends_at) "
            "WHERE a.status <> 'cancelled' AND b.status <> 'cancelled'"
        )
        active = await check.fetchval(
            "SELECT count(*) FROM appointments WHERE status <> 'cancelled'"
        )
    finally:
        await check.close()
    assert overlaps == 0
    assert active == sum(wins)
    assert active > 20  # the workload really booked things, it did not just fail
