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

import logging
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from saq.job import Job, Status
from saq.queue.redis import ID_PREFIX, PubSubMultiplexer, RedisQueue
from saq.utils import now

from app.redis import client_options, redis_from_url
from app.settings import Settings

QUEUE_NAME = "medbook"

# The longest one BLMOVE blocks. Short enough that a worker whose connection was cut
# silently notices within seconds; long enough that an idle worker costs nothing.
DEQUEUE_BLOCK_SECONDS = 5.0

# SAQ's own enqueue script (saq/queue/redis.py, `RedisQueue._enqueue`, saq 0.26): store
# and queue the job unless a job of its key is incomplete or its abort is pending.
_ENQUEUE_SCRIPT = """
if not redis.call('ZSCORE', KEYS[1], KEYS[2]) and redis.call('EXISTS', KEYS[4]) == 0 then
    redis.call('SET', KEYS[2], ARGV[1])
    redis.call('ZADD', KEYS[1], ARGV[2], KEYS[2])
    if ARGV[2] == '0' then redis.call('RPUSH', KEYS[3], KEYS[2]) end
    return 1
else
    return nil
end
"""
_saq_log = logging.getLogger("saq")


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

    def enqueue_on(self, pipe: Pipeline, function: str, **kwargs: Any) -> Job:
        """SAQ's `enqueue(function, **kwargs)` as one command queued on `pipe`, a pipeline
        of another client of the same Redis (the web app's after-commit pipeline,
        app/live/effects.py): the ask rides a round trip made anyway instead of one of its
        own. The same job, keys and script as SAQ's enqueue, so a job whose key is still
        incomplete is dropped as there; no before-enqueue hooks (medbook registers none).
        The script goes as EVAL, not EVALSHA: a pipeline cannot load it on NOSCRIPT."""
        fields = Job.__dataclass_fields__
        job = Job(
            function=function,
            **{k: v for k, v in kwargs.items() if k in fields},
            kwargs={k: v for k, v in kwargs.items() if k not in fields} or None,
        )
        job.queue = self
        job.queued = now()
        job.status = Status.QUEUED
        keys = (self._incomplete, job.id, self._queued, job.abort_id)
        pipe.eval(_ENQUEUE_SCRIPT, len(keys), *keys, self.serialize(job), job.scheduled)
        if _saq_log.isEnabledFor(logging.INFO):  # SAQ's line, and only when it is logged
            _saq_log.info("Enqueuing %s", job.info(_saq_log.isEnabledFor(logging.DEBUG)))
        return job

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
