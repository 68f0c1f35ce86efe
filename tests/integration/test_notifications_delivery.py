"""Delivery end to end: bookings through the API, the real SAQ worker, a real SMTP server
(aiosmtpd) and a real HTTP SMS endpoint; retries, dead letters, the breaker, a Redis flush
and daylight-saving days.

The dispatcher is the cron's function; where a test needs "the clock reaches a reminder's
due time" it calls it with that `now` (what the cron does at that minute) instead of
waiting a day. Nothing in PostgreSQL is rewritten to fake it.
"""

import datetime as dt
import itertools
import re
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, update

from app.access.identity import Principal
from app.appointments.commands import book
from app.appointments.rules import BookingRules
from app.live.effects import Effects
from app.notifications import outbox
from app.notifications.breaker import Breaker
from db.models import AuditEvent, Notification, Patient
from tasks.reminders import dispatch
from tests.integration.notification_servers import (
    SmsApi,
    SmtpSink,
    eventually,
    notify_settings,
    running_worker,
)
from tests.integration.notification_world import (
    book_api,
    cancel_by_leave,
    outbox_rows,
    world_with_contacts,
)
from tests.integration.world import BERLIN, at, day_after_tomorrow

NEW_YORK = ZoneInfo("America/New_York")


CONTACTS = [
    ("ann@patients.test", None, "email"),
    ("bob@patients.test", "+4930123456", "sms"),
    ("cy@patients.test", "+4930654321", "email"),
]


@pytest.fixture
async def world(client, session, settings):
    return await world_with_contacts(session, settings.secret_key, CONTACTS)


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
        worker_settings = notify_settings(settings, smtp=sink)
        async with running_worker(worker_settings, monkeypatch) as worker:
            appointment_id = await book_api(client, world, start)
            # No cron involved: the booking's after-commit nudge dispatches at once.
            await eventually(lambda: _delivered(session, sink, 1))
            for kind, expected in (("reminder_24h", 2), ("reminder_1h", 3)):
                (row,) = await outbox_rows(session, kind=kind)
                await dispatch(engine, worker.queue, worker_settings, now=row.due_at)
                await eventually(lambda n=expected: _delivered(session, sink, n))
            cancelled = await client.patch(
                f"/api/appointments/{appointment_id}",
                json={"status": "cancelled"},
                headers=world.headers("patient0"),
            )
            assert cancelled.status_code == 200
            await eventually(lambda: _delivered(session, sink, 4))

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
    rows = {n.kind: n for n in await outbox_rows(session)}
    assert rows["reminder_24h"].due_at.astimezone(BERLIN) == at(day - dt.timedelta(days=1), 10)
    for kind, message in zip(
        ("confirmation", "reminder_24h", "reminder_1h", "cancellation"), sink.messages, strict=True
    ):
        assert rows[kind].status == "sent" and rows[kind].attempts == 1
        # Our Message-ID and what the server called it ("queued as ...").
        assert rows[kind].provider_message_id == message.provider_id
        assert f"queued as {message.queue_id}" in rows[kind].provider_message_id
    assert len(set(sink.by_message_id())) == 4


def sms_when(start: dt.datetime, tz: ZoneInfo) -> str:
    local = start.astimezone(tz)
    return f"{local:%a} {local.day} {local:%b %H:%M} {local.tzname()}"


async def test_exception_and_cancellation_notices_are_delivered_by_email_and_sms(
    client, world, session, settings, monkeypatch
):
    day = day_after_tomorrow()
    with SmtpSink() as sink, SmsApi() as api:
        worker_settings = notify_settings(settings, smtp=sink, sms=api)
        async with running_worker(worker_settings, monkeypatch):
            by_email = await book_api(client, world, at(day, 10), who="patient0")
            by_sms = await book_api(client, world, at(day, 11), who="patient1")
            own_cancel = await book_api(client, world, at(day, 16), who="patient1")
            await eventually(lambda: _sent(session, "confirmation"))
            cancelled = await client.patch(
                f"/api/appointments/{own_cancel}",
                json={"status": "cancelled"},
                headers=world.headers("patient1"),
            )
            assert cancelled.status_code == 200, cancelled.text
            await eventually(lambda: _sent(session, "cancellation"))
            # The doctor's leave covers 10:00 and 11:00; the admin cancels what it hits.
            await cancel_by_leave(client, world, at(day, 9), at(day, 13))
            await eventually(lambda: _sent(session, "exception"))

    rows = {(n.appointment_id, n.kind): n for n in await outbox_rows(session)}
    assert {key for key, n in rows.items() if n.status == "sent"} == {
        (by_email, "confirmation"),
        (by_sms, "confirmation"),
        (own_cancel, "confirmation"),
        (own_cancel, "cancellation"),
        (by_email, "exception"),
        (by_sms, "exception"),
    }  # everything else (the reminders) became void

    # Email: the exception notice, after the confirmation.
    assert len(sink.messages) == 2
    notice = sink.messages[1]
    assert notice.to == ["ann@patients.test"]
    assert notice.message["Subject"] == (
        f"Appointment cancelled by the clinic: {sms_when(at(day, 10), BERLIN)}"
    )
    when = when_text(at(day, 10), BERLIN, "Europe/Berlin")
    for body in (notice.text, notice.html):
        assert "the doctor is unavailable, so the clinic has cancelled your appointment" in body
        assert when in body and "Dr. Berlin" in body
    assert ics_field(notice.ics, "STATUS") == "CANCELLED"
    assert ics_field(notice.ics, "UID").startswith(f"appointment-{by_email}@")
    assert rows[by_email, "exception"].provider_message_id == notice.provider_id

    # SMS: two confirmations, the patient's own cancellation, then the exception notice.
    sms = sorted(api.delivered.values(), key=lambda m: m["at"])
    assert [m["to"] for m in sms] == ["+4930123456"] * 4
    own, exception = sms[2], sms[3]
    assert own["body"].startswith(
        f"medbook: Appointment cancelled: {sms_when(at(day, 16), BERLIN)}, Dr. Berlin, Berlin."
    )
    assert "To rebook: https://medbook.test/me/appointments" in own["body"]
    assert exception["body"].startswith(
        "medbook: Cancelled by the clinic (doctor unavailable): "
        f"{sms_when(at(day, 11), BERLIN)}, Dr. Berlin, Berlin."
    )
    assert rows[own_cancel, "cancellation"].provider_message_id == own["sid"]
    assert rows[by_sms, "exception"].provider_message_id == exception["sid"]


async def _delivered(session, sink, n):
    """`n` messages at the sink, and `n` rows recorded as sent. The record follows the
    server's answer: a test that moved the clock on (a row's attempt would look lapsed) or
    cancelled while a send is in flight would not test what it means to."""
    assert len(sink.messages) <= n, "more messages than rows"
    return len(sink.messages) == n and len(await outbox_rows(session, status="sent")) == n


# Backoff base of the growing-gaps test. The gap after failed attempt n is at least its
# delay, ≥ 0.75·p (p = base·2^(n-1)): the retry is scheduled from the failure's answer. It
# is at most the delay plus L, the wait from the retry time to the next request (the test
# worker's scheduler moves due jobs every 0.1 s, running_worker; then the job starts):
# ≤ 1.25·p + L. With L below 0.25·base (0.75 s) every gap is < 1.5·p = 0.75·(2p), the least
# the next gap can be, so the gaps grow for every jitter draw.
GAPS_BASE = 3.0


async def test_sms_fails_three_times_then_succeeds_with_growing_gaps(
    client, world, session, settings, monkeypatch
):
    with SmsApi() as api:
        api.fail_next = 3
        worker_settings = notify_settings(
            settings,
            sms=api,
            sms_from="+1555",
            notify_retry_base_seconds=GAPS_BASE,
            notify_retry_max_seconds=8 * GAPS_BASE,
        )
        async with running_worker(worker_settings, monkeypatch):
            await book_api(client, world, at(day_after_tomorrow(), 10), who="patient1")
            await eventually(lambda: _sent(session, "confirmation"), timeout=20 * GAPS_BASE)
    times = [t for t, _, _ in api.requests]
    assert len(times) == 4 and len(api.delivered) == 1
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for n, gap in enumerate(gaps, start=1):
        planned = GAPS_BASE * 2 ** (n - 1)
        assert 0.75 * planned <= gap < 1.5 * planned, (n, gaps)
    assert gaps[0] < gaps[1] < gaps[2], gaps
    (row,) = await outbox_rows(session, kind="confirmation")
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
    rows = await outbox_rows(session, kind=kind)
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
            sms=api,
            notify_max_attempts=5,
            notify_retry_base_seconds=0.3,
            notify_breaker_threshold=100,
        )
        async with running_worker(worker_settings, monkeypatch):
            day = day_after_tomorrow()
            await book_api(client, world, at(day, 10), who="patient1")
            await book_api(client, world, at(day, 11), who="patient2")

            async def both_dead():
                rows = await outbox_rows(session, kind="confirmation")
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


async def test_an_undelivered_account_email_is_listed_retried_and_discarded(client, world, session):
    """A reset or verification link that failed on every attempt is about an account, not
    an appointment: the undelivered page and API list it too, and retry and discard act
    on it (audited with the account)."""
    user = world.users["patient1"]
    dead = [
        Notification(
            user_id=user.id,
            channel="email",
            kind=kind,
            ref=f"ref-{kind}",
            due_at=dt.datetime.now(dt.UTC),
            status="dead",
            attempts=6,
            last_error="550 mailbox unavailable",
        )
        for kind in ("password_reset", "email_verify")
    ]
    session.add_all(dead)
    await session.commit()
    reset, verify = (n.id for n in dead)
    admin = world.headers("admin")
    listed = await client.get("/api/notifications/undelivered", headers=admin)
    assert listed.status_code == 200
    assert {(r["id"], r["user_id"], r["appointment_id"]) for r in listed.json()} == {
        (reset, user.id, None),
        (verify, user.id, None),
    }
    page = await client.get("/admin/notifications", headers=admin)
    assert page.status_code == 200
    assert f'action="/admin/notifications/{reset}/retry"' in page.text
    assert "password reset" in page.text and "email verify" in page.text
    assert user.email in page.text and "550 mailbox unavailable" in page.text
    assert (await client.post(f"/api/notifications/{reset}/retry", headers=admin)).json() == {
        "id": reset,
        "status": "pending",
    }
    discarded = await client.post(f"/admin/notifications/{verify}/discard", headers=admin)
    assert f"Message {verify} was discarded" in discarded.text
    assert (await _row(session, reset)).status == "pending"
    assert (await _row(session, verify)).status == "void"
    events = (
        await session.scalars(select(AuditEvent).where(AuditEvent.subject_id.in_([reset, verify])))
    ).all()
    assert {(e.action, e.details["user_id"]) for e in events} == {
        ("notification.retried", user.id),
        ("notification.discarded", user.id),
    }


async def _row(session, notification_id):
    (row,) = await outbox_rows(session, id=notification_id)
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
        sms=api,
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
    rows = await outbox_rows(session, kind="confirmation")
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
        worker_settings = notify_settings(settings, smtp=sink, sms=api)
        async with running_worker(worker_settings, monkeypatch):
            for i, who in enumerate(("patient0", "patient1", "patient2")):
                await book_api(client, world, at(day, 10 + i), who=who)
            await eventually(lambda: _sent(session, "confirmation"))
        # No worker now. The day-before reminders fall due: the cron claims them and
        # enqueues their jobs, then Redis loses everything (flush, restart, failover).
        due_24h = max(r.due_at for r in await outbox_rows(session, kind="reminder_24h"))
        from tasks.queue import create_queue

        queue = create_queue(worker_settings)
        await queue.connect()
        try:
            claimed = await dispatch(engine, queue, worker_settings, now=due_24h)
        finally:
            await queue.disconnect()
        assert claimed["claimed"] == 3
        assert {r.status for r in await outbox_rows(session, kind="reminder_24h")} == {"queued"}
        await redis.flushdb()
        assert await redis.dbsize() == 0
        async with running_worker(worker_settings, monkeypatch) as worker:
            # The cron at a later minute (after the claims' lease) takes them again.
            later = due_24h + dt.timedelta(seconds=worker_settings.notify_lease_seconds + 1)
            assert (await dispatch(engine, worker.queue, worker_settings, now=later))[
                "claimed"
            ] == 3
            await eventually(lambda: _sent(session, "reminder_24h"))
            due_1h = max(r.due_at for r in await outbox_rows(session, kind="reminder_1h"))
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
    rows = {n.kind: n for n in await outbox_rows(session, appointment_id=result.appointment.id)}
    day_before = rows["reminder_24h"].due_at
    hour_before = rows["reminder_1h"].due_at
    assert day_before.astimezone(zone) == dt.datetime.combine(
        day - dt.timedelta(days=1), dt.time(9), tzinfo=zone
    )
    expected_gap = 23 if day.month == 3 else 25
    assert start - day_before == dt.timedelta(hours=expected_gap)
    assert start - hour_before == dt.timedelta(hours=1)

    with SmtpSink() as sink:
        worker_settings = notify_settings(settings, smtp=sink)
        async with running_worker(worker_settings, monkeypatch) as worker:
            # The cron's run in the minute the reminder falls due (the confirmation, due
            # at the booking three days earlier, goes out in the same run).
            await dispatch(engine, worker.queue, worker_settings, now=day_before)
            await eventually(lambda: _delivered(session, sink, 2))
            assert not await _sent(session, "reminder_1h")
            await dispatch(engine, worker.queue, worker_settings, now=hour_before)
            await eventually(lambda: _delivered(session, sink, 3))
    reminder = next(m for m in sink.messages if "tomorrow" in m.text)
    name = "Europe/Berlin" if zone is BERLIN else "America/New_York"
    assert when_text(start, zone, name) in reminder.text
    assert start.tzname() in reminder.message["Subject"]


def test_backoff_grows_and_stays_within_its_jitter():
    import random

    rng = random.Random(7)
    for attempt in range(1, 8):
        for _ in range(50):
            delay = outbox.backoff(attempt, 30, 1800, rng)
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
            rows = [
                r for r in await outbox_rows(session, kind="confirmation") if r.status == "dead"
            ]
            return rows

        (row,) = await eventually(dead)
    assert row.attempts == 1 and "SMTP_HOST" in (row.last_error or "")
