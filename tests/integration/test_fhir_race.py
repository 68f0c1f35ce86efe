"""$book races the JSON API for one slot across two server processes: one appointment;
and $hold + $book race the JSON API and the waitlist's offers, with holds lapsing."""

import asyncio
import random
import time

import httpx
import pytest
from sqlalchemy import text

from conftest import EVERY_RACER_ADMITTED, LiveServer
from e2e.conftest import Worker
from tests.integration.fhir_helpers import conforms
from tests.integration.notification_servers import eventually
from tests.integration.world import at, day_after_tomorrow, make_world


@pytest.fixture
async def two_processes(db, redis):
    # `redis` empties the run's Redis, so no Principal cached by an earlier test speaks
    # for this test's users (ids restart with every world). This test is about the
    # constraint: no racer is shed (test_admission.py sheds).
    server = LiveServer(workers=2, env=EVERY_RACER_ADMITTED)
    yield server
    server.stop()


async def test_fhir_and_json_bookings_of_one_slot_make_one_appointment(
    two_processes, session, settings
):
    world = await make_world(session, settings.secret_key, patients=30)
    start = at(day_after_tomorrow(), 10)
    proposal = {
        "resourceType": "Appointment",
        "status": "proposed",
        "start": start.isoformat(),
        "participant": [
            {"actor": {"reference": f"Practitioner/{world.doctor_id}"}, "status": "accepted"}
        ],
    }
    async with httpx.AsyncClient(base_url=two_processes.url, timeout=30) as http:

        async def attempt(i):
            headers = world.headers(f"patient{i}")
            if i % 2:
                return await http.post("/fhir/R4/Appointment/$book", json=proposal, headers=headers)
            body = {"doctor_id": world.doctor_id, "start": start.isoformat()}
            return await http.post("/api/appointments", json=body, headers=headers)

        answers = await asyncio.gather(*(attempt(i) for i in range(30)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [201] + [409] * 29, codes
    for answer in answers:
        if "/fhir/" in str(answer.url):
            conforms(answer.json())
            assert answer.headers["content-type"].startswith("application/fhir+json")
    rows = await session.execute(
        text("SELECT count(*) FROM appointments WHERE doctor_id = :d AND status <> 'cancelled'"),
        {"d": world.doctor_id},
    )
    assert rows.scalar() == 1


HOLD_SECONDS = 2  # holds (FHIR's and the waitlist's) lapse within the race
RACE_DEADLINE_SECONDS = 60.0  # a deadline: the race ends when the slot is won


@pytest.fixture
async def racing_processes(db, redis):
    """Two server processes and a worker (expiry jobs, refills), with short holds."""
    env = {"WAITLIST_HOLD_SECONDS": str(HOLD_SECONDS)}
    server = LiveServer(workers=2, env=env)
    try:
        worker = Worker(env=env)
    except BaseException:
        server.stop()
        raise
    try:
        yield server
    finally:
        worker.stop()
        server.stop()


def answered_well(response) -> bool:
    """Won, lost, or (under this contention on a loaded machine, a waiter queued behind
    the slot's other writers past the statement timeout) busy: 503 with Retry-After."""
    if response.status_code == 503:
        busy.append(response.url.path)
        return "Retry-After" in response.headers
    return response.status_code in (200, 201, 409)


busy: list[str] = []


def candidate(world, start):
    return {
        "resourceType": "Appointment",
        "status": "proposed",
        "start": start.isoformat(),
        "participant": [
            {"actor": {"reference": f"Practitioner/{world.doctor_id}"}, "status": "accepted"}
        ],
    }


async def test_holds_bookings_and_the_waitlist_race_for_one_slot(
    racing_processes, session, settings
):
    """$hold + $book, the JSON API and waitlist offers race for one freed slot, across two
    server processes and a worker: one appointment, never two rows blocking the slot, and
    no hold outlives its expiry (the worker releases them, no request needed)."""
    holders, bookers, waiters = range(1, 7), range(7, 11), range(11, 15)
    world = await make_world(session, settings.secret_key, patients=15)
    day = day_after_tomorrow()
    start = at(day, 10)
    rng = random.Random(19)
    won: list[str] = []
    samples: list[int] = []
    seen = {"held": 0, "hold_booked": 0, "hold_lapsed": 0}
    answered: set[int] = set()
    offered: list[int] = []
    async with httpx.AsyncClient(base_url=racing_processes.url, timeout=30) as http:
        first = await http.post(
            "/api/appointments",
            json={"doctor_id": world.doctor_id, "start": start.isoformat()},
            headers=world.headers("patient0"),
        )
        assert first.status_code == 201, first.text
        for i in waiters:
            joined = await http.post(
                "/api/waitlist",
                json={
                    "doctor_id": world.doctor_id,
                    "from": day.isoformat(),
                    "to": day.isoformat(),
                    "earliest": "10:00",
                    "latest": "10:30",
                },
                headers=world.headers(f"patient{i}"),
            )
            assert joined.status_code == 201, joined.text
        stop_at = time.monotonic() + RACE_DEADLINE_SECONDS

        async def hold_and_book(i):
            headers = world.headers(f"patient{i}")
            # They race the waitlist's refill for the freed slot from the start.
            await asyncio.sleep(rng.uniform(0.1, 1.0))
            while time.monotonic() < stop_at and not won:
                if seen["hold_lapsed"] and not offered:
                    # A hold has lapsed: leave its release to the worker and the slot to
                    # the waitlist's refill for once.
                    await asyncio.sleep(0.1)
                    continue
                held = await http.post(
                    "/fhir/R4/Appointment/$hold", json=candidate(world, start), headers=headers
                )
                assert answered_well(held), held.text
                conforms(held.json())
                if held.status_code == 201:
                    seen["held"] += 1
                    # Until the waitlist has had an offer, holders think longer than a
                    # hold lasts: their $book must fail, and the slot goes back into the
                    # race (released by the worker's expiry job or the next $hold).
                    if not offered:
                        await asyncio.sleep(HOLD_SECONDS + 0.5)
                    else:
                        await asyncio.sleep(rng.uniform(0, 0.5))
                    booked = await http.post(
                        "/fhir/R4/Appointment/$book", json=held.json(), headers=headers
                    )
                    assert answered_well(booked), booked.text
                    conforms(booked.json())
                    if booked.status_code == 201:
                        seen["hold_booked"] += 1
                        won.append(f"$hold+$book by patient{i}")
                    else:
                        seen["hold_lapsed"] += 1
                await asyncio.sleep(rng.uniform(0.05, 0.3))

        async def book(i):
            # Direct bookers join once a $hold and a waitlist offer have both held the slot
            # (the test is about all three), then it is anyone's.
            while time.monotonic() < stop_at and not (seen["held"] and offered):
                await asyncio.sleep(0.1)
            await asyncio.sleep(rng.uniform(0, 0.5))
            while time.monotonic() < stop_at and not won:
                response = await http.post(
                    "/api/appointments",
                    json={"doctor_id": world.doctor_id, "start": start.isoformat()},
                    headers=world.headers(f"patient{i}"),
                )
                assert answered_well(response), response.text
                if response.status_code == 201:
                    won.append(f"booked by patient{i}")
                await asyncio.sleep(rng.uniform(0.2, 0.6))

        async def wait(i):
            headers = world.headers(f"patient{i}")
            while time.monotonic() < stop_at and not won:
                listed = await http.get("/api/offers", headers=headers)
                for offer in listed.json()["items"]:
                    if offer["status"] != "open" or offer["id"] in answered:
                        continue
                    answered.add(offer["id"])
                    offered.append(offer["id"])
                    # The second offer is left to lapse (the worker's expiry job releases
                    # it); the others are declined until a $hold has held the slot, then
                    # accepted: the slot goes back into the race each time.
                    if len(answered) == 2:
                        continue
                    action = "accept" if len(answered) > 2 and seen["held"] else "decline"
                    answer = await http.post(f"/api/offers/{offer['id']}/{action}", headers=headers)
                    assert answered_well(answer), answer.text
                    if answer.status_code == 201:
                        won.append(f"offer accepted by patient{i}")
                await asyncio.sleep(0.1)

        async def sample():
            while time.monotonic() < stop_at and not won:
                samples.append(
                    await session.scalar(
                        text(
                            "SELECT count(*) FROM appointments WHERE doctor_id = :d"
                            " AND starts_at = :s AND status IN ('booked', 'held')"
                        ),
                        {"d": world.doctor_id, "s": start},
                    )
                )
                await session.commit()
                await asyncio.sleep(0.05)

        async def free():
            await asyncio.sleep(0.2)
            cancelled = await http.patch(
                f"/api/appointments/{first.json()['id']}",
                json={"status": "cancelled"},
                headers=world.headers("patient0"),
            )
            assert cancelled.status_code == 200

        await asyncio.gather(
            free(),
            sample(),
            *(hold_and_book(i) for i in holders),
            *(book(i) for i in bookers),
            *(wait(i) for i in waiters),
        )
        # A client that holds another slot and walks away: its hold lapses on its own.
        walked = await http.post(
            "/fhir/R4/Appointment/$hold",
            json=candidate(world, at(day, 11)),
            headers=world.headers("patient1"),
        )
        assert walked.status_code == 201, walked.text
    print(f"race: {won}; FHIR holds {seen}; busy answers {len(busy)}")
    assert len(won) == 1, won
    offers = await session.scalar(
        text("SELECT count(*) FROM waitlist_offers WHERE starts_at = :s"), {"s": start}
    )
    print(f"race: {offers} waitlist offers")
    assert offers >= 1, "the waitlist never got into the race"
    assert seen["held"] >= 1, "no $hold got into the race"
    active = (
        await session.execute(
            text(
                "SELECT status FROM appointments"
                " WHERE doctor_id = :d AND starts_at = :s AND status <> 'cancelled'"
            ),
            {"d": world.doctor_id, "s": start},
        )
    ).all()
    assert [a.status for a in active] == ["booked"], active
    assert max(samples) <= 1

    async def no_hold_left():
        left = await session.scalar(text("SELECT count(*) FROM appointments WHERE status = 'held'"))
        await session.commit()
        return left == 0

    # The worker's expiry jobs release every hold once it lapses (no request arrives).
    await eventually(no_hold_left, timeout=60)
