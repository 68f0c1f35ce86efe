"""Pure parts of notifications: when reminders fall due (DST days included), backoff,
message text and the .ics attachment."""

import datetime as dt
import random
import re
from zoneinfo import ZoneInfo

import pytest

from app.notifications import mail, outbox, planning
from app.notifications.outbox import Outgoing
from app.notifications.planning import plan

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
UTC = dt.UTC


def local(day: dt.date, hour: int, minute: int = 0, tz: ZoneInfo = BERLIN) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=tz)


@pytest.mark.parametrize(
    ("start", "hours_before"),
    [
        (local(dt.date(2027, 3, 28), 9), 23),  # Berlin springs forward that night
        (local(dt.date(2027, 3, 29), 9), 24),  # the day after: an ordinary day
        (local(dt.date(2027, 10, 31), 9), 25),  # Berlin falls back
        (local(dt.date(2027, 3, 14), 9, tz=NEW_YORK), 23),
        (local(dt.date(2027, 11, 7), 9, tz=NEW_YORK), 25),
        (local(dt.date(2027, 6, 15), 9), 24),
    ],
)
def test_the_day_before_reminder_keeps_the_local_wall_time(start, hours_before):
    now = start - dt.timedelta(days=5)
    planned = {p.kind: p.due_at for p in plan(start.astimezone(UTC), str(start.tzinfo), now)}
    day_before = planned["reminder_24h"].astimezone(start.tzinfo)
    assert (day_before.date(), day_before.time()) == (
        start.date() - dt.timedelta(days=1),
        start.time(),
    )
    assert start - planned["reminder_24h"] == dt.timedelta(hours=hours_before)
    assert start - planned["reminder_1h"] == dt.timedelta(hours=1)  # real minutes
    assert planned["confirmation"] == now


def test_a_wall_time_missing_the_day_before_moves_forward_by_the_gap():
    # 02:30 does not exist on 28 March 2027 in Berlin: the reminder comes at 03:30 CEST.
    start = local(dt.date(2027, 3, 29), 2, 30)
    due = planning.day_before_same_wall_time(start, "Europe/Berlin").astimezone(BERLIN)
    assert (due.date(), due.time(), due.tzname()) == (dt.date(2027, 3, 28), dt.time(3, 30), "CEST")


def test_an_ambiguous_wall_time_the_day_before_is_its_first_occurrence():
    start = local(dt.date(2027, 11, 1), 2, 30)  # 02:30 happened twice on 31 October
    due = planning.day_before_same_wall_time(start, "Europe/Berlin")
    assert due == dt.datetime(2027, 10, 31, 0, 30, tzinfo=UTC)  # 02:30 CEST


def test_only_future_reminders_are_planned():
    start = dt.datetime(2027, 5, 4, 10, tzinfo=UTC)
    assert [p.kind for p in plan(start, "UTC", start - dt.timedelta(hours=30))] == [
        "confirmation",
        "reminder_24h",
        "reminder_1h",
    ]
    assert [p.kind for p in plan(start, "UTC", start - dt.timedelta(hours=5))] == [
        "confirmation",
        "reminder_1h",
    ]
    assert [p.kind for p in plan(start, "UTC", start - dt.timedelta(minutes=60))] == [
        "confirmation"
    ]


def test_backoff_doubles_with_bounded_jitter_and_a_cap():
    rng = random.Random(1)
    for attempt, planned in ((1, 30), (2, 60), (3, 120), (4, 240), (7, 1800), (12, 1800)):
        delays = [outbox.backoff(attempt, 30, 1800, rng) for _ in range(200)]
        assert min(delays) >= 0.75 * planned and max(delays) <= 1.25 * planned
        assert max(delays) - min(delays) > 0.2 * planned  # it really is spread


def outgoing(kind="confirmation", **changes) -> Outgoing:
    values = {
        "id": 41,
        "token": 0,
        "kind": kind,
        "channel": "email",
        "appointment_id": 7,
        "appointment_status": "booked" if kind.startswith(("conf", "rem")) else "cancelled",
        "starts_at": dt.datetime(2027, 3, 28, 7, tzinfo=UTC),  # 09:00 CEST
        "ends_at": dt.datetime(2027, 3, 28, 7, 30, tzinfo=UTC),
        "updated_at": dt.datetime(2027, 3, 1, tzinfo=UTC),
        "cancel_reason": None,
        "doctor_name": "Dr. Anna Becker",
        "clinic_name": "Spreeufer Praxis",
        "clinic_address": "Am Ufer 1, Berlin",
        "timezone": "Europe/Berlin",
        "email": "ann@example.test",
        "phone": "+4930123456",
    }
    return Outgoing(**(values | changes))


def test_local_time_names_the_zone():
    assert mail.local_time(outgoing().starts_at, "Europe/Berlin") == (
        "Sunday 28 March 2027, 09:00 CEST (Europe/Berlin)"
    )
    assert mail.short_time(outgoing().starts_at, "Europe/Berlin") == "Sun 28 Mar 09:00 CEST"


KINDS = ["confirmation", "reminder_24h", "reminder_1h", "cancellation", "exception"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_renders_what_the_patient_needs_and_no_more(kind):
    item = outgoing(kind, cancel_reason="private reason")
    subject, text, html = mail.render_text(item, "https://medbook.test")
    for body in (text, html):
        assert "Sunday 28 March 2027, 09:00 CEST (Europe/Berlin)" in body
        assert "Dr. Anna Becker" in body and "Spreeufer Praxis" in body
        assert "https://medbook.test/me/appointments" in body
        assert "private reason" not in body
    assert "09:00 CEST" in subject
    sms = mail.render_sms(item, "https://medbook.test")
    assert len(sms) <= 320 and "Sun 28 Mar 09:00 CEST" in sms


@pytest.mark.parametrize(
    ("kind", "subject", "says", "sms_says"),
    [
        ("confirmation", "Appointment confirmed", "is confirmed", "Appointment confirmed"),
        ("cancellation", "Appointment cancelled", "has been cancelled", "Appointment cancelled"),
        (
            "exception",
            "Appointment cancelled by the clinic",
            "the doctor is unavailable, so the clinic has cancelled your appointment",
            "Cancelled by the clinic (doctor unavailable)",
        ),
    ],
)
def test_each_kind_says_what_happened(kind, subject, says, sms_says):
    subject_line, text, html = mail.render_text(outgoing(kind), "https://medbook.test")
    assert subject_line == f"{subject}: Sun 28 Mar 09:00 CEST"
    assert says in text and says in html
    sms = mail.render_sms(outgoing(kind), "https://medbook.test")
    assert sms.startswith(f"medbook: {sms_says}: Sun 28 Mar 09:00 CEST, Dr. Anna Becker")
    # A notice says how to book again; an announcement how to cancel.
    assert ("To rebook:" in sms) == (kind != "confirmation")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("address", ["Am Ufer 1, 10999 Berlin", None])
def test_plain_text_keeps_its_paragraphs(kind, address):
    # The template tags ate line ends: "…10999 BerlinTo book another time".
    _, text, _ = mail.render_text(outgoing(kind, clinic_address=address), "https://m.test")
    paragraphs = text.split("\n\n")
    assert len(paragraphs) == 4, text
    opening, details, how_to, signature = paragraphs
    assert "\n" not in opening and opening.endswith(".")
    clinic = "Spreeufer Praxis" + (f", {address}" if address else "")
    assert details.splitlines() == [
        "When:   Sunday 28 March 2027, 09:00 CEST (Europe/Berlin)",
        "Doctor: Dr. Anna Becker",
        f"Clinic: {clinic}",
    ]
    assert "https://m.test/me/appointments" in how_to
    assert signature == "-- medbook (sent automatically)"


def test_html_is_escaped():
    _, _, html = mail.render_text(outgoing(doctor_name="Dr. <b>X</b>"), "https://m.test")
    assert "<b>X</b>" not in html and "&lt;b&gt;X&lt;/b&gt;" in html


def test_the_ics_event_is_well_formed():
    now = dt.datetime(2027, 3, 1, 12, tzinfo=UTC)
    ics = mail.calendar(
        outgoing(clinic_address="Long Street 1, " + "x" * 80), "https://medbook.test", now
    )
    lines = ics.split("\r\n")
    assert ics.endswith("\r\n") and all(len(line.encode()) <= 75 for line in lines)
    unfolded = ics.replace("\r\n ", "")
    assert "DTSTART:20270328T070000Z" in unfolded and "DTEND:20270328T073000Z" in unfolded
    assert "UID:appointment-7@medbook.test" in unfolded
    assert "LOCATION:Spreeufer Praxis\\, Long Street 1\\, " in unfolded
    for notice in ("cancellation", "exception"):
        assert "STATUS:CANCELLED" in mail.calendar(outgoing(notice), "https://medbook.test", now)


def test_the_smtp_provider_id_keeps_the_servers_answer():
    assert mail.provider_id("<notification-41@b.test>", "2.0.0 Ok: queued as 4XyZ12") == (
        "<notification-41@b.test> (2.0.0 Ok: queued as 4XyZ12)"
    )
    assert mail.provider_id("<n@b.test>", "OK id=1abc\n  more") == "<n@b.test> (OK id=1abc more)"
    assert mail.provider_id("<n@b.test>", "") == "<n@b.test>"


def test_one_message_id_per_row():
    assert mail.message_id(41, "Clinic <reminders@medbook.test>") == (
        "<notification-41@medbook.test>"
    )
    email = mail.build_email(
        outgoing(), sender="a@b.test", origin="https://m.test", now=dt.datetime.now(UTC)
    )
    assert email["Message-ID"] == "<notification-41@b.test>"
    assert [p.get_content_type() for p in email.walk()] == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "text/html",
        "text/calendar",
    ]
    assert email.get_payload()[1].get_filename() == "appointment.ics"


def test_moot_messages_are_not_sent():
    now = dt.datetime(2027, 3, 1, tzinfo=UTC)
    assert outgoing().moot(now) is None
    assert "cancelled" in (outgoing(appointment_status="cancelled").moot(now) or "")
    assert outgoing("cancellation").moot(now) is None
    assert "started" in (outgoing().moot(dt.datetime(2027, 3, 28, 8, tzinfo=UTC)) or "")


def test_notification_settings_are_read_from_the_environment():
    from app.settings import SettingsError, load_settings

    base = {
        "DATABASE_URL": "postgresql://u@h/db",
        "REDIS_URL": "redis://h:6379/0",
        "SECRET_KEY": "k" * 40,
    }
    settings = load_settings(
        base
        | {
            "SMTP_HOST": "mail.example.test",
            "SMTP_PORT": "465",
            "SMTP_TLS": "TLS",
            "SMS_API_URL": "https://sms.example.test/2010-04-01/",
            "NOTIFY_MAX_ATTEMPTS": "8",
            "NOTIFY_RETRY_BASE_SECONDS": "0.5",
        }
    )
    assert (settings.smtp_host, settings.smtp_port, settings.smtp_tls) == (
        "mail.example.test",
        465,
        "tls",
    )
    assert settings.sms_api_url == "https://sms.example.test/2010-04-01"
    assert settings.notify_max_attempts == 8 and settings.notify_retry_base_seconds == 0.5
    assert settings.notify_dev_mailbox is False  # server mode: no silent mailbox
    assert load_settings(base | {"MEDBOOK_EMBEDDED": "1"}).notify_dev_mailbox is True
    with pytest.raises(SettingsError, match="SMTP_TLS"):
        load_settings(base | {"SMTP_TLS": "maybe"})
    with pytest.raises(SettingsError, match="NOTIFY_MAX_ATTEMPTS"):
        load_settings(base | {"NOTIFY_MAX_ATTEMPTS": "0"})


def test_the_24h_reminder_carries_its_answer_link_and_the_sms_reply_codes():
    from app.notifications.answer_links import read_token

    secret = "s" * 40
    _, text, html = mail.render_text(outgoing("reminder_24h"), "https://m.test", secret)
    link = re.search(r"https://m\.test/r/(\S+)", text)
    assert link is not None and f'href="{link.group(0)}"' in html
    before = dt.datetime(2027, 3, 28, 6, tzinfo=UTC)
    assert read_token(secret, link.group(1), before) == 7  # the appointment's own link
    _, later, _ = mail.render_text(outgoing("reminder_1h"), "https://m.test", secret)
    assert "/r/" not in later  # only the 24 h reminder asks for an answer
    sms = mail.render_sms(outgoing("reminder_24h", channel="sms"), "https://m.test")
    assert sms.endswith("Reply C to confirm, X to cancel.") and len(sms) <= 320
    assert "Reply C" not in mail.render_sms(outgoing("confirmation"), "https://m.test")
