"""`Appointment/$hold` and `$book` of a hold: the same `held` row the waitlist uses, busy
to everyone, booked in place, released when it lapses without any request."""

import datetime as dt

import pytest
from sqlalchemy import func, select, update

from db.models import Appointment, AuditEvent, Notification, Patient
from tasks.fhir_holds import expire_fhir_hold
from tests.integration.fhir_helpers import fhir_call, resources_of
from tests.integration.notification_servers import eventually, running_worker
from tests.integration.world import at, day_after_tomorrow, make_world

EXPIRES = "urn:medbook:fhir:hold-expires"


@pytest.fixture
async def world(client, session, settings):
    world = await make_world(session, settings.secret_key, patients=3)
    world.day = day_after_tomorrow()
    return world


@pytest.fixture
async def worker(client, settings, monkeypatch):
    async with running_worker(settings, monkeypatch) as running:
        yield running


def proposal(world, hour, patient=None):
    """A candidate as $find gives it (doctor and start), optionally naming a patient."""
    body = {
        "resourceType": "Appointment",
        "status": "proposed",
        "start": at(world.day, hour).isoformat(),
        "participant": [
            {"actor": {"reference": f"Practitioner/{world.doctor_id}"}, "status": "accepted"}
        ],
    }
    if patient is not None:
        body["participant"].append(
            {"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"}
        )
    return body


async def slot_status(client, world, hour, who="patient2"):
    start = at(world.day, hour)
    found = await fhir_call(
        client,
        "GET",
        "Slot",
        world.headers(who),
        params={"schedule": f"Schedule/{world.doctor_id}", "start": start.isoformat()},
    )
    (slot,) = resources_of(found)
    return slot["status"]


async def lapse(session, held):
    """Let a hold's time pass (a second ago), as waiting out WAITLIST_HOLD_SECONDS would."""
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    await session.execute(
        update(Appointment).values(hold_expires_at=past).where(Appointment.id == int(held["id"]))
    )
    await session.commit()


async def held_rows(session):
    return await session.scalar(
        select(func.count()).select_from(Appointment).where(Appointment.status == "held")
    )


async def test_hold_then_book_turns_the_hold_into_the_booking(client, world, session):
    await session.execute(
        update(Patient).where(Patient.id == world.patients[0]).values(email="p0@example.test")
    )
    await session.commit()
    mine = world.headers("patient0")
    before = dt.datetime.now(dt.UTC)
    held = await fhir_call(
        client, "POST", "Appointment/$hold", mine, status=201, json=proposal(world, 10)
    )
    assert held["status"] == "pending"
    (expiry,) = [e["valueInstant"] for e in held["extension"] if e["url"] == EXPIRES]
    lapses = dt.datetime.fromisoformat(expiry) - before
    assert dt.timedelta(seconds=890) < lapses < dt.timedelta(seconds=910)  # 900 s setting
    assert {p["actor"]["reference"] for p in held["participant"]} >= {
        f"Patient/{world.patients[0]}"
    }
    # A retry (its answer lost) gets the same hold back, not a 409 from its own hold.
    retried = await client.post(
        "/fhir/R4/Appointment/$hold", json=proposal(world, 10), headers=mine
    )
    assert retried.status_code == 201 and retried.headers["Idempotent-Replayed"] == "true"
    assert retried.json() == held
    # Busy to everyone; nobody else can hold or book it, by any path.
    assert await slot_status(client, world, 10) == "busy"
    other = world.headers("patient1")
    taken = await fhir_call(
        client, "POST", "Appointment/$hold", other, status=409, json=proposal(world, 10)
    )
    assert taken["issue"][0]["code"] == "conflict"
    await fhir_call(
        client, "POST", "Appointment/$book", other, status=409, json=proposal(world, 10)
    )
    await fhir_call(client, "POST", "Appointment/$book", other, status=409, json=held)
    api = await client.post(
        "/api/appointments",
        json={"doctor_id": world.doctor_id, "start": at(world.day, 10).isoformat()},
        headers=other,
    )
    assert api.status_code == 409
    # Not an appointment yet: a hold is nobody's Appointment to read or search.
    await fhir_call(client, "GET", f"Appointment/{held['id']}", mine, status=404)
    assert resources_of(await fhir_call(client, "GET", "Appointment", mine)) == []

    answer = await client.post("/fhir/R4/Appointment/$book", json=held, headers=mine)
    assert answer.status_code == 201, answer.text
    booked = answer.json()
    assert booked["id"] == held["id"] and booked["status"] == "booked"
    assert "extension" not in booked
    row = await session.get(Appointment, int(held["id"]))
    assert (row.status, row.hold_expires_at) == ("booked", None)
    assert await held_rows(session) == 0
    # The booking's confirmation and reminders are queued, as for any booking.
    queued = await session.scalar(
        select(func.count()).select_from(Notification).where(Notification.appointment_id == row.id)
    )
    assert queued >= 1
    # A retry answers the same booking; the Appointment reads as booked (and is audited).
    again = await client.post("/fhir/R4/Appointment/$book", json=held, headers=mine)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == held["id"]
    read = await fhir_call(client, "GET", f"Appointment/{held['id']}", mine)
    assert read["status"] == "booked"
    audited = await session.scalar(
        select(func.count())
        .select_from(AuditEvent)
        .where(AuditEvent.action == "fhir.read", AuditEvent.subject_id == row.id)
    )
    assert audited == 1  # the read; $hold and $book are the caller's own writes


async def test_a_typed_hold_holds_the_visit_with_its_buffers(client, world, session):
    from db.models import VisitType

    long_visit = VisitType(
        doctor_id=world.doctor_id, name="Long", minutes=60, buffer_after_minutes=30
    )
    session.add(long_visit)
    await session.commit()
    body = proposal(world, 10) | {
        "serviceType": [
            {
                "coding": [
                    {"system": "urn:medbook:fhir:healthcare-service", "code": str(long_visit.id)}
                ]
            }
        ]
    }
    held = await fhir_call(
        client, "POST", "Appointment/$hold", world.headers("patient0"), status=201, json=body
    )
    assert held["minutesDuration"] == 60
    assert held["serviceType"][0]["coding"][0]["code"] == str(long_visit.id)
    # 10:00-11:00 plus 30 minutes of buffer: the plain 11:00 slot is busy too.
    assert await slot_status(client, world, 11) == "busy"
    assert await slot_status(client, world, 12) == "free"


async def test_a_lapsed_hold_cannot_be_booked_and_is_released_by_the_job(
    client, world, session, worker
):
    mine = world.headers("patient0")
    held = await fhir_call(
        client, "POST", "Appointment/$hold", mine, status=201, json=proposal(world, 10)
    )
    hold_id = int(held["id"])
    services = {"services": worker.context["services"]}
    assert await expire_fhir_hold(services, hold_id=hold_id) == 0  # not lapsed yet
    await lapse(session, held)
    lapsed = await fhir_call(client, "POST", "Appointment/$book", mine, status=409, json=held)
    assert "lapsed" in lapsed["issue"][0]["diagnostics"]
    assert await expire_fhir_hold(services, hold_id=hold_id) == 1
    assert await held_rows(session) == 0
    assert await slot_status(client, world, 10) == "free"
    # The sweeper (the cron's job, run by the worker here) releases any lapsed hold.
    again = await fhir_call(
        client, "POST", "Appointment/$hold", mine, status=201, json=proposal(world, 11)
    )
    await lapse(session, again)
    await worker.queue.enqueue("sweep_fhir_holds")

    async def released():
        return await slot_status(client, world, 11) == "free"

    await eventually(released)
    assert await held_rows(session) == 0


async def test_a_lapsed_hold_never_stands_in_the_way_of_a_new_one(client, world, session):
    held = await fhir_call(
        client,
        "POST",
        "Appointment/$hold",
        world.headers("patient0"),
        status=201,
        json=proposal(world, 10),
    )
    await lapse(session, held)
    # Before any sweeper: the next $hold of the doctor releases it first.
    theirs = await fhir_call(
        client,
        "POST",
        "Appointment/$hold",
        world.headers("patient1"),
        status=201,
        json=proposal(world, 10),
    )
    assert theirs["id"] != held["id"]
    assert await session.get(Appointment, int(held["id"])) is None


async def test_holds_count_against_the_per_doctor_limit(client, world, settings):
    mine = world.headers("patient0")
    limit = settings.max_future_appointments_per_doctor
    for hour in range(9, 9 + limit):
        await fhir_call(
            client, "POST", "Appointment/$hold", mine, status=201, json=proposal(world, hour)
        )
    over = await fhir_call(
        client, "POST", "Appointment/$hold", mine, status=422, json=proposal(world, 9 + limit)
    )
    assert "at most" in over["issue"][0]["diagnostics"]
    # Off the grid, a bad body: the booking's own answers.
    off = proposal(world, 10) | {"start": at(world.day, 10, 7).isoformat()}
    await fhir_call(
        client, "POST", "Appointment/$hold", world.headers("patient1"), status=422, json=off
    )
    await fhir_call(client, "POST", "Appointment/$hold", mine, status=400, json={"x": 1})


async def test_parallel_holds_by_one_patient_stop_at_the_limit(
    settings, redis, world, session, monkeypatch
):
    """Every hold reads its facts, then waits for all the others to have read theirs (each
    believes the patient has room); the count under the patient's lock decides."""
    import asyncio
    import dataclasses

    from app.access.identity import Principal
    from app.appointments.rules import BookingRules
    from app.errors import Invalid
    from app.fhir import holds
    from app.live.effects import Effects
    from db.session import create_engine, session_factory

    tries = 8
    rules = BookingRules(dt.timedelta(0), dt.timedelta(days=30), max_future_per_doctor=3)
    roomy = dataclasses.replace(settings, db_pool_size=tries + 2, db_max_overflow=0)
    engine = create_engine(roomy, application_name="medbook-hold-race-tests")
    barrier = asyncio.Barrier(tries)
    read = holds.load_doctor_days

    async def read_then_wait(*args, **kwargs):
        data = await read(*args, **kwargs)
        await barrier.wait()
        return data

    monkeypatch.setattr(holds, "load_doctor_days", read_then_wait)
    user = world.users["patient0"]
    me = Principal(user.id, user.email, user.role, user.patient_id)

    async def attempt(hour):
        async with session_factory(engine)() as own:
            try:
                await holds.hold(
                    own,
                    Effects(redis),
                    me,
                    doctor_id=world.doctor_id,
                    start=at(world.day, hour),
                    patient_id=None,
                    reason=None,
                    visit_type_id=None,
                    rules=rules,
                    now=dt.datetime.now(dt.UTC),
                    hold_for=dt.timedelta(minutes=5),
                )
            except Invalid as refused:
                return refused.status_code
        return "held"

    try:
        answers = await asyncio.gather(*(attempt(9 + i) for i in range(tries)))
    finally:
        await engine.dispose()
    assert sorted(answers, key=str) == [422] * (tries - 3) + ["held"] * 3
    assert await held_rows(session) == 3
