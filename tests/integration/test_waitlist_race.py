"""One freed slot meets many waitlisters and many direct bookers at once, over two server
processes and a real worker: exactly one appointment gets the slot, and never are two
offers for it open at the same time (a hold is a row the exclusion constraint covers)."""

import asyncio
import itertools
import random
import time

import httpx
import pytest
from sqlalchemy import text

from conftest import LiveServer
from e2e.conftest import Worker
from tests.integration.world import at, day_after_tomorrow, make_world

WAITERS, BOOKERS = 12, 12
RACE_SECONDS = 8.0


@pytest.fixture
async def two_processes(db, redis):
    """Two server processes and a worker that has run a job (so it is taking jobs)."""
    server = LiveServer(workers=2)
    try:
        worker = Worker()
    except BaseException:
        server.stop()
        raise
    try:
        yield server
    finally:
        worker.stop()
        server.stop()


async def test_one_freed_slot_many_waitlisters_many_bookers(two_processes, session, settings):
    world = await make_world(session, settings.secret_key, patients=1 + WAITERS + BOOKERS)
    day = day_after_tomorrow()
    start = at(day, 10)
    waiters = [f"patient{i}" for i in range(1, 1 + WAITERS)]
    bookers = [f"patient{i}" for i in range(1 + WAITERS, 1 + WAITERS + BOOKERS)]
    rng = random.Random(18)
    samples: list[int] = []
    async with httpx.AsyncClient(base_url=two_processes.url, timeout=30) as http:
        first = await http.post(
            "/api/appointments",
            json={"doctor_id": world.doctor_id, "start": start.isoformat()},
            headers=world.headers("patient0"),
        )
        assert first.status_code == 201, first.text
        for who in waiters:
            joined = await http.post(
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
        stop_at = time.monotonic() + RACE_SECONDS
        won: list[str] = []

        async def book(who):
            # The bookers come once the worker has had time to offer the slot (about 0.3 s
            # on this machine): from then on they race the declines' releases and refills.
            await asyncio.sleep(1.5 + rng.uniform(0, 1.0))
            while time.monotonic() < stop_at and not won:
                response = await http.post(
                    "/api/appointments",
                    json={"doctor_id": world.doctor_id, "start": start.isoformat()},
                    headers=world.headers(who),
                )
                # 503: shed on a loaded machine, nothing booked (Retry-After says come back).
                assert response.status_code in (201, 409, 503), response.text
                if response.status_code == 503:
                    assert int(response.headers["retry-after"]) > 0, response.text
                if response.status_code == 201:
                    won.append(f"booked by {who}")
                await asyncio.sleep(rng.uniform(0.05, 0.3))

        declines = [2]  # the first offers are declined, so the slot is released again

        async def wait(who):
            while time.monotonic() < stop_at and not won:
                listed = await http.get("/api/offers", headers=world.headers(who))
                if listed.status_code == 503:  # shed on a loaded machine: asked to come back
                    assert int(listed.headers["retry-after"]) > 0, listed.text
                    await asyncio.sleep(0.05)
                    continue
                assert listed.status_code == 200, listed.text
                for offer in listed.json()["items"]:
                    if offer["status"] != "open":
                        continue
                    if declines[0] > 0:
                        declines[0] -= 1
                        answer = await http.post(
                            f"/api/offers/{offer['id']}/decline", headers=world.headers(who)
                        )
                        assert answer.status_code in (200, 409), answer.text
                    else:
                        answer = await http.post(
                            f"/api/offers/{offer['id']}/accept", headers=world.headers(who)
                        )
                        assert answer.status_code in (201, 409), answer.text
                        if answer.status_code == 201:
                            won.append(f"accepted by {who}")
                await asyncio.sleep(0.05)

        async def sample():
            while time.monotonic() < stop_at:
                samples.append(
                    await session.scalar(
                        text(
                            "SELECT count(*) FROM waitlist_offers"
                            " WHERE status = 'open' AND starts_at = :s"
                        ),
                        {"s": start},
                    )
                )
                await session.commit()
                await asyncio.sleep(0.02)

        async def free():
            await asyncio.sleep(0.2)
            cancelled = await http.patch(
                f"/api/appointments/{first.json()['id']}",
                json={"status": "cancelled"},
                headers=world.headers("patient0"),
            )
            assert cancelled.status_code == 200

        await asyncio.gather(
            free(), sample(), *(book(w) for w in bookers), *(wait(w) for w in waiters)
        )
    print(f"race: {won}")
    assert len(won) == 1, won
    active = (
        await session.execute(
            text(
                "SELECT status, patient_id FROM appointments"
                " WHERE doctor_id = :d AND starts_at = :s AND status <> 'cancelled'"
            ),
            {"d": world.doctor_id, "s": start},
        )
    ).all()
    assert [a.status for a in active] == ["booked"], active
    assert max(samples) <= 1
    offers = (
        await session.execute(
            text(
                "SELECT created_at, decided_at, status FROM waitlist_offers"
                " WHERE starts_at = :s ORDER BY created_at"
            ),
            {"s": start},
        )
    ).all()
    # one after another: each offer was decided before the next was made
    for earlier, later in itertools.pairwise(offers):
        assert earlier.decided_at is not None and earlier.decided_at <= later.created_at, offers
    assert all(o.status != "open" for o in offers[:-1])
    print(f"race: {len(offers)} offers: {[o.status for o in offers]}")
    assert offers, "the waitlist never got into the race"
