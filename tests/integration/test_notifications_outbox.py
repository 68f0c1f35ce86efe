"""The outbox rows each booking change writes, in the same transaction (real PostgreSQL)."""

import datetime as dt

import pytest
from sqlalchemy import select, update

from app.access.identity import Principal
from app.appointments.commands import book
from app.appointments.rules import BookingRules
from app.live.effects import Effects
from app.notifications import outbox, planning
from db.models import Appointment, Notification, Patient
from tests.integration.auth_helpers import browser_login, csrf_from
from tests.integration.notification_world import (
    book_api,
    cancel_by_leave,
    outbox_rows,
    world_with_contacts,
)
from tests.integration.world import BERLIN, PASSWORD, at, day_after_tomorrow

CONTACTS = [
    ("ann@patients.test", None, "email"),
    ("bob@patients.test", "+4930123456", "sms"),
    ("cy@patients.test", None, "none"),
]


@pytest.fixture
async def world(client, session, settings):
    return await world_with_contacts(session, settings.secret_key, CONTACTS)


async def test_a_booking_writes_its_confirmation_and_both_reminders(client, world, session):
    start = at(day_after_tomorrow(), 10)
    before = dt.datetime.now(dt.UTC)
    appointment_id = await book_api(client, world, start)
    found = await outbox_rows(session, appointment_id=appointment_id)
    assert [(n.kind, n.channel, n.status) for n in found] == [
        ("confirmation", "email", "pending"),
        ("reminder_24h", "email", "pending"),
        ("reminder_1h", "email", "pending"),
    ]
    confirmation, day_before, hour_before = (n.due_at for n in found)
    assert before <= confirmation <= dt.datetime.now(dt.UTC)
    assert day_before.astimezone(BERLIN) == at(day_after_tomorrow() - dt.timedelta(days=1), 10)
    assert hour_before == start - dt.timedelta(hours=1)


async def test_channel_follows_the_patients_choice(client, world, session):
    day = day_after_tomorrow()
    sms_id = await book_api(client, world, at(day, 11), who="patient1")
    none_id = await book_api(client, world, at(day, 12), who="patient2")
    assert {n.channel for n in await outbox_rows(session, appointment_id=sms_id)} == {"sms"}
    assert await outbox_rows(session, appointment_id=none_id) == []


async def test_a_failed_booking_leaves_no_rows(client, world, session):
    start = at(day_after_tomorrow(), 10)
    await book_api(client, world, start)
    taken = await client.post(
        "/api/appointments",
        json={"doctor_id": world.doctor_id, "start": start.isoformat()},
        headers=world.headers("patient1"),
    )
    assert taken.status_code == 409
    assert {n.appointment_id for n in await outbox_rows(session)} == {
        await session.scalar(select(Appointment.id))
    }


async def test_reschedule_replaces_unsent_messages(client, world, session):
    day = day_after_tomorrow()
    appointment_id = await book_api(client, world, at(day, 10))
    await session.execute(
        update(Notification)
        .where(Notification.kind == "confirmation")
        .values(status="sent", sent_at=dt.datetime.now(dt.UTC))
    )
    await session.commit()
    moved = await client.patch(
        f"/api/appointments/{appointment_id}",
        json={"start": at(day, 15).isoformat()},
        headers=world.headers("patient0"),
    )
    assert moved.status_code == 200, moved.text
    found = [
        (n.kind, n.status, n.due_at)
        for n in await outbox_rows(session, appointment_id=appointment_id)
    ]
    assert [(k, s) for k, s, _ in found] == [
        ("confirmation", "sent"),  # what was sent stays sent
        ("reminder_24h", "void"),
        ("reminder_1h", "void"),
        ("confirmation", "pending"),  # the new time's
        ("reminder_24h", "pending"),
        ("reminder_1h", "pending"),
    ]
    assert found[-1][2] == at(day, 14)
    assert found[-2][2].astimezone(BERLIN) == at(day - dt.timedelta(days=1), 15)


async def test_cancel_voids_unsent_reminders_and_sends_a_notice(client, world, session):
    appointment_id = await book_api(client, world, at(day_after_tomorrow(), 10))
    cancelled = await client.patch(
        f"/api/appointments/{appointment_id}",
        json={"status": "cancelled"},
        headers=world.headers("patient0"),
    )
    assert cancelled.status_code == 200, cancelled.text
    assert [
        (n.kind, n.status) for n in await outbox_rows(session, appointment_id=appointment_id)
    ] == [
        ("confirmation", "void"),
        ("reminder_24h", "void"),
        ("reminder_1h", "void"),
        ("cancellation", "pending"),
    ]


async def test_a_message_sent_while_its_appointment_is_cancelled_is_recorded_as_sent(
    client, world, session, engine
):
    appointment_id = await book_api(client, world, at(day_after_tomorrow(), 10))
    now, lease = dt.datetime.now(dt.UTC), dt.timedelta(minutes=5)
    async with engine.begin() as conn:  # the dispatcher claims the confirmation
        claims = await outbox.claim_due(conn, now=now, lease=lease, limit=10)
    async with engine.begin() as conn:  # a send job starts its attempt
        (item,) = await outbox.load_outgoing(conn, claims)
        assert item.kind == "confirmation"
        assert await outbox.start_attempt(conn, item, now=now, lease=lease)
    # While the SMTP server takes the message, the patient cancels.
    cancelled = await client.patch(
        f"/api/appointments/{appointment_id}",
        json={"status": "cancelled"},
        headers=world.headers("patient0"),
    )
    assert cancelled.status_code == 200, cancelled.text
    assert (await outbox_rows(session, id=item.id))[0].status == "void"
    async with engine.begin() as conn:  # the server's answer arrives
        assert await outbox.mark_sent(conn, item, "<n@medbook.test> (queued as Q1)", now)
        assert not await outbox.mark_sent(conn, item, "twice", now)
    found = {n.kind: n for n in await outbox_rows(session, appointment_id=appointment_id)}
    sent = found["confirmation"]
    assert (sent.status, sent.last_error) == ("sent", None)
    assert sent.provider_message_id == "<n@medbook.test> (queued as Q1)"
    assert found["reminder_24h"].status == "void" and found["cancellation"].status == "pending"


async def test_bulk_cancel_and_check_in(client, world, session):
    day = day_after_tomorrow()
    first = await book_api(client, world, at(day, 10))
    second = await book_api(client, world, at(day, 11), who="patient1")
    result = await client.post(
        "/api/appointments/bulk-update",
        json={"appointment_ids": [first, second], "status": "cancelled"},
        headers=world.headers("desk"),
    )
    assert result.status_code == 200, result.text
    notices = [n for n in await outbox_rows(session) if n.kind == "cancellation"]
    assert {(n.appointment_id, n.channel) for n in notices} == {(first, "email"), (second, "sms")}
    assert {n.status for n in await outbox_rows(session) if n.kind != "cancellation"} == {"void"}


async def test_a_schedule_exception_notifies_each_affected_patient(client, world, session):
    day = day_after_tomorrow()
    first = await book_api(client, world, at(day, 10))
    second = await book_api(client, world, at(day, 11), who="patient1")
    silent = await book_api(client, world, at(day, 12), who="patient2")
    await cancel_by_leave(client, world, at(day, 9), at(day, 13))
    notices = [n for n in await outbox_rows(session) if n.kind == "exception"]
    assert {(n.appointment_id, n.channel) for n in notices} == {(first, "email"), (second, "sms")}
    assert silent not in {n.appointment_id for n in notices}  # chose none


async def test_late_bookings_skip_reminders_already_past(session, world, redis):
    now = dt.datetime.now(dt.UTC)
    start = now.astimezone(BERLIN).replace(minute=0, second=0, microsecond=0) + dt.timedelta(
        hours=3
    )
    if not 8 <= start.hour < 20:
        start = at(day_after_tomorrow(), 10)
        now = start - dt.timedelta(hours=3)
    actor = Principal(
        id=world.users["patient0"].id,
        email="p0@t.test",
        role="patient",
        patient_id=world.patients[0],
        doctor_id=None,
        clinic_id=None,
    )
    rules = BookingRules(dt.timedelta(minutes=60), dt.timedelta(days=90), 3)
    result = await book(
        session, Effects(redis), actor, doctor_id=world.doctor_id, start=start, rules=rules, now=now
    )
    kinds = [n.kind for n in await outbox_rows(session, appointment_id=result.appointment.id)]
    assert kinds == ["confirmation", "reminder_1h"]  # the day-before time has passed


async def test_preference_change_moves_unsent_messages(client, world, session):
    appointment_id = await book_api(client, world, at(day_after_tomorrow(), 10), who="patient2")
    assert await outbox_rows(session, appointment_id=appointment_id) == []  # chose none
    sms = await client.patch(
        "/api/me/notifications",
        json={"notify_by": "sms", "phone": "+4915112345678"},
        headers=world.headers("patient2"),
    )
    assert sms.status_code == 200, sms.text
    assert sms.json() == {
        "notify_by": "sms",
        "email": "cy@patients.test",
        "phone": "+4915112345678",
    }
    assert [
        (n.kind, n.channel) for n in await outbox_rows(session, appointment_id=appointment_id)
    ] == [
        ("reminder_24h", "sms"),
        ("reminder_1h", "sms"),
    ]
    email = await client.patch(
        "/api/me/notifications", json={"notify_by": "email"}, headers=world.headers("patient2")
    )
    assert email.status_code == 200
    assert {n.channel for n in await outbox_rows(session, appointment_id=appointment_id)} == {
        "email"
    }
    assert (
        len(await outbox_rows(session, appointment_id=appointment_id)) == 2
    )  # moved, not duplicated
    off = await client.patch(
        "/api/me/notifications", json={"notify_by": "none"}, headers=world.headers("patient2")
    )
    assert off.status_code == 200
    assert {n.status for n in await outbox_rows(session, appointment_id=appointment_id)} == {"void"}


async def notify_by(session, patient_index, world):
    patient = await session.get(Patient, world.patients[patient_index], populate_existing=True)
    return patient.notify_by, patient.phone


async def test_the_preference_api_refuses_bad_input_and_changes_nothing(client, world, session):
    ann = world.headers("patient0")
    refused = {
        # (body, status, what the answer says)
        '{"notify_by": "sms"}': (422, "mobile"),
        # The schema's enum and phone pattern: 400, naming the field.
        '{"notify_by": "pigeon"}': (400, "notify_by"),
        '{"notify_by": "sms", "phone": "030 1234"}': (400, "phone"),
        '{"notify_by": "sms", "phone": "+49"}': (400, "phone"),
        '{"notify_by": "email", "pager": "+4930"}': (400, "pager"),
        '{"phone": "+4930123456"}': (400, "notify_by"),
        '{"notify_by": 3}': (400, "notify_by"),
        '{"notify_by": ': (400, ""),
    }
    for body, (status, says) in refused.items():
        answer = await client.patch(
            "/api/me/notifications",
            content=body,
            headers=ann | {"content-type": "application/json"},
        )
        assert answer.status_code == status, (body, answer.text)
        assert says in answer.text, (body, answer.text)
    assert await notify_by(session, 0, world) == ("email", None)
    for staff in ("desk", "admin"):
        assert (
            await client.get("/api/me/notifications", headers=world.headers(staff))
        ).status_code == 403
        assert (
            await client.patch(
                "/api/me/notifications", json={"notify_by": "none"}, headers=world.headers(staff)
            )
        ).status_code == 403
    page = await client.get("/me/notifications", headers=ann)
    assert page.status_code == 200
    assert 'value="email" checked' in page.text and "ann@patients.test" in page.text


async def test_the_preference_form_saves_and_keeps_what_was_typed_on_errors(client, world, session):
    appointment_id = await book_api(client, world, at(day_after_tomorrow(), 10))
    assert (await browser_login(client, "p0@t.test", PASSWORD)).status_code == 200
    token = csrf_from((await client.get("/me/notifications")).text)

    async def submit(**form):
        return await client.post("/me/notifications", data=form)

    forged = await submit(notify_by="none")  # no CSRF token: another site's form
    assert forged.status_code == 403
    assert await notify_by(session, 0, world) == ("email", None)

    no_phone = await submit(notify_by="sms", phone="", csrf_token=token)
    assert no_phone.status_code == 200  # the form again, as the other pages' forms do
    assert '<p class="error" role="alert">add a mobile number' in no_phone.text
    assert 'value="sms" checked' in no_phone.text  # the choice stays as made

    bad_phone = await submit(notify_by="sms", phone="030 1234", csrf_token=token)
    assert "international number" in bad_phone.text
    assert 'value="sms" checked' in bad_phone.text and 'value="030 1234"' in bad_phone.text

    unknown = await submit(notify_by="pigeon", csrf_token=token)
    assert unknown.status_code == 200 and "notify_by must be one of" in unknown.text
    assert "checked" not in unknown.text
    assert await notify_by(session, 0, world) == ("email", None)  # none of these saved
    assert {n.channel for n in await outbox_rows(session, appointment_id=appointment_id)} == {
        "email"
    }

    sms = await submit(notify_by="sms", phone=" +4915112345678 ", csrf_token=token)
    assert sms.status_code == 200 and "Saved." in sms.text
    assert 'value="sms" checked' in sms.text and 'value="+4915112345678"' in sms.text
    assert await notify_by(session, 0, world) == ("sms", "+4915112345678")
    assert {n.channel for n in await outbox_rows(session, appointment_id=appointment_id)} == {"sms"}

    off = await submit(notify_by="none", phone="+4915112345678", csrf_token=token)
    assert "Saved." in off.text and 'value="none" checked' in off.text
    assert await notify_by(session, 0, world) == ("none", "+4915112345678")
    assert {n.status for n in await outbox_rows(session, appointment_id=appointment_id)} == {"void"}


def test_channel_choice_falls_back_only_when_the_address_is_missing():
    assert planning.choose_channel("email", "a@b.test", "+491") == "email"
    assert planning.choose_channel("sms", "a@b.test", "+491") == "sms"
    assert planning.choose_channel("sms", "a@b.test", None) == "email"
    assert planning.choose_channel("email", None, "+491") == "sms"
    assert planning.choose_channel("none", "a@b.test", "+491") is None
    assert planning.choose_channel("email", None, None) is None
