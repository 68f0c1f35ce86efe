"""The dispatch job sends a small claim itself (tasks/reminders.py): what one booking or
cancel makes due needs no send job of its own; a larger claim still goes out in send jobs;
and rows that fall due while a dispatch sends (their asks carried its key and were
dropped) are claimed by the same run. Real PostgreSQL, Redis, SAQ worker and SMTP server."""

import datetime as dt
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from saq import Job
from sqlalchemy import event

from tasks import reminders
from tasks.queue import create_queue
from tasks.reminders import dispatch
from tests.integration.notification_servers import (
    SmtpSink,
    eventually,
    notify_settings,
    running_worker,
)
from tests.integration.notification_world import book_api, outbox_rows, world_with_contacts
from tests.integration.world import at, day_after_tomorrow

CONTACTS = [
    ("ann@patients.test", None, "email"),
    ("bob@patients.test", None, "email"),
]
# A send job's key (tasks/reminders.py batch_key): `notify:<first row id>:<digest>`; the
# dispatch asks are `notify:dispatch:<second>`.
SEND_JOBS = "saq:job:medbook:notify:[0-9]*"


@pytest.fixture
async def world(client, session, settings):
    return await world_with_contacts(session, settings.secret_key, CONTACTS)


async def test_a_booking_and_its_cancel_are_sent_by_the_dispatch_without_send_jobs(
    client, world, session, settings, monkeypatch, redis
):
    with SmtpSink() as sink:
        async with running_worker(notify_settings(settings, smtp=sink), monkeypatch):
            appointment_id = await book_api(client, world, at(day_after_tomorrow(), 10))
            await eventually(lambda: _all_sent(session, "confirmation"))
            cancelled = await client.patch(
                f"/api/appointments/{appointment_id}",
                json={"status": "cancelled"},
                headers=world.headers("patient0"),
            )
            assert cancelled.status_code == 200, cancelled.text
            await eventually(lambda: _all_sent(session, "cancellation"))
    subjects = sorted(m.message["Subject"].split(":")[0] for m in sink.messages)
    assert subjects == ["Appointment cancelled", "Appointment confirmed"]
    # A finished job keeps its key for its ttl (600 s for a send job): none ever ran.
    assert await redis.keys(SEND_JOBS) == []
    assert await redis.keys("saq:job:medbook:notify:dispatch:*")


async def test_a_larger_claim_goes_out_in_send_jobs(client, world, session, settings, engine):
    day = day_after_tomorrow()
    for hour, who in ((10, "patient0"), (11, "patient1")):
        await book_api(client, world, at(day, hour), who=who)
    # The clock half an hour before the second visit: two confirmations, four reminders.
    now = at(day, 11) - dt.timedelta(minutes=30)
    sent_inline: list[list[int]] = []

    async def send_now(claims):
        sent_inline.append([c.id for c in claims])

    queue = create_queue(settings)
    await queue.connect()
    try:
        result = await dispatch(engine, queue, settings, now=now, send_now=send_now)
        assert result == {"claimed": 6, "jobs": 1, "inline": 0}
        assert sent_inline == []
        (job,) = await queue.redis.keys(SEND_JOBS)
    finally:
        await queue.disconnect()
    assert reminders.INLINE_SEND_MAX < 6
    assert {r.status for r in await outbox_rows(session, channel="email")} == {"queued"}
    assert job.startswith(b"saq:job:medbook:notify:")


async def test_rows_due_while_a_dispatch_sends_are_claimed_by_the_same_run(
    client, world, session, settings, engine
):
    day = day_after_tomorrow()
    await book_api(client, world, at(day, 10), who="patient0")
    calls: list[list[int]] = []

    async def send_now(claims):
        calls.append([c.id for c in claims])
        if len(calls) == 1:  # another booking commits while the first notice goes out
            await book_api(client, world, at(day, 11), who="patient1")

    queue = create_queue(settings)
    await queue.connect()
    try:
        result = await dispatch(engine, queue, settings, send_now=send_now)
    finally:
        await queue.disconnect()
    first, second = await outbox_rows(session, kind="confirmation")
    assert calls == [[first.id], [second.id]]
    assert result == {"claimed": 2, "jobs": 0, "inline": 2}


async def _all_sent(session, kind):
    rows = await outbox_rows(session, kind=kind)
    return rows and all(r.status == "sent" for r in rows)


async def test_an_asked_dispatch_claims_again_once_its_second_is_over(engine, settings):
    """While the job of an ask's second runs, SAQ drops every other ask of that second (the
    same key): so the job's last claim comes after the second has ended, and the rows of
    an ask it dropped never wait for the minute's cron (a CI flake showed the wait)."""
    second = int(time.time())
    with claim_times(engine) as claims:
        result = await run_dispatch_job(engine, settings, f"{reminders.DISPATCH_KEY}{second}")
    assert result == {"claimed": 0, "jobs": 0, "inline": 0}
    assert claims, "no claim was made"
    assert claims[-1] >= second + 1 + reminders.ASK_CLOCK_MARGIN_SECONDS, (second, claims)


async def test_the_cron_dispatch_claims_once_and_does_not_wait(engine, settings):
    with claim_times(engine) as claims:
        await run_dispatch_job(engine, settings, "cron:dispatch_notifications")
    assert len(claims) == 1  # nothing due: one claim, and no second one after a wait


@contextmanager
def claim_times(engine) -> Iterator[list[float]]:
    """The wall-clock times of the outbox's claim statements on `engine`."""
    times: list[float] = []

    def seen(conn, cursor, statement, *args) -> None:
        if "UPDATE notifications AS n SET status = 'queued'" in statement:
            times.append(time.time())

    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        yield times
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", seen)


async def run_dispatch_job(engine, settings, key: str) -> dict[str, int]:
    """The dispatch job as SAQ's worker runs it, under `key`."""
    queue = create_queue(settings)
    await queue.connect()
    try:
        return await reminders.dispatch_notifications(
            {
                "settings": settings,
                "engine": engine,
                "worker": SimpleNamespace(queue=queue),  # all the job reads of SAQ's worker
                "job": Job("dispatch_notifications", key=key),
            }
        )
    finally:
        await queue.disconnect()
