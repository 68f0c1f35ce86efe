"""Who is asking: the `Principal` every request carries, loaded from the users table."""

from __future__ import annotations

import json
import logging
from contextlib import suppress
from dataclasses import asdict, dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db.models import User


@dataclass(frozen=True, slots=True)
class Principal:
    """The signed-in user, with the links that scope what they may see."""

    id: int
    email: str
    role: str
    patient_id: int | None = None
    doctor_id: int | None = None
    clinic_id: int | None = None


async def load_principal(session: AsyncSession, user_id: int) -> Principal | None:
    """The active user with this id, or None (unknown or deactivated)."""
    row = (
        await session.execute(
            select(
                User.id, User.email, User.role, User.patient_id, User.doctor_id, User.clinic_id
            ).where(User.id == user_id, User.is_active.is_(True))
        )
    ).one_or_none()
    return Principal(*row) if row else None


# Every request needs its Principal. Reading it from PostgreSQL costs a pool checkout,
# a ping, BEGIN, the query and ROLLBACK; one Redis GET is several times cheaper. Account
# changes call `forget_principal` after their commit; a reader stores what it loaded only
# if no change happened since it looked (the same version guard as the slot cache), and
# the TTL bounds anything that slips through, e.g. a change while Redis was down.
PRINCIPAL_TTL_SECONDS = 60
_SET_IF_VERSION = """
local current = redis.call('GET', KEYS[2])
if (current == false and ARGV[2] == '') or current == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
end
return 0
"""


def _keys(user_id: int) -> tuple[str, str]:
    return f"principal:{user_id}", f"principalver:{user_id}"


async def cached_principal(
    redis: Redis, sessions: async_sessionmaker[AsyncSession], user_id: int
) -> Principal | None:
    """The active user with this id, from Redis when possible, else PostgreSQL."""
    key, version_key = _keys(user_id)
    try:
        raw, version = await redis.mget(key, version_key)
    except RedisError:
        raw, version = None, None
    if raw is not None:
        return Principal(**json.loads(raw))
    async with sessions() as session:
        principal = await load_principal(session, user_id)
    if principal is not None:
        with suppress(RedisError):
            await redis.eval(
                _SET_IF_VERSION,
                2,
                key,
                version_key,
                json.dumps(asdict(principal)),
                (version or b"").decode(),
                PRINCIPAL_TTL_SECONDS,
            )  # type: ignore[misc]
    return principal


async def forget_principal(redis: Redis, user_id: int) -> None:
    """Drop the cached Principal after a committed change to the user's role or status."""
    key, version_key = _keys(user_id)
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.incr(version_key)
            pipe.expire(version_key, 24 * 3600)
            pipe.delete(key)
            await pipe.execute()
    except RedisError as exc:  # the TTL bounds how long the old role can linger
        logging.getLogger(__name__).error("could not forget principal %s: %s", user_id, exc)
