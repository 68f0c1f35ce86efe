"""The process's Redis client, with explicit timeouts and retries."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from app.settings import Settings


def create_redis(settings: Settings) -> Redis:
    """A pooled client. Redis holds nothing that cannot be rebuilt, so calls fail fast
    (a few retries within about a second) instead of hanging a request."""
    return Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=30,
        max_connections=100,
    )
