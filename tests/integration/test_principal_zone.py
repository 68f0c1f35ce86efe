"""The Principal carries the zone of its own clinic, so a list of the actor's own day
needs no look-up of its own (issue 17); lists of others' days still look theirs up."""

import dataclasses

import pytest

from app.access.identity import load_principal
from app.appointments import queries
from tests.integration.statements import watch
from tests.integration.world import at, day_after_tomorrow, make_world


@pytest.fixture
async def world(client, session, settings):
    return await make_world(session, settings.secret_key, patients=2)


async def book(client, world, hour, patient=0):
    body = {
        "doctor_id": world.doctor_id,
        "start": at(day_after_tomorrow(), hour).isoformat(),
        "patient_id": world.patients[patient],
    }
    response = await client.post("/api/appointments", json=body, headers=world.headers("desk"))
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def test_staff_principals_carry_their_clinics_zone(session, world):
    zones = {
        name: (await load_principal(session, world.users[name].id)).timezone
        for name in ("doctor", "desk", "other_desk", "patient0", "admin")
    }
    assert zones == {
        "doctor": "Europe/Berlin",
        "desk": "Europe/Berlin",
        "other_desk": "America/New_York",
        "patient0": None,
        "admin": None,
    }


async def statements(session, run):
    """The statements (besides BEGIN, COMMIT and ROLLBACK) sent on the session's engine's
    connections while `run()` runs, and what it returned."""
    await session.commit()  # its connection back: `run` checks one out while watched
    watched = watch(session.bind)
    try:
        result = await run()
        await watched.settled()
    finally:
        watched.stop()
    sent = [q for q, _ in watched if not q.strip().upper().startswith(("BEGIN", "COMMIT", "ROLL"))]
    return sent, result


@pytest.mark.parametrize("who", ["doctor", "desk"])
async def test_a_list_of_the_actors_own_day_is_one_statement(client, session, world, who):
    ids = {await book(client, world, 10), await book(client, world, 11, patient=1)}
    actor = await load_principal(session, world.users[who].id)
    await session.commit()
    day = day_after_tomorrow()
    by = {"doctor_id": world.doctor_id} if who == "doctor" else {"clinic_id": world.clinic_id}
    seen, (rows, _) = await statements(
        session,
        lambda: queries.list_appointments(session, actor, now=at(day, 0), day=day, **by),
    )
    assert {r.id for r in rows} == ids
    assert len(seen) == 1 and "c.timezone" in seen[0] and "FROM appointments a" in seen[0]
    # Without the carried zone (a Principal cached before it existed), the clinic's is
    # looked up: the same rows, one statement more.
    seen, (again, _) = await statements(
        session,
        lambda: queries.list_appointments(
            session, dataclasses.replace(actor, timezone=None), now=at(day, 0), day=day, **by
        ),
    )
    assert [r.id for r in again] == [r.id for r in rows] and len(seen) == 2


async def test_the_carried_zone_is_the_window_of_the_day(client, session, world):
    """The day's window comes from the carried zone: a zone twelve hours behind moves
    the Berlin morning's bookings out of it."""
    await book(client, world, 10)
    actor = await load_principal(session, world.users["doctor"].id)
    await session.commit()
    day = day_after_tomorrow()
    far = dataclasses.replace(actor, timezone="Pacific/Pago_Pago")  # UTC-11
    rows, _ = await queries.list_appointments(
        session, far, now=at(day, 0), day=day, doctor_id=world.doctor_id
    )
    assert rows == []
