"""The per-doctor limit under concurrency: parallel bookings and reschedules by one patient,
each through the domain code on a session (and pooled connection) of its own."""

import asyncio
import dataclasses
import datetime as dt

import pytest
from sqlalchemy import func, select

from app.access.identity import Principal
from app.appointments import commands
from app.appointments.rules import BookingRules
from app.errors import Invalid
from app.live.effects import Effects
from db.models import Appointment
from db.session import create_engine, session_factory
from tests.integration.world import at, day_after_tomorrow, make_world

RULES = BookingRules(dt.timedelta(0), dt.timedelta(days=30), max_future_per_doctor=3)
LIMIT = RULES.max_future_per_doctor


# The racers wait for each other while each holds a pooled connection (a barrier after
# their reads), so the pool must hold them all: the tests' default pool (4 + 5 overflow)
# would make them wait for one another forever, until the pool's timeout.
RACERS_MAX = 16


@pytest.fixture
async def engine(settings):
    """An engine of this module's own, its pool big enough for every racer at once."""
    roomy = dataclasses.replace(settings, db_pool_size=RACERS_MAX, db_max_overflow=0)
    engine = create_engine(roomy, application_name="medbook-race-tests")
    yield engine
    await engine.dispose()


@pytest.fixture
async def world(session, settings):
    return await make_world(session, settings.secret_key, patients=1)


def all_read_before_any_writes(monkeypatch, parties: int) -> None:
    """Every booking (or reschedule) reads its facts, then waits until all the others have
    read theirs too: each then starts its write believing the patient has room."""
    barrier = asyncio.Barrier(parties)
    read = commands._booking_facts

    async def read_then_wait(*args, **kwargs):
        facts = await read(*args, **kwargs)
        await barrier.wait()
        return facts

    monkeypatch.setattr(commands, "_booking_facts", read_then_wait)


def actor(world, name: str = "patient0") -> Principal:
    user = world.users[name]
    return Principal(user.id, user.email, user.role, user.patient_id, clinic_id=user.clinic_id)


async def as_patient(engine, redis, world, command, *args, **kwargs) -> str:
    """`command` by patient0 on a session of its own: `ok`, or the refusal's status code
    and message."""
    async with session_factory(engine)() as session:
        try:
            await command(
                session,
                Effects(redis),
                actor(world),
                *args,
                rules=RULES,
                now=dt.datetime.now(dt.UTC),
                **kwargs,
            )
        except Invalid as refused:
            return f"{refused.status_code} {refused.args[0]}"
    return "ok"


def book(engine, redis, world, start: dt.datetime):
    return as_patient(engine, redis, world, commands.book, doctor_id=world.doctor_id, start=start)


def move(engine, redis, world, appointment_id: int, start: dt.datetime):
    return as_patient(engine, redis, world, commands.reschedule, appointment_id, start=start)


async def future_held(session, world) -> int:
    return await session.scalar(
        select(func.count())
        .select_from(Appointment)
        .where(
            Appointment.patient_id == world.patients[0],
            Appointment.doctor_id == world.doctor_id,
            Appointment.status == "booked",
            Appointment.starts_at > func.now(),
        )
    )


OVER = f"422 a patient may hold at most {LIMIT} future appointments with one doctor"


async def test_parallel_bookings_by_one_patient_stop_at_the_limit(
    engine, redis, world, session, monkeypatch
):
    tries = LIMIT + 5
    day = day_after_tomorrow()
    all_read_before_any_writes(monkeypatch, tries)
    outcomes = await asyncio.gather(
        *(book(engine, redis, world, at(day, 9 + i)) for i in range(tries))
    )
    assert sorted(outcomes) == [OVER] * (tries - LIMIT) + ["ok"] * LIMIT
    assert await future_held(session, world) == LIMIT


async def held_but_past(session, world) -> int:
    """A booking of the patient's that has already begun (not yet marked completed or
    no-show): it does not count toward the limit."""
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=3)
    appointment = Appointment(
        doctor_id=world.doctor_id,
        patient_id=world.patients[0],
        clinic_id=world.clinic_id,
        starts_at=start,
        ends_at=start + dt.timedelta(minutes=30),
    )
    session.add(appointment)
    await session.commit()
    return appointment.id


async def test_rescheduling_a_past_booking_into_the_future_respects_the_limit(
    engine, redis, world, session
):
    day = day_after_tomorrow()
    past = await held_but_past(session, world)
    for i in range(LIMIT):
        assert await book(engine, redis, world, at(day, 9 + i)) == "ok"

    assert await move(engine, redis, world, past, at(day, 15)) == OVER
    first = await session.scalar(select(Appointment.id).where(Appointment.starts_at == at(day, 9)))
    # Moving a future booking holds no more than before: allowed at the limit.
    assert await move(engine, redis, world, first, at(day, 16)) == "ok"
    assert await future_held(session, world) == LIMIT


async def test_a_reschedule_and_a_booking_racing_for_the_last_place(
    engine, redis, world, session, monkeypatch
):
    day = day_after_tomorrow()
    past = await held_but_past(session, world)
    for i in range(LIMIT - 1):
        assert await book(engine, redis, world, at(day, 9 + i)) == "ok"
    all_read_before_any_writes(monkeypatch, 2)
    outcomes = await asyncio.gather(
        book(engine, redis, world, at(day, 15)), move(engine, redis, world, past, at(day, 16))
    )
    assert sorted(outcomes) == [OVER, "ok"]  # exactly one takes the last place
    assert await future_held(session, world) == LIMIT
