"""Reminders a patient can answer: the e-mail's signed link and the SMS reply webhook."""

import dataclasses
import datetime as dt
import re

import pytest
from sqlalchemy import select, text

from app.errors import Invalid, NotFound
from app.notifications import answers
from app.notifications.answer_links import answer_token, read_token
from db.models import Appointment, AuditEvent, Patient
from tests.integration.auth_helpers import csrf_from
from tests.integration.world import at, day_after_tomorrow, make_world

WEBHOOK = "/api/webhooks/sms"


@pytest.fixture
async def world(client, session, settings):
    return await make_world(session, settings.secret_key, patients=2)


async def booked(client, world, start, who="patient0"):
    response = await client.post(
        "/api/appointments",
        json={"doctor_id": world.doctor_id, "start": start.isoformat()},
        headers=world.headers(who),
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_a_token_names_its_appointment_until_the_visit_and_cannot_be_forged():
    start = dt.datetime(2030, 1, 7, 9, tzinfo=dt.UTC)
    token = answer_token("s" * 40, 42, start)
    assert read_token("s" * 40, token, start - dt.timedelta(hours=1)) == 42
    with pytest.raises(Invalid):
        read_token("s" * 40, token, start)  # expires at the visit
    forged = token.replace("42.", "43.", 1)
    for bad in (forged, token[:-2], "x", "", "42.1.ü", answer_token("t" * 40, 42, start)):
        with pytest.raises(NotFound):
            read_token("s" * 40, bad, start - dt.timedelta(hours=1))


async def test_the_link_confirms_once_and_the_desk_board_shows_it(client, world, session, settings):
    day = day_after_tomorrow()
    desk = world.headers("desk")  # read before the session's objects expire below
    appointment_id = await booked(client, world, at(day, 10))
    starts_at = at(day, 10)
    link = f"/r/{answer_token(settings.secret_key, appointment_id, starts_at)}"
    page = await client.get(link)  # no sign-in; opening it changes nothing
    assert page.status_code == 200 and "Confirm" in page.text and "Dr. Berlin" in page.text
    assert (await session.get(Appointment, appointment_id)).confirmed_at is None
    done = await client.post(link, data={"action": "confirm", "csrf_token": csrf_from(page.text)})
    assert done.status_code == 200 and "confirmed" in done.text
    session.expire_all()
    assert (await session.get(Appointment, appointment_id)).confirmed_at is not None
    # Single use: the same link, again or to cancel, only says it was answered.
    again = await client.post(link, data={"action": "cancel", "csrf_token": csrf_from(page.text)})
    assert "already been answered" in again.text
    session.expire_all()
    assert (await session.get(Appointment, appointment_id)).status == "booked"
    board = await client.get(f"/desk?date={day.isoformat()}", headers=desk)
    card = re.search(rf'data-appointment-id="{appointment_id}".*?</div>', board.text, re.S)
    assert card is not None and 'data-confirmed="true"' in card.group(0)
    events = list(
        await session.scalars(
            select(AuditEvent.details).where(AuditEvent.action == "appointment.confirmed")
        )
    )
    assert events == [{"via": "link"}]


async def test_the_link_cancels_and_frees_the_slot(client, world, session, settings):
    day = day_after_tomorrow()
    other = world.headers("patient1")  # read before the session's objects expire below
    appointment_id = await booked(client, world, at(day, 11))
    link = f"/r/{answer_token(settings.secret_key, appointment_id, at(day, 11))}"
    page = await client.get(link)
    done = await client.post(link, data={"action": "cancel", "csrf_token": csrf_from(page.text)})
    assert done.status_code == 200 and "Cancelled" in done.text
    session.expire_all()
    row = await session.get(Appointment, appointment_id)
    assert row.status == "cancelled" and row.cancel_reason == answers.CANCEL_REASON
    slots = await client.get(
        "/api/appointments/available-slots",
        params={"doctor_id": world.doctor_id, "date": day.isoformat()},
        headers=other,
    )
    free = {s["start"]: s["available"] for s in slots.json()["slots"]}
    assert free[at(day, 11).isoformat()] is True  # free again at once
    tampered = await client.get(link[:-3] + "abc")
    assert "not valid" in tampered.text


def sign(settings, form):
    url = settings.public_origin.rstrip("/") + WEBHOOK
    return {"X-Twilio-Signature": answers.twilio_signature(settings.sms_token or "", url, form)}


async def test_the_sms_webhook_checks_the_signature_then_answers(client, world, session, settings):
    from litestar.testing import AsyncTestClient

    from app.web.asgi import create_app

    settings = dataclasses.replace(settings, sms_token="provider-secret")
    async with AsyncTestClient(app=create_app(settings)) as sms_client:
        await _sms_replies(sms_client, world, session, settings)


async def _sms_replies(client, world, session, settings):
    day = day_after_tomorrow()
    appointment_id = await booked(client, world, at(day, 12))
    patient = await session.get(Patient, world.patients[0])
    patient.phone = "+49 30 1234567"
    await session.execute(
        text(
            "INSERT INTO notifications (appointment_id, channel, kind, due_at, status) "
            "VALUES (:a, 'sms', 'reminder_24h', now(), 'sent')"
        ),
        {"a": appointment_id},
    )
    await session.commit()
    form = {"From": "+49301234567", "Body": " c ", "MessageSid": "SM1"}
    unsigned = await client.post(WEBHOOK, data=form)
    assert unsigned.status_code == 403
    wrong = await client.post(WEBHOOK, data=form, headers={"X-Twilio-Signature": "AAAA"})
    assert wrong.status_code == 403
    session.expire_all()
    assert (await session.get(Appointment, appointment_id)).confirmed_at is None
    confirmed = await client.post(WEBHOOK, data=form, headers=sign(settings, form))
    assert confirmed.status_code == 200
    assert confirmed.headers["content-type"].startswith("application/xml")
    assert "<Message>Your appointment on" in confirmed.text and "confirmed" in confirmed.text
    session.expire_all()
    assert (await session.get(Appointment, appointment_id)).confirmed_at is not None
    cancel = {**form, "Body": "X", "MessageSid": "SM2"}
    cancelled = await client.post(WEBHOOK, data=cancel, headers=sign(settings, cancel))
    assert "cancelled" in cancelled.text
    session.expire_all()
    assert (await session.get(Appointment, appointment_id)).status == "cancelled"
    stranger = {**form, "From": "+15550000000", "MessageSid": "SM3"}
    unknown = await client.post(WEBHOOK, data=stranger, headers=sign(settings, stranger))
    assert unknown.status_code == 200 and "no appointment" in unknown.text
