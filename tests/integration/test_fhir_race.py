"""$book races the JSON API for one slot across two server processes: one appointment."""

import asyncio

import httpx
import pytest
from sqlalchemy import text

from conftest import LiveServer
from tests.integration.fhir_helpers import conforms
from tests.integration.world import at, day_after_tomorrow, make_world


@pytest.fixture
async def two_processes(db, redis):
    # `redis` empties the run's Redis, so no Principal cached by an earlier test speaks
    # for this test's users (ids restart with every world).
    server = LiveServer(workers=2)
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
