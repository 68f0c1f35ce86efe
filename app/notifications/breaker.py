"""A circuit breaker per provider (email, sms), its state in Redis so all workers share it.

Closed: messages go out; each transient failure counts, a success resets the count, and
a quiet minute forgets it. After `threshold` failures in a row it opens: for `cooldown`
seconds no worker calls the provider, and send jobs wait (they re-schedule themselves for
the end of the cooldown without using up an attempt) instead of hammering a provider that
is down. Then one caller gets the probe; its success closes the breaker, its failure
opens it for another cooldown. Each step is one Lua script, so workers never race.

If Redis is unreachable the breaker lets messages through: it protects the provider, and
must never be the reason a reminder is not sent.

Each failure's error is kept for a day beside the breaker (a success does not erase it), so
the notifications page and /metrics can show what the provider last said (`read_state`).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

KEY = "medbook:breaker:{}"
LAST_ERROR_KEY = "medbook:breaker:{}:last_error"
PROVIDERS = ("email", "sms")
LAST_ERROR_KEEP_MS = 86_400_000
LAST_ERROR_CHARS = 300
FAILURE_WINDOW_MS = 60_000
OPEN_KEEP_MS = 3_600_000  # an open breaker nobody probes is forgotten after an hour
# A worker that just found the breaker closed, with no failures counted, believes it for
# this long without asking Redis again (a worker notices another's opening within it).
TRUST_CLOSED_SECONDS = 1.0

_CHECK = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'open' then
  return {1, tonumber(redis.call('HGET', KEYS[1], 'failures') or '0')}
end
local now = tonumber(ARGV[1])
local reopen = tonumber(redis.call('HGET', KEYS[1], 'until'))
if now < reopen then return {0, reopen} end
local probe = tonumber(redis.call('HGET', KEYS[1], 'probe') or '0')
if probe > now then return {0, probe} end
redis.call('HSET', KEYS[1], 'probe', now + tonumber(ARGV[2]))
return {2, 0}
"""
_FAILURE = """
local now = tonumber(ARGV[1])
redis.call('HSET', KEYS[2], 'at', now, 'error', ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
if redis.call('HGET', KEYS[1], 'state') == 'open' then
  local reopen = tonumber(redis.call('HGET', KEYS[1], 'until'))
  if now >= reopen then
    redis.call('HSET', KEYS[1], 'until', now + tonumber(ARGV[3]), 'probe', 0)
    redis.call('PEXPIRE', KEYS[1], ARGV[5])
  end
  return 'open'
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if failures >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', now + tonumber(ARGV[3]), 'probe', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return 'opened'
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 'closed'
"""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    probe: bool = False  # this caller is the one probing a half-open breaker
    retry_at: float | None = None  # epoch seconds to wait until, when not allowed


class Breaker:
    def __init__(
        self, redis: Redis, name: str, *, threshold: int, cooldown: float, probe_ttl: float
    ) -> None:
        self.redis = redis
        self.name = name
        self.key = KEY.format(name)
        self.last_error_key = LAST_ERROR_KEY.format(name)
        self.threshold = threshold
        self.cooldown_ms = int(cooldown * 1000)
        self.probe_ttl_ms = int(probe_ttl * 1000)
        self._check = redis.register_script(_CHECK)
        self._failure = redis.register_script(_FAILURE)
        self._trusted_until = 0.0  # monotonic
        self._dirty = False  # failures or a probe seen: a success must reset Redis

    async def check(self, now: float) -> Decision:
        """May this caller send now? (`now` in epoch seconds)"""
        if not self._dirty and time.monotonic() < self._trusted_until:
            return Decision(True)
        try:
            verdict, until = await self._check(
                keys=[self.key], args=[int(now * 1000), self.probe_ttl_ms]
            )
        except RedisError as exc:
            log.warning("breaker %s unavailable, sending anyway: %s", self.name, exc)
            return Decision(True)
        if int(verdict) == 0:
            return Decision(False, retry_at=int(until) / 1000)
        if int(verdict) == 2:
            self._dirty = True
            return Decision(True, probe=True)
        self._dirty = int(until) > 0  # failures counted so far
        self._trusted_until = time.monotonic() + TRUST_CLOSED_SECONDS
        return Decision(True)

    async def success(self) -> None:
        """Close the breaker and reset its count (one Redis call only when needed)."""
        if not self._dirty:
            return
        try:
            await self.redis.delete(self.key)
            self._dirty = False
        except RedisError as exc:
            log.warning("breaker %s: could not record a success: %s", self.name, exc)

    async def failure(self, now: float, error: str = "") -> str:
        """Count a transient failure (`error`: what the provider said); returns `closed`,
        `opened` (just now) or `open`."""
        self._dirty, self._trusted_until = True, 0.0
        try:
            state = await self._failure(
                keys=[self.key, self.last_error_key],
                args=[
                    int(now * 1000),
                    self.threshold,
                    self.cooldown_ms,
                    FAILURE_WINDOW_MS,
                    max(OPEN_KEEP_MS, self.cooldown_ms * 10),
                    error[:LAST_ERROR_CHARS],
                    LAST_ERROR_KEEP_MS,
                ],
            )
        except RedisError as exc:
            log.warning("breaker %s: could not record a failure: %s", self.name, exc)
            return "closed"
        state = state.decode() if isinstance(state, bytes) else str(state)
        if state == "opened":
            log.warning("breaker %s opened after %d failures", self.name, self.threshold)
        return state

    async def state(self) -> str:
        """`closed` or `open` (for pages, metrics and tests)."""
        raw = await self.redis.hget(self.key, "state")  # type: ignore[misc]
        return "open" if raw in (b"open", "open") else "closed"


@dataclass(frozen=True, slots=True)
class BreakerState:
    """A provider's breaker as an admin sees it."""

    name: str
    state: str  # closed, open, or half_open (cooldown over: the next message probes)
    open_until: dt.datetime | None
    failures: int  # transient failures in a row while closed
    last_error: str | None
    last_error_at: dt.datetime | None


async def read_state(redis: Redis, name: str, now: float) -> BreakerState:
    """The breaker of provider `name` (`now` in epoch seconds). Raises RedisError."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(KEY.format(name))
        pipe.hgetall(LAST_ERROR_KEY.format(name))
        breaker, last = (_texts(h) for h in await pipe.execute())
    state, open_until = "closed", None
    if breaker.get("state") == "open":
        until = int(breaker["until"]) / 1000
        open_until = dt.datetime.fromtimestamp(until, dt.UTC)
        state = "open" if now < until else "half_open"
    at = last.get("at")
    return BreakerState(
        name,
        state,
        open_until,
        int(breaker.get("failures", 0)),
        last.get("error") or None,
        dt.datetime.fromtimestamp(int(at) / 1000, dt.UTC) if at else None,
    )


def _texts(values: dict[bytes | str, bytes | str]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in values.items()
    }
