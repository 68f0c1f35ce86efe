"""Rate limits and login throttling on Redis counters (review S-6).

Fixed one-minute windows: INCR, and EXPIRE on the first hit, in one Lua call so a
crash between the two can never leave a counter without expiry. A window lets a client
burst up to its whole minute's allowance, which is what page loads with htmx need.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from redis.asyncio import Redis

from app.errors import DomainError
from app.redis_scripts import Script

WINDOW_SECONDS = 60
FAILURE_MEMORY_SECONDS = 3600  # failed logins are forgotten an hour after the last one
ADDRESS_FACTOR = 4  # an address (maybe a clinic's NAT) gets four accounts' worth of failures

_HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {n, ttl}
"""


@dataclass(frozen=True, slots=True)
class LoginLimits:
    """Failures before a lock, and the longest lock (settings: LOGIN_MAX_FAILURES, …)."""

    max_failures: int
    max_lock_seconds: int


class TooManyAttempts(DomainError):
    """429; `retry_after` (seconds) becomes the Retry-After header."""

    status_code = 429


_hit = Script(_HIT)


async def _incr(redis: Redis, key: str, window: int) -> tuple[int, int]:
    count, ttl = await _hit(redis, [key], [window])
    return int(count), int(ttl)


async def hit(redis: Redis, key: str, limit: int, window: int = WINDOW_SECONDS) -> int | None:
    """Count one request against `key`; seconds to wait when over `limit`, else None.

    A limit of 0 turns the check off.
    """
    if limit <= 0:
        return None
    count, ttl = await _incr(redis, "rl:" + key, window)
    return max(ttl, 1) if count > limit else None


def _account_key(email: str) -> str:
    # Hash the address: Redis keys should not be a list of patients' emails.
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


async def login_lock_remaining(redis: Redis, email: str, client_addr: str | None) -> int:
    """Seconds before this account or address may try to log in again (0: now)."""
    keys = [f"login:lock:acct:{_account_key(email)}"]
    if client_addr:
        keys.append(f"login:lock:addr:{client_addr}")
    return await _lock_remaining(redis, keys)


async def _lock_remaining(redis: Redis, keys: list[str]) -> int:
    if len(keys) == 1:
        ttls = [await redis.ttl(keys[0])]
    else:  # the account's and the address's lock in one round trip, not one each
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.ttl(key)
            ttls = await pipe.execute()
    return max([t for t in ttls if t > 0], default=0)


async def _count_failure(redis: Redis, kind: str, ident: str, threshold: int, max_lock: int) -> int:
    """Count one failure; from the threshold on, lock with a doubling delay (seconds set)."""
    count, _ = await _incr(redis, f"login:fail:{kind}:{ident}", FAILURE_MEMORY_SECONDS)
    if threshold and count >= threshold:
        seconds = min(2 ** (count - threshold + 1), max_lock)
        await redis.set(f"login:lock:{kind}:{ident}", 1, ex=seconds)
        return seconds
    return 0


async def login_failed(
    redis: Redis, email: str, client_addr: str | None, *, max_failures: int, max_lock: int
) -> int:
    """Count a failed login; lock the account (and address) with a doubling delay.

    Returns:
        The seconds of the lock just set, or 0 when below the threshold.
    """
    locked = await _count_failure(redis, "acct", _account_key(email), max_failures, max_lock)
    if client_addr:
        threshold = max_failures * ADDRESS_FACTOR
        locked = max(locked, await _count_failure(redis, "addr", client_addr, threshold, max_lock))
    return locked


async def login_succeeded(redis: Redis, email: str) -> None:
    """Forget the account's failures (not the address's: one success must not unlock a
    guesser who also owns one real account)."""
    key = _account_key(email)
    await redis.delete(f"login:fail:acct:{key}", f"login:lock:acct:{key}")


# Second-factor codes are counted per user on their own: whoever types them already knows
# the password, so a correct password must not reset the count of wrong codes.


async def code_lock_remaining(redis: Redis, user_id: int) -> int:
    """Seconds before this user may try another authentication code (0: now)."""
    return await _lock_remaining(redis, [f"login:lock:code:{user_id}"])


async def code_failed(redis: Redis, user_id: int, *, max_failures: int, max_lock: int) -> int:
    """Count a wrong authentication code; the seconds of the lock just set, or 0."""
    return await _count_failure(redis, "code", str(user_id), max_failures, max_lock)


async def code_succeeded(redis: Redis, user_id: int) -> None:
    await redis.delete(f"login:fail:code:{user_id}", f"login:lock:code:{user_id}")
