"""Buffers under real concurrency: no route squeezes a visit into another's buffer."""

import asyncio
import contextlib
import random

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from conftest import EVERY_RACER_ADMITTED, LiveServer
from db.models import VisitType
from tests.integration.world import at, day_after_tomorrow, make_world


@pytest.fixture
async def two_processes(db, redis):
    # This test is about the constraint: no racer is shed (test_admission.py sheds).
    server = LiveServer(workers=2, env=EVERY_RACER_ADMITTED)
    yield server
    server.stop()


async def test_typed_and_plain_bookers_race_for_a_buffer_exactly_one_wins(
    two_processes, session, settings
):
    """Half of 40 patients book a 30-minute visit at 10:00 with a 30-minute buffer after
    it, half the plain slot at 10:30 (inside that buffer), through two server processes
    at once: exactly one booking, whatever the order."""
    world = await make_world(session, settings.secret_key, patients=40)
    procedure = VisitType(
        doctor_id=world.doctor_id, name="Procedure", minutes=30, buffer_after_minutes=30
    )
    session.add(procedure)
    await session.commit()
    day = day_after_tomorrow()
    async with httpx.AsyncClient(base_url=two_processes.url, timeout=30) as http:

        async def attempt(i):
            body = {"doctor_id": world.doctor_id}
            if i % 2:
                body |= {"start": at(day, 10).isoformat(), "visit_type_id": procedure.id}
            else:
                body |= {"start": at(day, 10, 30).isoformat()}
            return await http.post(
                "/api/appointments", json=body, headers=world.headers(f"patient{i}")
            )

        responses = await asyncio.gather(*(attempt(i) for i in range(40)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(201) == 1, codes
    assert codes.count(409) == 39, codes
    active = await session.scalar(
        text("SELECT count(*) FROM appointments WHERE doctor_id = :d AND status <> 'cancelled'"),
        {"d": world.doctor_id},
    )
    assert active == 1


async def test_random_workload_with_buffers_never_overlaps(db, database_url):
    """Twelve connections insert visits of mixed lengths and buffers at random, and move
    some of them (UPDATE of the times): no two active visits' spans with buffers overlap,
    and every visit that won is there."""
    setup = await asyncpg.connect(database_url)
    clinic = await setup.fetchval(
        "INSERT INTO clinics (name, timezone) VALUES ('C', 'UTC') RETURNING id"
    )
    doctor = await setup.fetchval(
        "INSERT INTO doctors (clinic_id, full_name, specialty) VALUES ($1, 'D', 'GP') RETURNING id",
        clinic,
    )
    patient = await setup.fetchval("INSERT INTO patients (full_name) VALUES ('P') RETURNING id")
    await setup.close()
    refused = (asyncpg.ExclusionViolationError, asyncpg.DeadlockDetectedError)

    async def worker(seed):
        rng = random.Random(seed)
        conn = await asyncpg.connect(database_url)
        try:
            for _ in range(50):
                start = rng.randrange(0, 20 * 60, 5)
                length = rng.choice((10, 15, 30, 45, 60))
                before, after = rng.choice((0, 0, 5, 10)), rng.choice((0, 0, 10, 15, 30))
                try:
                    row = await conn.fetchval(
                        "INSERT INTO appointments (doctor_id, patient_id, clinic_id, starts_at, "
                        "ends_at, buffer_before_minutes, buffer_after_minutes) VALUES ($1, $2, "
                        "$3, '2030-01-07 08:00+00'::timestamptz + make_interval(mins => $4), "
                        "'2030-01-07 08:00+00'::timestamptz + make_interval(mins => $4 + $5), "
                        "$6, $7) RETURNING id",
                        doctor,
                        patient,
                        clinic,
                        start,
                        length,
                        before,
                        after,
                    )
                except refused:
                    continue
                if rng.random() < 0.3:  # a reschedule: the times move, the span follows
                    shift = rng.choice((-30, -15, 15, 30))
                    with contextlib.suppress(*refused):
                        await conn.execute(
                            "UPDATE appointments SET starts_at = starts_at + make_interval("
                            "mins => $2), ends_at = ends_at + make_interval(mins => $2) "
                            "WHERE id = $1",
                            row,
                            shift,
                        )
        finally:
            await conn.close()

    await asyncio.gather(*(worker(seed) for seed in range(12)))
    check = await asyncpg.connect(database_url)
    try:
        overlaps = await check.fetchval(
            "SELECT count(*) FROM appointments a JOIN appointments b "
            "ON a.doctor_id = b.doctor_id AND a.id < b.id "
            "AND tstzrange(a.starts_at - make_interval(mins => a.buffer_before_minutes), "
            "              a.ends_at + make_interval(mins => a.buffer_after_minutes)) "
            " && tstzrange(b.starts_at - make_interval(mins => b.buffer_before_minutes), "
            "              b.ends_at + make_interval(mins => b.buffer_after_minutes)) "
            "WHERE a.status <> 'cancelled' AND b.status <> 'cancelled'"
        )
        stale = await check.fetchval(
            "SELECT count(*) FROM appointments WHERE blocked <> tstzrange("
            "starts_at - make_interval(mins => buffer_before_minutes), "
            "ends_at + make_interval(mins => buffer_after_minutes))"
        )
        active = await check.fetchval("SELECT count(*) FROM appointments")
        buffered = await check.fetchval(
            "SELECT count(*) FROM appointments WHERE buffer_after_minutes > 0"
        )
    finally:
        await check.close()
    assert overlaps == 0 and stale == 0
    assert active > 12 and buffered > 3  # the workload really booked, with buffers


async def test_nobody_writes_the_blocked_span_directly(db, database_url):
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.GeneratedAlwaysError):
            await conn.execute("UPDATE appointments SET blocked = 'empty'")
    finally:
        await conn.close()
