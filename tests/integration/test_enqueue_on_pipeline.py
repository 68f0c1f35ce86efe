"""SAQ's enqueue queued on another client's pipeline (tasks/queue.py `enqueue_on`), as the
after-commit effects ask for a dispatch: the job SAQ dequeues is the one its own enqueue
makes, a job whose key is still incomplete is dropped as there, and a change to an
appointment asks in the same round trip as its cache invalidation. Real Redis."""

from saq.job import Status

from tasks.queue import create_queue
from tasks.reminders import dispatch_job
from tests.integration.notification_world import book_api
from tests.integration.world import at, day_after_tomorrow, make_world

FIELDS = ("function", "key", "timeout", "retries", "retry_delay", "ttl", "kwargs", "status")


async def test_the_job_is_the_one_saqs_enqueue_makes_and_an_incomplete_key_drops_it(
    redis, settings
):
    queue = create_queue(settings)
    await queue.connect()
    try:
        own = await queue.enqueue("refill_waitlist", key="own", timeout=120, doctor_id=7)
        async with redis.pipeline(transaction=False) as pipe:
            queue.enqueue_on(pipe, "refill_waitlist", key="piped", timeout=120, doctor_id=7)
            queue.enqueue_on(pipe, "refill_waitlist", key="piped", timeout=60, doctor_id=8)
            queue.enqueue_on(pipe, "refill_waitlist", key="own", timeout=120, doctor_id=9)
            assert await pipe.execute() == [1, None, None]
        first = await queue.dequeue(timeout=1)
        piped = await queue.dequeue(timeout=1)
        assert await queue.dequeue(timeout=0.1) is None  # the two dropped were never queued
    finally:
        await queue.disconnect()
    assert own is not None and first is not None and piped is not None
    assert first.key == "own" and piped.key == "piped"
    assert [getattr(piped, f) for f in FIELDS] == [
        getattr(own, f) if f != "key" else "piped" for f in FIELDS
    ]
    assert piped.kwargs == {"doctor_id": 7}
    assert piped.status == Status.QUEUED
    assert piped.queued > 0


async def test_a_booking_and_its_cancel_ask_for_a_dispatch_in_the_invalidations_round_trip(
    client, session, settings, redis, monkeypatch
):
    world = await make_world(session, settings.secret_key, patients=1)
    sent: list[list[str]] = []
    pipeline = type(redis.pipeline())
    real = pipeline.execute

    async def execute(pipe, *args, **kwargs):  # type: ignore[no-untyped-def]
        sent.append([command[0][0] for command in pipe.command_stack])
        return await real(pipe, *args, **kwargs)

    monkeypatch.setattr(pipeline, "execute", execute)
    appointment_id = await book_api(client, world, at(day_after_tomorrow(), 10))
    # One round trip: the day's invalidation, the live updates and the ask.
    [booked] = sent
    assert booked[:3] == ["INCRBY", "EXPIRE", "DEL"] and booked[-1] == "EVAL"
    [key] = await redis.zrange("saq:medbook:incomplete", 0, -1)
    assert key.decode().startswith("saq:job:medbook:notify:dispatch:")
    assert dispatch_job()["key"].startswith("notify:dispatch:")

    sent.clear()
    await redis.delete("saq:medbook:incomplete")  # as if the worker had run it
    response = await client.patch(
        f"/api/appointments/{appointment_id}",
        json={"status": "cancelled"},
        headers=world.headers("patient0"),
    )
    assert response.status_code == 200, response.text
    [cancelled] = sent
    assert cancelled[-1] == "EVAL"
    assert await redis.zcard("saq:medbook:incomplete") == 1
