"""Concurrent retries of one booking with one Idempotency-Key all get that booking, each
through the domain code on a session (and pooled connection) of its own."""

import asyncio
import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from app.appointments import commands
from app.errors import DomainError
from app.live.effects import Effects
from app.routes.api_appointments import appointment_out
from db.models import Appointment
from db.session import session_factory
from tests.integration import test_booking_limits_race as race
from tests.integration.test_booking_limits_race import RULES, actor, all_read_before_any_writes
from tests.integration.world import at, day_after_tomorrow, make_world

RETRIES = 10
engine = race.engine  # the pool holds every racer (see there)
NEW_YORK = ZoneInfo("America/New_York")


@pytest.fixture
async def world(session, settings):
    return await make_world(session, settings.secret_key, patients=1)


async def attempt(engine, redis, world, who, key, doctor_id, start):
    """What the API would answer: status code and body."""
    async with session_factory(engine)() as session:
        try:
            result = await commands.book(
                session,
                Effects(redis),
                actor(world, who),
                doctor_id=doctor_id,
                start=start,
                patient_id=world.patients[0] if who == "desk" else None,
                reason="Cough",
                idempotency_key=key,
                rules=RULES,
                now=dt.datetime.now(dt.UTC),
            )
        except DomainError as refused:
            return refused.status_code, refused.args[0], False
        return 201, appointment_out(result.appointment, result.timezone), result.replayed


@pytest.mark.parametrize("who", ["patient0", "desk"])
async def test_parallel_retries_with_one_key_all_get_the_one_booking(
    engine, redis, world, session, monkeypatch, who
):
    all_read_before_any_writes(monkeypatch, RETRIES)
    start = at(day_after_tomorrow(), 10)
    answers = await asyncio.gather(
        *(
            attempt(engine, redis, world, who, "one-booking", world.doctor_id, start)
            for _ in range(RETRIES)
        )
    )
    assert {code for code, _, _ in answers} == {201}, answers
    assert sorted(replayed for _, _, replayed in answers) == [False] + [True] * (RETRIES - 1)
    first = next(body for _, body, replayed in answers if not replayed)
    assert all(body == first for _, body, _ in answers)  # the first answer, replayed
    assert await session.scalar(select(func.count()).select_from(Appointment)) == 1


async def test_a_concurrent_reuse_of_the_key_for_another_booking_is_refused(
    engine, redis, world, session, monkeypatch
):
    """Same key, different bookings at once (two doctors): one is booked, the other told
    the key is used (422); never a second booking under one key, never a 409."""
    all_read_before_any_writes(monkeypatch, 2)
    day = day_after_tomorrow()
    answers = await asyncio.gather(
        attempt(engine, redis, world, "patient0", "reused", world.doctor_id, at(day, 10)),
        attempt(
            engine,
            redis,
            world,
            "patient0",
            "reused",
            world.other_doctor_id,
            at(day, 10, tz=NEW_YORK),
        ),
    )
    assert sorted(code for code, _, _ in answers) == [201, 422], answers
    refused = next(body for code, body, _ in answers if code == 422)
    assert "Idempotency-Key" in refused
    assert await session.scalar(select(func.count()).select_from(Appointment)) == 1
