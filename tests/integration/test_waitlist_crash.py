"""A real worker process (`medbook worker`) killed with SIGKILL between an offer and its
expiry: the offer is not lost (it is in PostgreSQL with its hold and its messages) and the
slot is not held for ever: a new worker expires it (the expiry job waits in Redis, the
sweeper finds it anyway) and offers the slot to the next in line within seconds."""

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.integration.world import at, day_after_tomorrow, make_world
from tests.processes import kill_process, start_process, stop_process

ROOT = Path(__file__).resolve().parents[2]
HOLD_SECONDS = 4


@pytest.fixture
async def world(client, session, settings):
    return await make_world(session, settings.secret_key, patients=3)


def start_worker(log: Path) -> subprocess.Popen:
    with log.open("a") as out:
        return start_process(
            [sys.executable, "-m", "app.cli", "worker"],
            env={**os.environ, "WAITLIST_HOLD_SECONDS": str(HOLD_SECONDS)},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


async def offers_of(session, patient_id):
    rows = await session.execute(
        text("SELECT id, status FROM waitlist_offers WHERE patient_id = :p ORDER BY id"),
        {"p": patient_id},
    )
    await session.commit()  # a fresh snapshot next time
    return rows.all()


async def until(check, process, log, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"worker exited:\n{log.read_text()}")
        if result := await check():
            return result
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {timeout}s; worker log:\n{log.read_text()[-3000:]}")


async def test_a_killed_worker_loses_no_offer_and_holds_no_slot_for_ever(
    client, world, session, tmp_path
):
    day = day_after_tomorrow()
    start = at(day, 10)
    booked = await client.post(
        "/api/appointments",
        json={"doctor_id": world.doctor_id, "start": start.isoformat()},
        headers=world.headers("patient0"),
    )
    assert booked.status_code == 201, booked.text
    for who in ("patient1", "patient2"):
        joined = await client.post(
            "/api/waitlist",
            json={
                "doctor_id": world.doctor_id,
                "from": day.isoformat(),
                "to": day.isoformat(),
                "earliest": "10:00",
                "latest": "10:30",
            },
            headers=world.headers(who),
        )
        assert joined.status_code == 201, joined.text
    log = tmp_path / "worker.log"
    worker = start_worker(log)
    try:
        cancelled = await client.patch(
            f"/api/appointments/{booked.json()['id']}",
            json={"status": "cancelled"},
            headers=world.headers("patient0"),
        )
        assert cancelled.status_code == 200
        (offer,) = await until(lambda: offers_of(session, world.patients[1]), worker, log)
        assert offer.status == "open"
    finally:
        kill_process(worker)  # SIGKILL: no shutdown, its scheduled expiry stays in Redis

    # The offer survives the worker: hold, offer and its messages are in PostgreSQL.
    held = await session.scalar(text("SELECT count(*) FROM appointments WHERE status = 'held'"))
    assert held == 1
    await asyncio.sleep(HOLD_SECONDS + 1)  # the hold lapses with no worker to expire it
    assert (await offers_of(session, world.patients[1]))[0].status == "open"

    worker = start_worker(log)
    try:
        await until(lambda: _expired_and_next(session, world), worker, log, timeout=90.0)
    finally:
        stop_process(worker)
    held = await session.scalar(text("SELECT count(*) FROM appointments WHERE status = 'held'"))
    assert held <= 1  # at most the second patient's hold, never the lapsed one


async def _expired_and_next(session, world):
    first = await offers_of(session, world.patients[1])
    second = await offers_of(session, world.patients[2])
    return first[0].status == "expired" and len(second) == 1
