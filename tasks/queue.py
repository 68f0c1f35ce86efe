"""The SAQ queue shared by the web app (which enqueues) and the worker (which runs).

SAQ's `Queue.from_url` picks its backend by scheme and refuses the embedded Redis's
`unix://` URL, and its own client has no timeouts or retries. So we build the clients
ourselves (app/redis.py's options) and hand them to SAQ's `RedisQueue`:

- commands (enqueue, job updates, stats): `REDIS_TIMEOUT` per reply, retried on connection
  errors and time-outs, like the web app's client;
- the worker's blocking pop: SAQ waits in `BLMOVE queued active <timeout>` (BRPOPLPUSH
  before Redis 6.2), and the worker passes `dequeue_timeout`, 0 by default, which blocks
  for ever. A reply timeout shorter than the block would cut every idle wait. We cap each
  block at `DEQUEUE_BLOCK_SECONDS` (the worker simply asks again when it ends empty) and
  give this client a reply timeout `REDIS_TIMEOUT` longer than that; it is retried on
  connection errors only, since a pop whose reply was lost has already moved its job;
- the pub/sub listener (`queue.listen`, `job.refresh(until_complete=…)`): waits for
  messages with no timeout, as a subscriber must.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from saq.job import Job
from saq.queue.redis import ID_PREFIX, PubSubMultiplexer, RedisQueue

from app.redis import client_options, redis_from_url
from app.settings import Settings

QUEUE_NAME = "medbook"

# The longest one BLMOVE blocks. Short enough that a worker whose connection was cut
# silently notices within seconds; long enough that an idle worker costs nothing.
DEQUEUE_BLOCK_SECONDS = 5.0


class MedbookQueue(RedisQueue):
    """SAQ's Redis queue over three clients of our own (see the module docstring)."""

    def __init__(self, commands: Redis, blocking: Redis, listener: Redis, name: str) -> None:
        super().__init__(commands, name=name)
        self.blocking_redis = blocking
        self.listener_redis = listener
        self._pubsub = PubSubMultiplexer(listener.pubsub(), prefix=f"{ID_PREFIX}{self.name}")

    async def dequeue(
        self,
        timeout: float = 0.0,  # noqa: ASYNC109 - SAQ's signature
        poll_interval: float = 0.0,
    ) -> Job | None:
        """SAQ's dequeue, on the blocking client, never blocking past DEQUEUE_BLOCK_SECONDS
        (0, SAQ's "for ever", becomes that cap); None when nothing came."""
        block = DEQUEUE_BLOCK_SECONDS if timeout <= 0 else min(timeout, DEQUEUE_BLOCK_SECONDS)
        client: Any = self.blocking_redis  # redis-py's stubs mix its sync and async types
        if await self.version() < (6, 2, 0):
            job_id = await client.brpoplpush(self._queued, self._active, block)
        else:
            job_id = await client.blmove(self._queued, self._active, block, "LEFT", "RIGHT")
        if job_id is None:
            return None
        return await self._get_job_by_id(job_id)

    async def disconnect(self) -> None:
        await super().disconnect()
        for client in (self.blocking_redis, self.listener_redis):
            await client.aclose()
            await client.connection_pool.disconnect()


def create_queue(settings: Settings) -> MedbookQueue:
    url, timeout = settings.redis_url, settings.redis_timeout
    return MedbookQueue(
        commands=redis_from_url(url, **client_options(settings, socket_timeout=timeout)),
        blocking=redis_from_url(
            url,
            **client_options(
                settings,
                socket_timeout=DEQUEUE_BLOCK_SECONDS + timeout,
                retry_on_timeout=False,
            ),
        ),
        listener=redis_from_url(url, **client_options(settings, socket_timeout=None)),
        name=QUEUE_NAME,
    )
