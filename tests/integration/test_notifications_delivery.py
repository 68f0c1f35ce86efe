"""Delivery end to end: bookings through the API, the real SAQ worker, a real SMTP server
(aiosmtpd) and a real HTTP SMS endpoint; retries, dead letters, the breaker, a Redis flush
and daylight-saving days.

The dispatcher is the cron's function; where a test needs "the clock reaches a reminder's
due time" it calls it with that `now` (what the cron does at that minute) instead of
waiting a day. Nothing in PostgreSQL is rewritten to fake it.
"""

import datetime as dt
import itertools
import os
import re
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, update

from app import notifications
from app.booking import BookingRules, book
from app.breaker import Breaker
from app.effects import Effects
from app.identity import Principal
from db.models import AuditEvent, Notification, Patient
from tasks.reminders import dispatch
from tests.integration.notification_servers import (
    SmsApi,
    SmtpSink,
    eventually,
    notify_settings,
    running_worker,
)
from tests.integration.world import BERLIN, at, day_after_tomorrow, make_world

NEW_YORK = ZoneInfo("America/New_York")


@pytest.fixture
async def world(client, session, settings):
    world = await make_world(session, settings.secret_key, patients=3)
    contacts = [
        ("ann@patients.test", None, "email"),
        ("bob@patients.test", "+4930123456", "sms"),
        ("cy@patients.test", "+4930654321", "email"),
    ]
    for patient_id, (email, phone, notify_by) in zip(world.patients, contacts, strict=True):
        await session.execute(
            update(Patient)
            .where(Patient.id == patient_id)
            .values(email=email, phone=phone, notify_by=notify_by)
        )
    await session.commit()
    return world


async def book_api(client, world, start, who="patient0"):
    response = await client.post(
        "/api/appointments",
        json={"doctor_id": world.doctor_id, "start": start.isoformat()},
        headers=world.headers(who),
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def outbox(session, **where):
    query = select(Notification).order_by(Notification.id)
    for name, value in where.items():
        query = query.where(getattr(Notification, name) == value)
    return list(await session.scalars(query.execution_options(populate_existing=True)))


def ics_field(ics: str, name: str) -> str:
    unfolded = ics.replace("\r\n ", "")
    match = re.search(rf"^{name}:(.*)\r$", unfolded, re.M)
    assert match, f"{name} missing from {ics!r}"
    return match.group(1)


def when_text(start: dt.datetime, tz: ZoneInfo, name: str) -> str:
    local = start.astimezone(tz)
    return f"{local:%A} {local.day} {local:%B %Y}, {local:%H:%M} {local.tzname()} ({name})"


async def test_email_confirmation_reminders_and_notice_reach_a_real_smtp_server(
    client, world, session, settings, engine, monkeypatch
):
    day = day_after_tomorrow()
    start = at(day, 10)
    with SmtpSink() as sink:
        worker_settings = notify_settings(settings, smtp_host="127.0.0.1", smtp_port=sink.port)
        async with running_worker(worker_settings, monkeypatch) as worker:
            appointment_id = await book_api(client, world, start)
            # No cron involved: the booking's after-commit nudge dispatches at once.
            await eventually(lambda: _count(sink, 1))
            for kind, expected in (("reminder_24h", 2), ("reminder_1h", 3)):
                (row,) = await outbox(session, kind=kind)
                await dispatch(engine, worker.queue, worker_settings, now=row.due_at)
                await eventually(lambda n=expected: _count(sink, n))
            cancelled = await client.patch(
                f"/api/appointments/{appointment_id}",
                json={"status": "cancelled"},
                headers=world.headers("patient0"),
            )
            assert cancelled.status_code == 200
            await eventually(lambda: _count(sink, 4))

    confirmation, day_before, hour_before, notice = sink.messages
    when = when_text(start, BERLIN, "Europe/Berlin")
    for message in sink.messages:
        assert message.to == ["ann@patients.test"]
        assert message.message["From"] == "Clinic Reminders <reminders@medbook.test>"
        assert when in message.text and when in message.html
        assert "Dr. Berlin" in message.text and "Berlin" in message.text
        assert "https://medbook.test/me/appointments" in message.text
        assert "Patient 0" not in message.text  # nothing about the patient beyond the address
        ics = message.ics
        assert ics_field(ics, "DTSTART") == start.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        assert ics_field(ics, "UID").startswith(f"appointment-{appointment_id}@")
    assert confirmation.message["Subject"].startswith("Appointment confirmed")
    assert "is confirmed" in confirmation.text
    assert "tomorrow" in day_before.text and "in one hour" in hour_before.text
    assert "has been cancelled" in notice.text
    assert ics_field(confirmation.ics, "STATUS") == "CONFIRMED"
    assert ics_field(notice.ics, "STATUS") == "CANCELLED"
    # The day-before reminder went out when its row was due: same wall time, day before.
    rows = {n.kind: n for n in await outbox(session)}
    assert rows["reminder_24h"].due_at.astimezone(BERLIN) == at(day - dt.timedelta(days=1), 10)
    for kind, message in zip(
        ("confirmation", "reminder_24h", "reminder_1h", "cancellation"), sink.messages, strict=True
    ):
        assert rows[kind].status == "sent" and rows[kind].attempts == 1
        assert rows[kind].provider_message_id == message.message["Message-ID"]
    assert len(set(sink.by_message_id())) == 4


async def _count(sink, n):
    assert len(sink.messages) <= n, "more messages than rows"
    return len(sink.messages) == n


async def test_sms_fails_three_times_then_succeeds_with_growing_gaps(
    client, world, session, settings, monkeypatch
):
    with SmsApi() as api:
        api.fail_next = 3
        worker_settings = notify_settings(
            settings, sms_api_url=api.url, sms_account="AC1", sms_token="t0k", sms_from="+1555"
        )
        async with running_worker(worker_settings, monkeypatch):
            await book_api(client, world, at(day_after_tomorrow(), 10), who="patient1")
            await eventually(lambda: _sent(session, "confirmation"), timeout=30)
    times = [t for t, _, _ in api.requests]
    assert len(times) == 4 and len(api.delivered) == 1
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # base 1 s doubling, ±25 % jitter; SAQ's scheduler ticks once a second.
    for gap, planned in zip(gaps, (1, 2, 4), strict=True):
        assert 0.75 * planned - 0.05 <= gap <= 1.25 * planned + 1.3, gaps
    assert gaps[0] < gaps[2] and gaps[1] < gaps[2], gaps
    (row,) = await outbox(session, kind="confirmation")
    assert row.attempts == 4 and row.last_error is None
    (message,) = api.delivered.values()
    assert row.provider_message_id == message["sid"]
    assert message["to"] == "+4930123456"
    assert message["body"].startswith("medbook: Appointment confirmed: ")
    assert "Dr. Berlin" in message["body"] and "/me/appointments" in message["body"]
    _, form, headers = api.requests[-1]
    assert form["From"] == "+1555"
    assert headers["idempotency-key"] == f"medbook-notification-{row.id}"
    assert headers["authorization"].startswith("Basic ")


async def _sent(session, kind):
    rows = await outbox(session, kind=kind)
    return rows and all(r.status == "sent" for r in rows)


async def test_always_failing_sms_goes_dead_then_retry_and_discard_from_the_undelivered_page(
    client, world, session, settings, monkeypatch
):
    await session.execute(
        update(Patient).where(Patient.id == world.patients[2]).values(notify_by="sms")
    )
    await session.commit()
    with SmsApi() as api:
        api.always_fail = True
        worker_settings = notify_settings(
            settings,
            sms_api_url=api.url,
            sms_account="AC1",
            sms_token="t0k",
            notify_max_attempts=5,
            notify_retry_base_seconds=0.3,
            notify_breaker_threshold=100,
        )
        async with running_worker(worker_settings, monkeypatch):
            day = day_after_tomorrow()
            await book_api(client, world, at(day, 10), who="patient1")
            await book_api(client, world, at(day, 11), who="patient2")

            async def both_dead():
                rows = await outbox(session, kind="confirmation")
                return all(r.status == "dead" for r in rows) and rows

            first, second = await eventually(both_dead, timeout=40)
            assert first.attempts == second.attempts == 5
            assert "503" in (first.last_error or "")
            assert len(api.requests) == 10 and api.delivered == {}

            admin = world.headers("admin")
            listed = await client.get("/api/notifications/undelivered", headers=admin)
            assert listed.status_code == 200
            assert {r["id"] for r in listed.json()} == {first.id, second.id}
            page = await client.get("/admin/notifications", headers=admin)
            assert page.status_code == 200
            assert f'action="/admin/notifications/{first.id}/retry"' in page.text
            assert "Patient 1" in page.text and "503" in page.text
            desk = await client.get("/api/notifications/undelivered", headers=world.headers("desk"))
            assert desk.status_code == 403

            api.always_fail = False
            retried = await client.post(f"/api/notifications/{first.id}/retry", headers=admin)
            assert retried.status_code == 201, retried.text
            discarded = await client.post(
                f"/admin/notifications/{second.id}/discard", headers=admin
            )
            assert discarded.status_code == 200  # followed the redirect to the page
            assert f"Message {second.id} was discarded" in discarded.text
            await eventually(lambda: _status(session, first.id, "sent"))
            again = await client.post(f"/api/notifications/{first.id}/retry", headers=admin)
            assert again.status_code == 404  # no longer dead
    assert len(api.delivered) == 1
    assert (await _row(session, second.id)).status == "void"
    actions = set(await session.scalars(select(AuditEvent.action)))
    assert {"notification.retried", "notification.discarded"} <= actions


async def _row(session, notification_id):
    (row,) = await outbox(session, id=notification_id)
    return row


async def _status(session, notification_id, status):
    return (await _row(session, notification_id)).status == status


async def test_breaker_opens_while_the_sms_provider_is_down_then_a_probe_closes_it(
    client, world, session, settings, monkeypatch, redis
):
    for patient_id in world.patients:
        await session.execute(
            update(Patient)
            .where(Patient.id == patient_id)
            .values(notify_by="sms", phone=f"+49301000{patient_id}")
        )
    await session.commit()
    api = SmsApi()  # not started: connection refused
    worker_settings = notify_settings(
        settings,
        sms_api_url=api.url,
        sms_account="AC1",
        sms_token="t0k",
        notify_breaker_threshold=3,
        notify_breaker_cooldown_seconds=3.0,
        notify_retry_base_seconds=0.5,
    )
    breaker = Breaker(redis, "sms", threshold=3, cooldown=3, probe_ttl=5)
    try:
        async with running_worker(worker_settings, monkeypatch):
            day = day_after_tomorrow()
            for i, who in enumerate(("patient0", "patient1", "patient2", "patient0", "patient1")):
                await book_api(client, world, at(day, 10 + i), who=who)

            async def is_open():
                return await breaker.state() == "open"

            await eventually(is_open, timeout=20, interval=0.05)
            attempts_when_open = await session.scalar(
                select(func.sum(Notification.attempts)).execution_options(populate_existing=True)
            )
            assert attempts_when_open <= 4  # the threshold, plus one already in flight
            api.start()  # the provider is back; only a probe finds out, after the cooldown
            await eventually(lambda: _sent(session, "confirmation"), timeout=30)
    finally:
        api.stop()
    rows = await outbox(session, kind="confirmation")
    assert len(rows) == 5 and len(api.delivered) == 5
    # Waiting rows did not burn attempts: every row has its one success, and at most the
    # failures before the breaker opened (and a failed probe) on top.
    assert sum(r.attempts for r in rows) <= 5 + 4 + 1
    assert await breaker.state() == "closed"


async def test_a_redis_flush_with_reminders_pending_loses_nothing(
    client, world, session, settings, engine, monkeypatch, redis
):
    day = day_after_tomorrow()
    with SmtpSink() as sink, SmsApi() as api:
        worker_settings = notify_settings(
            settings,
            smtp_host="127.0.0.1",
            smtp_port=sink.port,
            sms_api_url=api.url,
            sms_account="AC1",
            sms_token="t0k",
        )
        async with running_worker(worker_settings, monkeypatch):
            for i, who in enumerate(("patient0", "patient1", "patient2")):
                await book_api(client, world, at(day, 10 + i), who=who)
            await eventually(lambda: _sent(session, "confirmation"))
        # No worker now. The day-before reminders fall due: the cron claims them and
        # enqueues their jobs, then Redis loses everything (flush, restart, failover).
        due_24h = max(r.due_at for r in await outbox(session, kind="reminder_24h"))
        from tasks.queue import create_queue

        queue = create_queue(worker_settings)
        await queue.connect()
        try:
            claimed = await dispatch(engine, queue, worker_settings, now=due_24h)
        finally:
            await queue.disconnect()
        assert claimed["claimed"] == 3
        assert {r.status for r in await outbox(session, kind="reminder_24h")} == {"queued"}
        await redis.flushdb()
        await redis.set("medbook:test-run", os.getpid(), ex=3 * 3600)  # keep our claim
        assert await redis.dbsize() == 1
        async with running_worker(worker_settings, monkeypatch) as worker:
            # The cron at a later minute (after the claims' lease) takes them again.
            later = due_24h + dt.timedelta(seconds=worker_settings.notify_lease_seconds + 1)
            assert (await dispatch(engine, worker.queue, worker_settings, now=later))[
                "claimed"
            ] == 3
            await eventually(lambda: _sent(session, "reminder_24h"))
            due_1h = max(r.due_at for r in await outbox(session, kind="reminder_1h"))
            await dispatch(engine, worker.queue, worker_settings, now=due_1h)
            await eventually(lambda: _sent(session, "reminder_1h"))
    # Every row delivered exactly once: 2 email patients x 3 messages, 1 SMS patient x 3.
    assert len(sink.messages) == 6 and max(sink.by_message_id().values()) == 1
    assert len(api.delivered) == 3 and len(api.requests) == 3


@pytest.mark.parametrize(
    ("zone", "day", "clinic"),
    [
        (BERLIN, dt.date(2027, 3, 28), "berlin"),  # spring forward: 23 h before
        (BERLIN, dt.date(2027, 10, 31), "berlin"),  # fall back: 25 h before
        (NEW_YORK, dt.date(2027, 3, 14), "new_york"),
        (NEW_YORK, dt.date(2027, 11, 7), "new_york"),
    ],
)
async def test_reminders_around_daylight_saving_changes_land_at_the_right_local_time(
    client, world, session, settings, engine, monkeypatch, redis, zone, day, clinic
):
    start = dt.datetime.combine(day, dt.time(9), tzinfo=zone)
    doctor = world.doctor_id if clinic == "berlin" else world.other_doctor_id
    actor = Principal(
        id=world.users["patient0"].id,
        email="p0@t.test",
        role="patient",
        patient_id=world.patients[0],
    )
    booked_at = start - dt.timedelta(days=3)
    rules = BookingRules(dt.timedelta(hours=1), dt.timedelta(days=3650), 3)
    result = await book(
        session, Effects(redis), actor, doctor_id=doctor, start=start, rules=rules, now=booked_at
    )
    rows = {n.kind: n for n in await outbox(session, appointment_id=result.appointment.id)}
    day_before = rows["reminder_24h"].due_at
    hour_before = rows["reminder_1h"].due_at
    assert day_before.astimezone(zone) == dt.datetime.combine(
        day - dt.timedelta(days=1), dt.time(9), tzinfo=zone
    )
    expected_gap = 23 if day.month == 3 else 25
    assert start - day_before == dt.timedelta(hours=expected_gap)
    assert start - hour_before == dt.timedelta(hours=1)

    with SmtpSink() as sink:
        worker_settings = notify_settings(settings, smtp_host="127.0.0.1", smtp_port=sink.port)
        async with running_worker(worker_settings, monkeypatch) as worker:
            # The cron's run in the minute the reminder falls due (the confirmation, due
            # at the booking three days earlier, goes out in the same run).
            await dispatch(engine, worker.queue, worker_settings, now=day_before)
            await eventually(lambda: _count(sink, 2))
            assert not await _sent(session, "reminder_1h")
            await dispatch(engine, worker.queue, worker_settings, now=hour_before)
            await eventually(lambda: _count(sink, 3))
    reminder = next(m for m in sink.messages if "tomorrow" in m.text)
    name = "Europe/Berlin" if zone is BERLIN else "America/New_York"
    assert when_text(start, zone, name) in reminder.text
    assert start.tzname() in reminder.message["Subject"]


def test_backoff_grows_and_stays_within_its_jitter():
    import random

    rng = random.Random(7)
    for attempt in range(1, 8):
        for _ in range(50):
            delay = notifications.backoff(attempt, 30, 1800, rng)
            planned = min(1800, 30 * 2 ** (attempt - 1))
            assert 0.75 * planned <= delay <= 1.25 * planned


async def test_embedded_mode_fills_the_dev_mailbox_and_server_mode_never_drops_silently(
    client, world, session, settings, monkeypatch
):
    from db.models import DevMessage

    mailbox_settings = notify_settings(settings, notify_dev_mailbox=True)
    async with running_worker(mailbox_settings, monkeypatch):
        await book_api(client, world, at(day_after_tomorrow(), 10), who="patient0")
        await book_api(client, world, at(day_after_tomorrow(), 11), who="patient1")
        await eventually(lambda: _sent(session, "confirmation"))
    stored = list(await session.scalars(select(DevMessage).order_by(DevMessage.id)))
    assert {(m.channel, m.recipient) for m in stored} == {
        ("email", "ann@patients.test"),
        ("sms", "+4930123456"),
    }
    email = next(m for m in stored if m.channel == "email")
    assert "is confirmed" in email.body_text and "BEGIN:VEVENT" in (email.ics or "")
    page = await client.get("/admin/mailbox", headers=world.headers("admin"))
    assert page.status_code == 200
    assert "ann@patients.test" in page.text and "+4930123456" in page.text
    assert (await client.get("/admin/mailbox", headers=world.headers("desk"))).status_code == 403

    # Server mode without SMTP: the row is dead at once, with the reason, on the page.
    bare = notify_settings(settings, notify_dev_mailbox=False)
    async with running_worker(bare, monkeypatch):
        await book_api(client, world, at(day_after_tomorrow(), 12), who="patient2")

        async def dead():
            rows = [r for r in await outbox(session, kind="confirmation") if r.status == "dead"]
            return rows

        (row,) = await eventually(dead)
    assert row.attempts == 1 and "SMTP_HOST" in (row.last_error or "")
