"""A SAQ queue of a topology test's own, on the Redis its `medbook worker` uses
(e2e/conftest.py's `Worker`), to enqueue jobs and wait for them."""

from __future__ import annotations

import asyncio
import os
import time

from redis.exceptions import RedisError
from saq.job import Status

from app.settings import load_settings
from tasks.queue import MedbookQueue, create_queue


def job_queue(env: dict[str, str]) -> MedbookQueue:
    """The queue medbook's processes use, from `env` (a `redis+sentinel://` URL too)."""
    return create_queue(load_settings({**os.environ, **env}))


async def wait_for_job(queue: MedbookQueue, key: str, timeout: float = 60) -> float:
    """Until the job `key` has completed (a deadline, not a speed check); the monotonic
    time it was seen complete. Redis errors meanwhile (a failover) are waited out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            job = await queue.job(key)
            if job is not None and job.status == Status.COMPLETE:
                return time.monotonic()
            assert job is None or job.status not in (Status.FAILED, Status.ABORTED), job
        except (RedisError, OSError):  # the primary is away: wait it out
            pass
        assert time.monotonic() < deadline, f"job {key} did not complete in {timeout}s"
        await asyncio.sleep(0.1)
