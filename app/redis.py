"""The process's Redis clients, with explicit timeouts and retries.

`REDIS_URL` may be `redis://`, `rediss://` or `unix:///…/redis.sock?db=N` (the embedded
Redis); redis-py's `from_url` builds the right connection class for each. Or, for Redis
with Sentinel, `redis+sentinel://[:password@]host:26379,host:26379,…/service[/db]`: the
client asks the sentinels for the service's primary at each new connection, and a
connection that fails (a primary killed, or demoted and answering READONLY) is replaced
by one to whichever primary the sentinels name then (docs/deploy.md, "Redis").
"""

from __future__ import annotations

import random
from typing import Any

import redis as redis_sync
import redis.sentinel
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from app.settings import Settings, sentinel_target

# How far a cache entry's lifetime varies around its nominal TTL (each way). Entries
# filled together (every user's Principal and every doctor-day after a start, a deploy or
# a flush) would otherwise expire together, and every request of the next few seconds
# would miss at once: a stall of the whole process every TTL (bench/README.md).
TTL_SPREAD = 0.2


def spread_ttl(seconds: int) -> int:
    """A cache entry's TTL: `seconds`, give or take TTL_SPREAD of it, at random."""
    spread = random.uniform(1 - TTL_SPREAD, 1 + TTL_SPREAD)  # noqa: S311 (not a secret)
    return max(1, round(seconds * spread))


# Seconds between PINGs on a connection that sat idle, so a connection cut by a restart
# or a firewall is noticed before a command is sent on it.
HEALTH_CHECK_INTERVAL = 30


def client_options(
    settings: Settings,
    *,
    socket_timeout: float | None,
    retry_on_timeout: bool = True,
) -> dict[str, Any]:
    """Keyword arguments for `Redis.from_url`: the same connect timeout, retries and health
    checks for every client medbook makes (this module's and SAQ's, tasks/queue.py).

    Args:
        settings: `redis_timeout` bounds connecting (and, by default, each reply).
        socket_timeout: the longest wait for one reply; None waits for ever (only for
            connections that block on purpose, such as a pub/sub listener).
        retry_on_timeout: also retry a command whose reply timed out. Safe for idempotent
            use; not for a blocking pop, whose element may already be moved when the reply
            is lost.
    """
    errors: list[type[Exception]] = [RedisConnectionError]
    if retry_on_timeout:
        errors.append(RedisTimeoutError)
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": settings.redis_timeout,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
        "retry_on_error": errors,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
    }


class ReadyPool(ConnectionPool):
    """redis-py's pool, with a cheaper check of each connection it hands out.

    redis-py checks that a connection has nothing left to read before every command (a
    stale reply, or the server's close) by reading with a zero timeout: a read that
    waits, a timer that cancels it and the exception, two turns of the event loop per
    command (bench/README.md, cpu17c). What the connection has received by the loop's
    last poll is already in its stream's buffer (or its end of stream) and its parser's,
    so looking there finds the same, without the read. A connection with something
    there is closed and opened again, as redis-py does; one not yet connected, or whose
    parser is not hiredis, gets redis-py's own check."""

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        received = _received(connection)
        if received is False:
            return
        if received:
            await connection.disconnect()
        await super().ensure_connection(connection)


def _received(connection: AbstractConnection) -> bool | None:
    """Whether an idle connection has received anything (a stale reply, its end); None
    when it cannot tell without redis-py's read."""
    stream: Any = connection._reader  # redis-py reads its `_buffer` too (`_socket_is_empty`)
    parser: Any = connection._parser
    if (
        stream is None
        or not connection.is_connected
        or not isinstance(parser, _AsyncHiredisParser)
        or parser._reader is None
    ):
        return None
    return bool(
        stream._buffer
        or stream.at_eof()
        or stream.exception() is not None
        or parser._reader.gets() is not NOT_ENOUGH_DATA
    )


def redis_from_url(url: str, **options: Any) -> Redis:
    """`Redis.from_url(url, **options)`, also for a `redis+sentinel://` URL (the primary
    of its service, found through the sentinels). Every asyncio client medbook makes is
    built here: this module's, SAQ's (tasks/queue.py) and broadcaster's (app/live)."""
    target = sentinel_target(url)
    if target is None:
        client = Redis(connection_pool=ReadyPool.from_url(url, **options))
        client.auto_close_connection_pool = True  # as `Redis.from_url`: aclose() closes it
        return client
    sentinel = Sentinel(target.sentinels, sentinel_kwargs=sentinel_options(options))
    return sentinel.master_for(
        target.service, redis_class=Redis, db=target.db, password=target.password, **options
    )


def sync_redis_from_url(url: str, **options: Any) -> redis_sync.Redis:
    """The blocking client's `redis_from_url` (the command line's start-up checks)."""
    target = sentinel_target(url)
    if target is None:
        return redis_sync.Redis.from_url(url, **options)
    sentinel = redis.sentinel.Sentinel(target.sentinels, sentinel_kwargs=sentinel_options(options))
    return sentinel.master_for(target.service, db=target.db, password=target.password, **options)


def sentinel_options(options: dict[str, Any]) -> dict[str, Any]:
    """A sentinel is asked with the clients' connect timeout, and never waited on longer
    than that (a dead sentinel is skipped for the next)."""
    timeout = options.get("socket_connect_timeout") or 2.0
    return {"socket_connect_timeout": timeout, "socket_timeout": timeout}


def create_redis(settings: Settings) -> Redis:
    """A pooled client. Redis holds nothing that cannot be rebuilt, so calls fail fast
    (a few retries within about a second) instead of hanging a request."""
    return redis_from_url(
        settings.redis_url,
        max_connections=100,
        **client_options(settings, socket_timeout=settings.redis_timeout),
    )
