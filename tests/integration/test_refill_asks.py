"""A cancellation asks the worker for a waitlist refill only when someone waits on its
clinic's waitlist (issue 17: a refill job per cancel was most of the worker's CPU in the
mix, where nobody waits); the sweeper still finds it for an entry that joins later."""

import asyncio

import pytest

from app import services as services_module
from app.services import Services
from tests.integration.world import at, day_after_tomorrow, make_world


@pytest.fixture
async def world(client, session, settings):
    return await make_world(session, settings.secret_key, patients=3)


@pytest.fixture
def asked(client, monkeypatch):
    """The doctor-days each refill ask named, and the changes the effects saw."""
    asks: list[list[tuple]] = []
    changes: list = []

    def ask_for_refill(services, doctor_days):
        # Recorded when the ask is made (the handler awaits it), not when its task runs.
        asks.append(list(doctor_days))
        return asyncio.sleep(0)

    async def seen(batch):
        changes.extend(batch)

    monkeypatch.setattr(services_module, "ask_for_refill", ask_for_refill)
    Services.of(client.app).effects.listeners.append(seen)  # restored by `client`
    return asks, changes


async def book(client, world, start, who="patient0"):
    body = {"doctor_id": world.doctor_id, "start": start.isoformat()}
    response = await client.post("/api/appointments", json=body, headers=world.headers(who))
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def cancel(client, world, appointment_id, who="patient0"):
    response = await client.patch(
        f"/api/appointments/{appointment_id}",
        json={"status": "cancelled"},
        headers=world.headers(who),
    )
    assert response.status_code == 200, response.text


async def test_a_cancel_with_nobody_waiting_asks_for_no_refill(client, world, asked):
    asks, changes = asked
    appointment_id = await book(client, world, at(day_after_tomorrow(), 10))
    await cancel(client, world, appointment_id)
    [_booked, cancelled] = changes
    assert cancelled.action == "cancelled" and not cancelled.someone_waits
    assert asks == []


async def test_a_cancel_asks_for_a_refill_when_someone_waits_in_the_clinic(client, world, asked):
    asks, changes = asked
    day = day_after_tomorrow()
    appointment_id = await book(client, world, at(day, 10))
    body = {
        "doctor_id": world.doctor_id,
        "from": day.isoformat(),
        "to": day.isoformat(),
        "earliest": "10:00",
        "latest": "10:30",
    }
    response = await client.post("/api/waitlist", json=body, headers=world.headers("patient1"))
    assert response.status_code == 201, response.text
    await cancel(client, world, appointment_id)
    assert changes[-1].action == "cancelled" and changes[-1].someone_waits
    assert asks == [[(world.doctor_id, day)]]


async def test_a_bulk_cancel_asks_only_for_the_clinics_where_someone_waits(client, world, asked):
    asks, changes = asked
    appointment_id = await book(client, world, at(day_after_tomorrow(), 11))
    response = await client.post(
        "/api/appointments/bulk-update",
        json={"appointment_ids": [appointment_id], "status": "cancelled"},
        headers=world.headers("desk"),
    )
    assert response.status_code == 200, response.text
    assert response.json()["results"] == [{"id": appointment_id, "result": "updated"}]
    assert changes[-1].action == "cancelled" and not changes[-1].someone_waits
    assert asks == []
