"""Who is asking: the `Principal` every request carries, loaded from the users table."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from app.pipelined_redis import Commands
from app.redis import spread_ttl
from app.redis_scripts import Script
from db.models import Clinic, Doctor, Patient, User
from db.session import driver_fetchrow


@dataclass(frozen=True, slots=True)
class Principal:
    """The signed-in user, with the links that scope what they may see."""

    id: int
    email: str
    role: str
    patient_id: int | None = None
    doctor_id: int | None = None
    clinic_id: int | None = None
    language: str | None = None  # a patient's saved language (app/i18n.py negotiates)
    # The time zone of the staff member's own clinic (a doctor's: their doctor's clinic),
    # so a list of their day needs no look-up of its own; clinics' zones never change.
    # None for patients and admins, and in Principals cached before it existed.
    timezone: str | None = None


async def load_principal(session: AsyncSession | AsyncConnection, user_id: int) -> Principal | None:
    """The active user with this id, or None (unknown or deactivated)."""
    row = (
        await session.execute(
            select(
                User.id,
                User.email,
                User.role,
                User.patient_id,
                User.doctor_id,
                User.clinic_id,
                Patient.language,
                Clinic.timezone,
            )
            .outerjoin(Patient, Patient.id == User.patient_id)
            .outerjoin(Doctor, Doctor.id == User.doctor_id)
            .outerjoin(Clinic, Clinic.id == func.coalesce(Doctor.clinic_id, User.clinic_id))
            .where(User.id == user_id, User.is_active.is_(True))
        )
    ).one_or_none()
    return Principal(*row) if row else None


# `load_principal` written out, for a cache miss (`cached_principal`): straight through
# asyncpg on a pooled connection (`driver_fetchrow`), no session, no SQLAlchemy layers:
# the first request of each user after the TTL pays for it (bench/README.md, cpu17b).
# tests/integration/test_principal_load.py keeps the two the same.
PRINCIPAL_SQL = """SELECT u.id, u.email, u.role, u.patient_id, u.doctor_id, u.clinic_id,
       p.language, c.timezone
  FROM users u
  LEFT JOIN patients p ON p.id = u.patient_id
  LEFT JOIN doctors d ON d.id = u.doctor_id
  LEFT JOIN clinics c ON c.id = coalesce(d.clinic_id, u.clinic_id)
 WHERE u.id = $1 AND u.is_active IS true"""


async def prepare(connection: AsyncConnection) -> None:
    """Prepare PRINCIPAL_SQL on this pooled connection (at start, as the other hot
    statements: app/web/asgi.py `warm_pool`)."""
    driver = (await connection.get_raw_connection()).driver_connection
    assert driver is not None
    await driver.fetchrow(PRINCIPAL_SQL, 0)


# Every request needs its Principal. Reading it from PostgreSQL costs a pool checkout,
# a ping, BEGIN, the query and ROLLBACK; one Redis GET is several times cheaper. Account
# changes call `forget_principal` after their commit; a reader stores what it loaded only
# if no change happened since it looked (the same version guard as the slot cache), and
# the TTL bounds anything that slips through, e.g. a change while Redis was down. Five
# minutes, not one: with a one-minute TTL the year-scale benchmark's 1,000 users all
# reloaded within seconds of each other once a minute, which alone made the availability
# bench's cache-miss p95 several times worse (bench/README.md). Each entry's TTL is spread
# (`spread_ttl`), so Principals loaded together do not all expire together.
PRINCIPAL_TTL_SECONDS = 300
_SET_IF_VERSION = """
local current = redis.call('GET', KEYS[2])
if (current == false and ARGV[2] == '') or current == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
end
return 0
"""


def _keys(user_id: int) -> tuple[str, str]:
    # "principal2": the Principal gained `timezone`; a process of the previous release
    # would refuse the new field, so the two releases keep apart entries during a deploy.
    return f"principal2:{user_id}", f"principalver:{user_id}"


# One round trip for what every signed-in request needs from Redis: the cached Principal
# and its version, plus the caller's per-user rate-limit window counted (INCR with expiry,
# as app/access/rate_limit.py does), plus any keys the route asked to have fetched ahead (the
# availability route's cached doctor-days, see `prefetch`). A Redis round trip from
# Python costs more than the work it fetches, and more under load, when every hop waits
# for another process to be scheduled; folding them into one is a measured saving on
# every API call (bench/README.md).
_PRINCIPAL_AND_COUNT = """
local n = redis.call('INCR', KEYS[3])
if n == 1 then redis.call('EXPIRE', KEYS[3], ARGV[1]) end
local ttl = redis.call('TTL', KEYS[3])
if ttl < 0 then redis.call('EXPIRE', KEYS[3], ARGV[1]); ttl = tonumber(ARGV[1]) end
local out = {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]), n, ttl}
for i = 4, #KEYS do out[i + 1] = redis.call('GET', KEYS[i]) end
return out
"""
_principal_and_count = Script(_PRINCIPAL_AND_COUNT)
# A cached Principal, decoded straight into the dataclass: 0.5-1.8 µs against 4.7-6.2 for
# json.loads and Principal(**...) (timeit, cpu17f), on every request.
_decode_principal = msgspec.json.Decoder(Principal).decode
_set_if_version = Script(_SET_IF_VERSION)


async def cached_principal(
    redis: Commands,
    engine: AsyncEngine,
    user_id: int,
    *,
    rate_key: str | None = None,
    rate_window: int = 60,
    prefetch: Sequence[str] = (),
) -> tuple[Principal | None, tuple[int, int] | None, dict[str, bytes | None] | None]:
    """The active user with this id, from Redis when possible, else PostgreSQL.

    Args:
        rate_key: also count this request in that rate-limit window (same round trip).
        prefetch: also GET these keys in the same round trip.

    Returns:
        The Principal (None: unknown or deactivated); when `rate_key` was given and Redis
        answered, the window's (count, seconds left); when Redis answered, the prefetched
        keys' values (None for a missing key).
    """
    key, version_key = _keys(user_id)
    raw = version = None
    counted: tuple[int, int] | None = None
    fetched: dict[str, bytes | None] | None = None
    try:
        if rate_key is None:
            raw, version, *values = await redis.execute_command("MGET", key, version_key, *prefetch)
        else:
            raw, version, count, ttl, *values = await _principal_and_count(
                redis, [key, version_key, "rl:" + rate_key, *prefetch], [rate_window]
            )
            counted = (int(count), int(ttl))
        fetched = dict(zip(prefetch, values, strict=True))
    except RedisError:
        pass
    if raw is not None:
        with suppress(msgspec.DecodeError):  # not what we store: read it again
            return _decode_principal(raw), counted, fetched
    # One statement on a pooled connection, outside any transaction: one round trip.
    row = await driver_fetchrow(engine, PRINCIPAL_SQL, user_id)
    principal = Principal(*row) if row else None
    if principal is not None:
        with suppress(RedisError):
            await _set_if_version(
                redis,
                [key, version_key],
                [
                    json.dumps(asdict(principal)),
                    (version or b"").decode(),
                    spread_ttl(PRINCIPAL_TTL_SECONDS),
                ],
            )
    return principal, counted, fetched


async def forget_principal(redis: Redis, user_id: int) -> None:
    """Drop the cached Principal after a committed change to the user's role or status."""
    key, version_key = _keys(user_id)
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.incr(version_key)
            pipe.expire(version_key, 24 * 3600)
            pipe.delete(key, f"principal:{user_id}")  # and the previous release's entry
            await pipe.execute()
    except RedisError as exc:  # the TTL bounds how long the old role can linger
        logging.getLogger(__name__).error("could not forget principal %s: %s", user_id, exc)
