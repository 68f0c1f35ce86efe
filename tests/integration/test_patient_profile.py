"""A patient's profile page: name, phone, language, e-mail (re-verified before use) and
channels, any of e-mail and SMS; the reminder planner follows both channels."""

import pytest
from sqlalchemy import select

from app.access import accounts
from db.models import AuditEvent, Notification, Patient, User
from tests.integration.auth_helpers import csrf_from
from tests.integration.notification_world import book_api, outbox_rows, world_with_contacts
from tests.integration.world import at, day_after_tomorrow

CONTACTS = [("ann@patients.test", None, "email"), ("bob@patients.test", None, "email")]
FORM = {
    "full_name": "Ann Example",
    "email": "p0@t.test",
    "phone": "+4915112345678",
    "language": "de",
    "by_email": "true",
    "by_sms": "true",
}


@pytest.fixture
async def world(client, session, settings):
    return await world_with_contacts(session, settings.secret_key, CONTACTS)


async def _patient(session, world, index=0) -> Patient:
    return await session.get_one(Patient, world.patients[index], populate_existing=True)


async def test_the_profile_page_saves_name_phone_language_and_both_channels(client, world, session):
    booked = await book_api(client, world, at(day_after_tomorrow(), 10))
    assert {n.channel for n in await outbox_rows(session, appointment_id=booked)} == {"email"}
    page = await client.get("/me/profile", headers=world.headers("patient0"))
    assert page.status_code == 200 and 'name="by_sms"' in page.text
    saved = await client.post("/me/profile", data=FORM, headers=world.headers("patient0"))
    assert saved.status_code == 200 and "Saved." in saved.text
    assert 'value="Ann Example"' in saved.text and "checked> SMS" in saved.text
    patient = await _patient(session, world)
    assert (patient.full_name, patient.phone, patient.language, patient.notify_by) == (
        "Ann Example",
        "+4915112345678",
        "de",
        "both",
    )
    # The planner follows both: the booked visit gains its reminders by SMS too.
    rows = await outbox_rows(session, appointment_id=booked)
    by_channel = {(n.kind, n.channel) for n in rows if n.status != "void"}
    assert {("reminder_24h", "sms"), ("reminder_1h", "sms")} <= by_channel
    assert {("reminder_24h", "email"), ("reminder_1h", "email")} <= by_channel
    # ...and a new booking writes every message once per channel.
    second = await book_api(client, world, at(day_after_tomorrow(), 11))
    planned = sorted((n.kind, n.channel) for n in await outbox_rows(session, appointment_id=second))
    assert planned == sorted(
        (kind, channel)
        for kind in ("confirmation", "reminder_24h", "reminder_1h")
        for channel in ("email", "sms")
    )
    changed = await session.scalar(select(AuditEvent).where(AuditEvent.action == "profile.changed"))
    assert changed is not None and changed.patient_id == world.patients[0]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"full_name": "  "}, "full name must not be empty"),
        ({"phone": "12"}, "phone must be an international number"),
        ({"phone": ""}, "add a mobile number to get messages by SMS"),
        ({"language": "xx"}, "language must be one of"),
        ({"email": "not-an-address"}, "is not an email address"),
        ({"email": "p1@t.test"}, "already registered"),
    ],
)
async def test_profile_errors_keep_what_was_typed_and_save_nothing(
    client, world, session, change, problem
):
    form = FORM | change
    answer = await client.post("/me/profile", data=form, headers=world.headers("patient0"))
    assert answer.status_code == 200 and problem in answer.text
    assert f'value="{form["full_name"]}"' in answer.text  # as typed
    patient = await _patient(session, world)
    assert (patient.full_name, patient.notify_by, patient.phone, patient.pending_email) == (
        "Patient 0",
        "email",
        None,
        None,
    )
    assert (await outbox_rows(session, kind="email_verify")) == []


async def test_a_new_email_is_used_only_once_its_link_is_followed(
    client, world, session, redis, settings
):
    headers = world.headers("patient0")
    english = FORM | {"language": "en"}  # a saved language is what her pages then speak
    await client.post("/me/profile", data=english | {"email": "old@new.test"}, headers=headers)
    saved = await client.post(
        "/me/profile", data=english | {"email": "ann@new.test"}, headers=headers
    )
    assert "We sent a link to ann@new.test" in saved.text
    page = await client.get("/me/profile", headers=headers)
    assert "Waiting for confirmation: ann@new.test" in page.text
    user_id = world.users["patient0"].id
    assert (await session.get_one(User, user_id, populate_existing=True)).email == "p0@t.test"
    first, second = await outbox_rows(session, kind="email_verify")
    assert first.user_id == second.user_id == user_id and first.ref != second.ref
    older = (await redis.get(accounts.link_key(first.ref))).decode()
    newer = (await redis.get(accounts.link_key(second.ref))).decode()

    # The link of the superseded request no longer works; the newest one does, once.
    form = {"csrf_token": csrf_from((await client.get(f"/email-verify/{older}")).text)}
    stale = await client.post(f"/email-verify/{older}", data=form)
    assert "invalid or has expired" in stale.text
    done = await client.post(f"/email-verify/{newer}", data=form)
    assert "ann@new.test is now the address of your account" in done.text
    again = await client.post(f"/email-verify/{newer}", data=form)
    assert "invalid or has expired" in again.text
    user = await session.get_one(User, user_id, populate_existing=True)
    patient = await _patient(session, world)
    assert (user.email, patient.email, patient.pending_email) == (
        "ann@new.test",
        "ann@new.test",
        None,
    )
    actions = (await session.scalars(select(AuditEvent.action))).all()
    assert "email.change_requested" in actions and "email.changed" in actions


async def test_the_profile_is_a_patients_own(client, world, session):
    for who in ("desk", "doctor", "admin"):
        assert (await client.get("/me/profile", headers=world.headers(who))).status_code == 403
    anonymous = await client.get(
        "/me/profile", headers={"Accept": "text/html"}, follow_redirects=False
    )
    assert anonymous.status_code == 302 and anonymous.headers["location"].startswith("/login")
    assert (await session.scalars(select(Notification))).all() == []
