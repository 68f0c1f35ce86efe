"""The availability cache is never stale: every kind of change, then an immediate read."""

import asyncio
import datetime as dt

import pytest

import app.scheduling.slots as slots_module
from app.scheduling.slots import SlotCache, compute_days, load_doctor_days
from app.services import Services
from tests.integration.world import at, day_after_tomorrow, make_world


@pytest.fixture
async def world(client, session, settings):
    return await make_world(session, settings.secret_key, patients=4)


async def truth(engine, doctor_id, day):
    """What PostgreSQL says right now, computed without any cache."""
    from db.session import session_factory

    async with session_factory(engine)() as fresh:
        lo = dt.datetime.combine(day, dt.time(), dt.UTC) - dt.timedelta(hours=15)
        data = await load_doctor_days(fresh, doctor_id, lo, lo + dt.timedelta(hours=54))
    return {s.start: not s.taken for s in compute_days(data, [day])[0].slots}


async def served(client, world, day):
    response = await client.get(
        "/api/appointments/available-slots",
        params={"doctor_id": world.doctor_id, "date": day.isoformat()},
        headers=world.headers("patient0"),
    )
    assert response.status_code == 200
    return {dt.datetime.fromisoformat(s["start"]): s["available"] for s in response.json()["slots"]}


async def test_every_kind_of_change_is_seen_by_the_next_read(client, world, engine):
    day = day_after_tomorrow()
    admin, desk = world.headers("admin"), world.headers("desk")
    schedule = f"/api/doctors/{world.doctor_id}/schedule"

    async def check(step):
        assert await served(client, world, day) == await truth(engine, world.doctor_id, day), step

    for round_ in range(8):
        await check(f"round {round_} start")  # also fills the cache
        hour = 9 + round_
        booked = await client.post(
            "/api/appointments",
            json={
                "doctor_id": world.doctor_id,
                "start": at(day, hour).isoformat(),
                "patient_id": world.patients[round_ % 4],
            },
            headers=desk,
        )
        assert booked.status_code == 201, booked.text
        await check("after booking")
        path = f"/api/appointments/{booked.json()['id']}"
        moved = await client.patch(
            path, json={"start": at(day, hour + 1).isoformat()}, headers=desk
        )
        assert moved.status_code == 200, moved.text
        await check("after reschedule")
        # A check-in waits for the appointment's day: refused, and nothing changes.
        refused = await client.patch(path, json={"status": "checked_in"}, headers=desk)
        assert refused.status_code == 422, refused.text
        await check("after a refused check-in")
        assert (await client.patch(path, json={"status": "cancelled"}, headers=desk)).is_success
        await check("after cancel")

        slot_minutes = 20 if round_ % 2 == 0 else 30
        ranges = [
            {"weekday": w, "start": "08:00", "end": "20:00", "slot_minutes": slot_minutes}
            for w in range(7)
        ]
        assert (await client.put(schedule, json={"ranges": ranges}, headers=admin)).is_success
        await check("after template edit")
        leave = await client.post(
            f"/api/doctors/{world.doctor_id}/exceptions",
            json={
                "starts_at": at(day, 18).isoformat(),
                "ends_at": at(day, 18, 40).isoformat(),
                "kind": "leave",
            },
            headers=admin,
        )
        assert leave.status_code == 201
        await check("after exception")
        closure = await client.post(
            f"/api/clinics/{world.clinic_id}/exceptions",
            json={
                "starts_at": at(day, 8).isoformat(),
                "ends_at": at(day, 8, 20).isoformat(),
                "kind": "closure",
                "cancel_affected": True,
            },
            headers=admin,
        )
        assert closure.status_code == 201
        await check("after clinic closure")


async def book_at_ten(engine, redis, world, day):
    """patient0 books 10:00 on `day` through the domain code (commit, then invalidation)."""
    from app.access.identity import Principal
    from app.appointments import commands
    from app.appointments.rules import BookingRules
    from app.live.effects import Effects
    from db.session import session_factory

    user = world.users["patient0"]
    async with session_factory(engine)() as writer:
        await commands.book(
            writer,
            Effects(redis),
            Principal(user.id, user.email, "patient", patient_id=user.patient_id),
            doctor_id=world.doctor_id,
            start=at(day, 10),
            rules=BookingRules(dt.timedelta(0), dt.timedelta(days=30), 5),
            now=dt.datetime.now(dt.UTC),
        )


async def test_a_computation_that_raced_a_write_is_not_cached(world, engine, redis, monkeypatch):
    """Reader loads, then a booking commits and invalidates, then the reader stores:
    the version guard must refuse the stale value."""
    day = day_after_tomorrow()
    cache = SlotCache(redis, engine)
    original = slots_module.fetch_doctor_days

    async def load_then_a_write_lands(connection, doctor_id, lo, hi, *typed):
        stale = await original(connection, doctor_id, lo, hi, *typed)
        await book_at_ten(engine, redis, world, day)
        return stale

    monkeypatch.setattr(slots_module, "fetch_doctor_days", load_then_a_write_lands)
    stale_days = (await cache.days(world.doctor_id, day, 1)).days
    ten = at(day, 10).astimezone(dt.UTC)
    assert next(s for s in stale_days[0].slots if s.start == ten).taken is False  # it raced

    monkeypatch.setattr(slots_module, "fetch_doctor_days", original)
    fresh_days = (await cache.days(world.doctor_id, day, 1)).days
    assert next(s for s in fresh_days[0].slots if s.start == ten).taken is True


class CountedReads:
    """The Redis client, counting the cache's reads (MGET) that have been answered; `all`
    is set once `expected` have been."""

    def __init__(self, redis, expected: int) -> None:
        self._redis, self.expected, self.answered = redis, expected, 0
        self.all = asyncio.Event()

    async def mget(self, keys):
        found = await self._redis.mget(keys)
        self.answered += 1
        if self.answered == self.expected:
            self.all.set()
        return found

    def __getattr__(self, name):
        return getattr(self._redis, name)


async def test_concurrent_misses_compute_once(world, engine, redis, monkeypatch):
    calls = []
    original = slots_module.fetch_doctor_days
    readers = 20
    reads = CountedReads(redis, readers)

    async def counted(*args):
        calls.append(args[1])
        # Every reader has had its miss answered, and so (no await between that answer
        # and the in-flight check) is waiting on this computation: the race is real.
        await asyncio.wait_for(reads.all.wait(), 60)  # a deadline, not a speed check
        return await original(*args)

    monkeypatch.setattr(slots_module, "fetch_doctor_days", counted)
    cache = SlotCache(reads, engine)  # type: ignore[arg-type]

    async def read():
        return await cache.days(world.doctor_id, day_after_tomorrow(), 1)

    results = await asyncio.gather(*(read() for _ in range(readers)))
    assert reads.answered == readers and cache.misses == readers
    assert len(calls) == 1
    assert all(r == results[0] for r in results)
    await read()
    assert len(calls) == 1  # now a hit
    assert cache.hits == 1


async def test_a_cache_hit_costs_one_redis_round_trip(client, world, engine):
    """The authentication step fetches the route's cached doctor-day with the Principal
    and the rate count: a hit sends one command to Redis, and answers the truth."""
    day = day_after_tomorrow()
    await served(client, world, day)  # caches the Principal and the day
    services = Services.of(client.app)
    sent: list[tuple[str, object]] = []

    def record(redis: object) -> None:
        original = redis.execute_command  # type: ignore[attr-defined]

        async def recording(*args, **kwargs):
            sent.append((args[0], redis))
            return await original(*args, **kwargs)

        redis.execute_command = recording  # type: ignore[attr-defined]

    clients = (services.redis, services.request_redis)
    for redis in clients:
        record(redis)
    try:
        answer = await served(client, world, day)
    finally:
        for redis in clients:
            del redis.execute_command  # type: ignore[attr-defined]
    # One command to Redis in all: the authentication script, on the per-request client.
    assert [sent_ for sent_ in sent if sent_[0] != "PING"] == [("EVALSHA", services.request_redis)]
    assert answer == await truth(engine, world.doctor_id, day)


async def test_a_bad_availability_query_still_gets_its_400(client, world):
    for params in ({"doctor_id": "x", "date": "2026-01-01"}, {"doctor_id": 1, "date": "soon"}):
        response = await client.get(
            "/api/appointments/available-slots", params=params, headers=world.headers("patient0")
        )
        assert response.status_code == 400, response.text


async def test_a_week_miss_caches_every_day_in_one_call(world, engine, redis):
    cache = SlotCache(redis, engine)
    first = day_after_tomorrow()
    week = (await cache.days(world.doctor_id, first, 7)).days
    assert cache.misses == 7
    for offset, computed in enumerate(week):
        (day,) = (await cache.days(world.doctor_id, first + dt.timedelta(days=offset), 1)).days
        assert day == computed
    assert cache.hits == 7 and cache.misses == 7


async def test_a_read_after_a_write_does_not_join_an_older_computation(
    world, engine, redis, monkeypatch
):
    """Reader A's computation is slow; meanwhile a booking commits and invalidates; reader
    B, arriving after that, must not be handed A's (older) answer."""
    day = day_after_tomorrow()
    cache = SlotCache(redis, engine)
    original = slots_module.fetch_doctor_days
    a_has_read = asyncio.Event()
    b_reads = asyncio.Event()
    release_a = asyncio.Event()

    async def slow_for_a(connection, doctor_id, lo, hi, *typed):
        if a_has_read.is_set():
            b_reads.set()
        data = await original(connection, doctor_id, lo, hi, *typed)
        if not a_has_read.is_set():
            a_has_read.set()
            await release_a.wait()
        return data

    monkeypatch.setattr(slots_module, "fetch_doctor_days", slow_for_a)
    reader_a = asyncio.create_task(cache.days(world.doctor_id, day, 1))
    await a_has_read.wait()
    await book_at_ten(engine, redis, world, day)
    ten = at(day, 10).astimezone(dt.UTC)
    reader_b = asyncio.create_task(cache.days(world.doctor_id, day, 1))
    try:
        # B reads the database itself while A is still held; had it joined A's
        # computation it would never read, and this wait would fail.
        await asyncio.wait_for(b_reads.wait(), 30)
    finally:
        release_a.set()
    (_, (a_day,), _), (_, (b_day,), _) = await asyncio.gather(reader_a, reader_b)
    assert next(s for s in a_day.slots if s.start == ten).taken is False  # began before
    assert next(s for s in b_day.slots if s.start == ten).taken is True


async def test_a_deferred_store_waits_for_its_caller(world, engine, redis):
    """With `later`, a miss answers first and stores when the caller runs what it was
    handed (the API route: after its response has been sent)."""
    cache = SlotCache(redis, engine)
    day = day_after_tomorrow()
    later: list = []
    (computed,) = (await cache.days(world.doctor_id, day, 1, later=later)).days
    assert len(later) == 1
    assert await redis.get(f"avail:{world.doctor_id}:{day.isoformat()}") is None
    for store in later:
        await store()
    (again,) = (await cache.days(world.doctor_id, day, 1)).days
    assert again == computed and cache.hits == 1 and cache.misses == 1
