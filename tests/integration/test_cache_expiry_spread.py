"""Cache entries filled together do not expire together: each gets its TTL, give or take
a fifth (after a start, a deploy or a flush every user's Principal and every doctor-day
asked for is cached within seconds; with one TTL they all missed again at once)."""

import datetime as dt

from app.access.identity import PRINCIPAL_TTL_SECONDS
from app.redis import TTL_SPREAD
from app.scheduling import slots
from app.scheduling.slots import CACHE_TTL_SECONDS
from tests.integration.world import make_world


def spread_bounds(ttl: int) -> tuple[float, float]:
    # Redis counts down in whole seconds: allow the second that passed since the SET.
    return ttl * (1 - TTL_SPREAD) - 1, ttl * (1 + TTL_SPREAD)


async def test_principals_cached_together_expire_apart(client, session, settings, redis):
    world = await make_world(session, settings.secret_key, patients=12)
    await session.commit()
    users = [f"patient{n}" for n in range(12)]
    for user in users:  # each request loads and caches its caller's Principal
        assert (await client.get("/api/auth/me", headers=world.headers(user))).is_success
    ttls = [await redis.ttl(f"principal2:{world.users[user].id}") for user in users]
    low, high = spread_bounds(PRINCIPAL_TTL_SECONDS)
    assert all(low <= ttl <= high for ttl in ttls), ttls
    assert max(ttls) - min(ttls) > 10, ttls  # not one TTL counting down


async def test_doctor_days_cached_together_expire_apart(client, session, settings, redis):
    world = await make_world(session, settings.secret_key, patients=1)
    await session.commit()
    days = [dt.date.today() + dt.timedelta(days=k) for k in range(2, 14)]
    for day in days:  # one doctor-day each, so each is computed and stored on its own
        response = await client.get(
            "/api/appointments/available-slots",
            params={"doctor_id": world.doctor_id, "date": day.isoformat()},
            headers=world.headers("patient0"),
        )
        assert response.status_code == 200
    ttls = [await redis.ttl(slots._key(world.doctor_id, day)) for day in days]
    low, high = spread_bounds(CACHE_TTL_SECONDS)
    assert all(low <= ttl <= high for ttl in ttls), ttls
    assert max(ttls) - min(ttls) > 10, ttls  # not one TTL counting down
