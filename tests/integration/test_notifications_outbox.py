"""The outbox rows each booking change writes, in the same transaction (real PostgreSQL)."""

import datetime as dt

import pytest
from sqlalchemy import select, update

from app import notifications
from app.booking import BookingRules, book
from app.effects import Effects
from app.identity import Principal
from db.models import Appointment, Notification, Patient
from tests.integration.world import BERLIN, at, day_after_tomorrow, make_world


@pytest.fixture
async def world(client, session, settings):
    world = await make_world(session, settings.secret_key, patients=3)
    await session.execute(
        update(Patient)
        .where(Patient.id == world.patients[0])
        .values(email="ann@patients.test", notify_by="email")
    )
    await session.execute(
        update(Patient)
        .where(Patient.id == world.patients[1])
        .values(phone="+4930123456", email="bob@patients.test", notify_by="sms")
    )
    await session.execute(
        update(Patient)
        .where(Patient.id == world.patients[2])
        .values(email="cy@patients.test", notify_by="none")
    )
    await session.commit()
    return world


async def rows(session, appointment_id=None):
    query = select(Notification).order_by(Notification.id)
    if appointment_id is not None:
        query = query.where(Notification.appointment_id == appointment_id)
    return list(await session.scalars(query.execution_options(populate_existing=True)))


async def book_api(client, world, start, who="patient0"):
    response = await client.post(
        "/api/appointments",
        json={"doctor_id": world.doctor_id, "start": start.isoformat()},
        headers=world.headers(who),
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def test_a_booking_writes_its_confirmation_and_both_reminders(client, world, session):
    start = at(day_after_tomorrow(), 10)
    before = dt.datetime.now(dt.UTC)
    appointment_id = await book_api(client, world, start)
    found = await rows(session, appointment_id)
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
    assert {n.channel for n in await rows(session, sms_id)} == {"sms"}
    assert await rows(session, none_id) == []


async def test_a_failed_booking_leaves_no_rows(client, world, session):
    start = at(day_after_tomorrow(), 10)
    await book_api(client, world, start)
    taken = await client.post(
        "/api/appointments",
        json={"doctor_id": world.doctor_id, "start": start.isoformat()},
        headers=world.headers("patient1"),
    )
    assert taken.status_code == 409
    assert {n.appointment_id for n in await rows(session)} == {
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
    found = [(n.kind, n.status, n.due_at) for n in await rows(session, appointment_id)]
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
    assert [(n.kind, n.status) for n in await rows(session, appointment_id)] == [
        ("confirmation", "void"),
        ("reminder_24h", "void"),
        ("reminder_1h", "void"),
        ("cancellation", "pending"),
    ]


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
    notices = [n for n in await rows(session) if n.kind == "cancellation"]
    assert {(n.appointment_id, n.channel) for n in notices} == {(first, "email"), (second, "sms")}
    assert {n.status for n in await rows(session) if n.kind != "cancellation"} == {"void"}


async def test_a_schedule_exception_notifies_each_affected_patient(client, world, session):
    day = day_after_tomorrow()
    first = await book_api(client, world, at(day, 10))
    second = await book_api(client, world, at(day, 11), who="patient1")
    silent = await book_api(client, world, at(day, 12), who="patient2")
    leave = await client.post(
        f"/api/doctors/{world.doctor_id}/exceptions",
        json={
            "starts_at": at(day, 9).isoformat(),
            "ends_at": at(day, 13).isoformat(),
            "kind": "leave",
            "cancel_affected": True,
        },
        headers=world.headers("admin"),
    )
    assert leave.status_code == 201, leave.text
    notices = [n for n in await rows(session) if n.kind == "exception"]
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
    kinds = [n.kind for n in await rows(session, result.appointment.id)]
    assert kinds == ["confirmation", "reminder_1h"]  # the day-before time has passed


async def test_preference_change_moves_unsent_messages(client, world, session):
    appointment_id = await book_api(client, world, at(day_after_tomorrow(), 10), who="patient2")
    assert await rows(session, appointment_id) == []  # chose none
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
    assert [(n.kind, n.channel) for n in await rows(session, appointment_id)] == [
        ("reminder_24h", "sms"),
        ("reminder_1h", "sms"),
    ]
    email = await client.patch(
        "/api/me/notifications", json={"notify_by": "email"}, headers=world.headers("patient2")
    )
    assert email.status_code == 200
    assert {n.channel for n in await rows(session, appointment_id)} == {"email"}
    assert len(await rows(session, appointment_id)) == 2  # moved, not duplicated
    off = await client.patch(
        "/api/me/notifications", json={"notify_by": "none"}, headers=world.headers("patient2")
    )
    assert off.status_code == 200
    assert {n.status for n in await rows(session, appointment_id)} == {"void"}


async def test_preference_rules_and_page(client, world, session):
    no_phone = await client.patch(
        "/api/me/notifications", json={"notify_by": "sms"}, headers=world.headers("patient0")
    )
    assert no_phone.status_code == 422 and "mobile" in no_phone.json()["detail"]
    bad = await client.patch(
        "/api/me/notifications", json={"notify_by": "pigeon"}, headers=world.headers("patient0")
    )
    assert bad.status_code == 422
    staff = await client.get("/api/me/notifications", headers=world.headers("desk"))
    assert staff.status_code == 403
    page = await client.get("/me/notifications", headers=world.headers("patient0"))
    assert page.status_code == 200
    assert 'value="email" checked' in page.text and "ann@patients.test" in page.text


def test_channel_choice_falls_back_only_when_the_address_is_missing():
    assert notifications.choose_channel("email", "a@b.test", "+491") == "email"
    assert notifications.choose_channel("sms", "a@b.test", "+491") == "sms"
    assert notifications.choose_channel("sms", "a@b.test", None) == "email"
    assert notifications.choose_channel("email", None, "+491") == "sms"
    assert notifications.choose_channel("none", "a@b.test", "+491") is None
    assert notifications.choose_channel("email", None, None) is None
