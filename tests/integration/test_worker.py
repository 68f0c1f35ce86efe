"""The SAQ worker runs our jobs against the real Redis."""

from saq import Worker

from tasks.housekeeping import HEARTBEAT_KEY
from tasks.worker import worker_settings


async def test_worker_runs_the_heartbeat_job(redis):
    settings = worker_settings()
    queue = settings.pop("queue")
    settings.pop("cron_jobs")
    await queue.connect()
    try:
        job = await queue.enqueue("heartbeat")
        settings["concurrency"] = 1
        worker = Worker(queue, **settings, burst=True, max_burst_jobs=1, dequeue_timeout=1)
        await worker.start()
        await job.refresh()
        assert job.status == "complete"
        assert await redis.get(HEARTBEAT_KEY) == job.result.encode()
    finally:
        await queue.disconnect()
