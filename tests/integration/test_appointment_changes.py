"""Status changes, bulk updates, leave and reschedules as single statements: who changed an
appointment and why on the row, an audit event per change, the outbox in step (issue #22)."""

import asyncio
import datetime as dt
import itertools

import pytest
from sqlalchemy import select, text, update

from app.access import audit
from app.appointments.statements import PATIENT_CHANNELS_SQL
from app.notifications.planning import choose_channels
from db.models import Appointment, AuditEvent, Notification
from tests.integration.world import BERLIN, at, day_after_tomorrow, make_world, move_to_today


@pytest.fixture
async def world(client, session, settings):
    return await make_world(session, settings.secret_key, patients=3)


async def book(client, world, start, who="patient0"):
    body = {"doctor_id": world.doctor_id, "start": start.isoformat()}
    response = await client.post("/api/appointments", json=body, headers=world.headers(who))
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def row(session, appointment_id):
    return await session.get(Appointment, appointment_id, populate_existing=True)


async def events(session, appointment_id):
    found = await session.scalars(
        select(AuditEvent)
        .where(AuditEvent.subject_type == "appointment", AuditEvent.subject_id == appointment_id)
        .order_by(AuditEvent.id)
    )
    return list(found)


async def notices(session, appointment_id):
    found = await session.execute(
        select(Notification.kind, Notification.status)
        .where(Notification.appointment_id == appointment_id)
        .order_by(Notification.id)
    )
    return [tuple(r) for r in found]


async def under_way(session, appointment_id):
    """Let the appointment have begun ten minutes ago, today in Berlin (from midnight when
    that is sooner): it may be checked in and still be cancelled."""
    now = dt.datetime.now(dt.UTC)
    start = max(now - dt.timedelta(minutes=10), at(now.astimezone(BERLIN).date(), 0, 0))
    await session.execute(
        update(Appointment)
        .where(Appointment.id == appointment_id)
        .values(starts_at=start, ends_at=now + dt.timedelta(minutes=20))
    )
    await session.commit()


async def test_a_cancellation_records_who_and_why_audits_it_and_updates_the_outbox(
    client, world, session
):
    appointment_id = await book(client, world, at(day_after_tomorrow(), 10))
    desk = world.users["desk"]
    response = await client.patch(
        f"/api/appointments/{appointment_id}",
        json={"status": "cancelled", "reason": "patient phoned"},
        headers=world.headers("desk"),
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    changed = await row(session, appointment_id)
    assert changed.status == "cancelled" and changed.cancelled_at is not None
    assert (changed.changed_by, changed.change_reason) == (desk.id, "patient phoned")
    assert changed.cancel_reason == "patient phoned"
    [event] = await events(session, appointment_id)
    assert event.action == audit.APPOINTMENT_STATUS_CHANGED
    assert event.actor_user_id == desk.id and event.patient_id == world.patients[0]
    assert event.details == {"from": "booked", "to": "cancelled", "reason": "patient phoned"}
    # The world's patients gave no address: nothing was planned, no notice is added.
    assert await notices(session, appointment_id) == []


async def test_a_cancellation_notice_goes_to_a_patient_with_an_address(client, world, session):
    await session.execute(
        text("UPDATE patients SET email = 'p0@mail.test', notify_by = 'email' WHERE id = :id"),
        {"id": world.patients[0]},
    )
    await session.commit()
    appointment_id = await book(client, world, at(day_after_tomorrow(), 10))
    before = await notices(session, appointment_id)
    assert ("confirmation", "pending") in before
    response = await client.patch(
        f"/api/appointments/{appointment_id}",
        json={"status": "cancelled"},
        headers=world.headers("patient0"),
    )
    assert response.status_code == 200, response.text
    after = await notices(session, appointment_id)
    assert after[: len(before)] == [(kind, "void") for kind, _ in before]
    assert after[len(before) :] == [("cancellation", "pending")]


async def test_refusals_write_nothing(client, world, session):
    appointment_id = await book(client, world, at(day_after_tomorrow(), 10))

    async def change(status, who):
        return await client.patch(
            f"/api/appointments/{appointment_id}",
            json={"status": status},
            headers=world.headers(who),
        )

    assert (await change("cancelled", "doctor")).status_code == 403  # not a doctor's to set
    assert (await change("no_show", "desk")).status_code == 422  # before the start
    assert (await change("cancelled", "other_desk")).status_code == 404  # not theirs to see
    assert (await change("checked_in", "doctor")).status_code == 422  # not the day yet
    await move_to_today(session, appointment_id)
    assert (await change("checked_in", "doctor")).status_code == 200
    assert (await change("checked_in", "doctor")).status_code == 422  # already
    assert [e.details["to"] for e in await events(session, appointment_id)] == ["checked_in"]
    assert (await row(session, appointment_id)).changed_by == world.users["doctor"].id


async def test_racing_changes_one_wins_the_other_gets_the_reason(client, world, session):
    """Two cancellations and a check-in at once: exactly one changes the row, the others
    answer 422 with the state the winner left, and the trail holds one event."""
    appointment_id = await book(client, world, at(day_after_tomorrow(), 10))
    await under_way(session, appointment_id)  # today: a check-in is possible
    bodies = [("cancelled", "patient0"), ("cancelled", "desk"), ("checked_in", "doctor")]
    responses = await asyncio.gather(
        *(
            client.patch(
                f"/api/appointments/{appointment_id}",
                json={"status": status},
                headers=world.headers(who),
            )
            for status, who in bodies
        )
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 422, 422], [r.text for r in responses]
    won = next(r.json()["status"] for r in responses if r.status_code == 200)
    assert (await row(session, appointment_id)).status == won
    assert [e.details["to"] for e in await events(session, appointment_id)] == [won]


async def test_bulk_update_audits_each_change_and_records_the_actor(client, world, session):
    day = day_after_tomorrow()
    ids = [await book(client, world, at(day, 9 + h), who=f"patient{h}") for h in range(3)]
    done = ids[2]
    assert (
        await client.patch(
            f"/api/appointments/{done}", json={"status": "cancelled"}, headers=world.headers("desk")
        )
    ).status_code == 200
    await move_to_today(session, *ids)  # a check-in only on the appointment's day
    response = await client.post(
        "/api/appointments/bulk-update",
        json={"appointment_ids": [*ids, 999_999], "status": "checked_in"},
        headers=world.headers("desk"),
    )
    assert response.status_code == 200, response.text
    results = {r["id"]: r["result"] for r in response.json()["results"]}
    assert results == {
        ids[0]: "updated",
        ids[1]: "updated",
        done: "invalid_transition",
        999_999: "not_found",
    }
    desk = world.users["desk"].id
    for appointment_id in ids[:2]:
        assert (await row(session, appointment_id)).changed_by == desk
        [event] = await events(session, appointment_id)
        assert event.actor_user_id == desk
        assert event.details == {"from": "booked", "to": "checked_in", "reason": None, "bulk": True}
    assert [e.details["to"] for e in await events(session, done)] == ["cancelled"]


async def test_leave_cancelling_bookings_audits_each_with_the_admin_and_the_exception(
    client, world, session
):
    day = day_after_tomorrow()
    hit = [await book(client, world, at(day, h), who=f"patient{h - 10}") for h in (10, 11)]
    response = await client.post(
        f"/api/doctors/{world.doctor_id}/exceptions",
        json={
            "starts_at": at(day, 9, 30).isoformat(),
            "ends_at": at(day, 12).isoformat(),
            "kind": "leave",
            "cancel_affected": True,
        },
        headers=world.headers("admin"),
    )
    assert response.status_code == 201, response.text
    exception_id = response.json()["exception"]["id"]
    admin = world.users["admin"].id
    for appointment_id in hit:
        changed = await row(session, appointment_id)
        assert changed.status == "cancelled"
        assert (changed.changed_by, changed.change_reason) == (admin, "doctor unavailable (leave)")
        [event] = await events(session, appointment_id)
        assert event.actor_user_id == admin
        assert event.details == {
            "from": "booked",
            "to": "cancelled",
            "reason": "doctor unavailable (leave)",
            "schedule_exception_id": exception_id,
            "kind": "leave",
        }


async def test_a_reschedule_records_who_and_audits_the_times(client, world, session):
    day = day_after_tomorrow()
    appointment_id = await book(client, world, at(day, 10))
    response = await client.patch(
        f"/api/appointments/{appointment_id}",
        json={"start": at(day, 14).isoformat(), "reason": "clashes with work"},
        headers=world.headers("patient0"),
    )
    assert response.status_code == 200, response.text
    changed = await row(session, appointment_id)
    assert changed.changed_by == world.users["patient0"].id
    assert changed.change_reason == "clashes with work"
    [event] = await events(session, appointment_id)
    assert event.action == audit.APPOINTMENT_RESCHEDULED

    def utc(hour, minute=0):
        return at(day, hour, minute).astimezone(dt.UTC).isoformat()

    assert event.details == {
        "from": [utc(10), utc(10, 30)],
        "to": [utc(14), utc(14, 30)],
        "reason": "clashes with work",
    }


async def test_the_statements_channels_are_the_ones_choose_channels_picks(session):
    """The cancellation notice's channels are chosen in SQL; they must agree with Python's
    (one row per channel: both of them for `both`)."""
    cases = list(
        itertools.product(
            ("email", "sms", "both", "none"), (None, "", "a@b.test"), (None, "", "+49 1")
        )
    )
    for notify_by, email, phone in cases:
        chosen = await session.scalar(
            text(
                f"SELECT {PATIENT_CHANNELS_SQL} FROM (SELECT CAST(:n AS text) AS notify_by, "
                "CAST(:e AS text) AS email, CAST(:p AS text) AS phone) p"
            ),
            {"n": notify_by, "e": email, "p": phone},
        )
        expected = list(choose_channels(notify_by, email, phone))
        assert chosen == expected, (notify_by, email, phone)
