"""Asking for a notification dispatch: one job a second, scheduled for the second's end
(it starts after every ask of its second, so it sees their rows), and one enqueue a
second per process (issue 17: an enqueue after every booking and cancel)."""

import pytest
from saq.job import Status

from tasks import reminders
from tasks.queue import create_queue


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


async def test_one_enqueue_a_second_for_a_job_that_starts_after_the_second(
    redis, settings, monkeypatch
):
    clock = Clock(1_800_000_000.25)
    monkeypatch.setattr(reminders, "time", clock)
    queue = create_queue(settings)
    await queue.connect()
    enqueued = []
    enqueue = queue.enqueue

    async def counted(*args, **kwargs):
        enqueued.append(kwargs["key"])
        return await enqueue(*args, **kwargs)

    monkeypatch.setattr(queue, "enqueue", counted)
    try:
        for at in (0.25, 0.5, 0.99):  # three changes in one second
            clock.now = 1_800_000_000 + at
            await reminders.enqueue_dispatch(queue)
        assert enqueued == ["notify:dispatch:1800000000"]
        job = await queue.job("notify:dispatch:1800000000")
        assert job is not None and job.status == Status.QUEUED
        assert job.scheduled == 1_800_000_001  # after every ask of its second
        clock.now = 1_800_000_001.01  # the next second asks again
        await reminders.enqueue_dispatch(queue)
        assert enqueued == ["notify:dispatch:1800000000", "notify:dispatch:1800000001"]
        # Another process (its own queue) asks for itself.
        other = create_queue(settings)
        await other.connect()
        try:
            await reminders.enqueue_dispatch(other)
            assert len(await redis.zrange("saq:medbook:incomplete", 0, -1)) == 2
        finally:
            await other.disconnect()
    finally:
        await queue.disconnect()


async def test_a_failed_ask_is_made_again(redis, settings, monkeypatch):
    clock = Clock(1_800_000_000.25)
    monkeypatch.setattr(reminders, "time", clock)
    queue = create_queue(settings)
    await queue.connect()
    enqueue = queue.enqueue
    calls = []

    async def failing_once(*args, **kwargs):
        calls.append(kwargs["key"])
        if len(calls) == 1:
            raise ConnectionError("Redis went away")
        return await enqueue(*args, **kwargs)

    monkeypatch.setattr(queue, "enqueue", failing_once)
    try:
        with pytest.raises(ConnectionError):
            await reminders.enqueue_dispatch(queue)
        await reminders.enqueue_dispatch(queue)
        assert len(calls) == 2
        assert await queue.job("notify:dispatch:1800000000") is not None
    finally:
        await queue.disconnect()
