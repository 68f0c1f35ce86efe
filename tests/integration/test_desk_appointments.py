"""The front desk's appointment rules over HTTP (issue #23 items 9, 10, 8): check-in on
the day only and its undo, staff booking beyond the per-doctor limit with a reason, and
bookings a leave left in place, moved or cancelled in bulk."""

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, text, update

from app.appointments.commands import CHECK_IN_UNDONE, LIMIT_OVERRIDDEN
from db.models import Appointment, AuditEvent, Notification
from tests.integration.world import at, day_after_tomorrow, make_world, move_to_today


@pytest.fixture
async def world(client, session, settings):
    return await make_world(session, settings.secret_key, patients=3)


async def book(client, world, start, who="patient0", **extra):
    body = {"doctor_id": world.doctor_id, "start": start.isoformat(), **extra}
    return await client.post("/api/appointments", json=body, headers=world.headers(who))


async def status(client, world, appointment_id, value, who="desk"):
    return await client.patch(
        f"/api/appointments/{appointment_id}", json={"status": value}, headers=world.headers(who)
    )


async def events(session, action):
    return list(await session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


async def test_a_check_in_waits_for_the_day_and_is_undone_within_minutes(client, world, session):
    first = (await book(client, world, at(day_after_tomorrow(), 9))).json()["id"]
    second = (await book(client, world, at(day_after_tomorrow(), 10))).json()["id"]
    early = await status(client, world, first, "checked_in")
    assert early.status_code == 422
    assert (
        early.json()["detail"] == "a patient can be checked in only on the day of the appointment"
    )
    await move_to_today(session, first, second)

    assert (await status(client, world, first, "checked_in")).status_code == 200
    assert (await status(client, world, first, "booked", who="patient0")).status_code == 403
    undone = await status(client, world, first, "booked")
    assert undone.status_code == 200 and undone.json()["status"] == "booked"
    row = await session.get(Appointment, first)
    await session.refresh(row)
    assert row.status == "booked" and row.checked_in_at is None
    (event,) = await events(session, CHECK_IN_UNDONE)
    assert (event.subject_id, event.actor_user_id) == (first, world.users["desk"].id)
    assert event.patient_id == world.patients[0] and event.details["checked_in_at"]

    # Eleven minutes after a check-in it stands.
    assert (await status(client, world, second, "checked_in")).status_code == 200
    await session.execute(
        update(Appointment)
        .where(Appointment.id == second)
        .values(checked_in_at=Appointment.checked_in_at - dt.timedelta(minutes=11))
    )
    await session.commit()
    late = await status(client, world, second, "booked")
    assert late.status_code == 422 and "within 10 minutes" in late.json()["detail"]
    assert len(await events(session, CHECK_IN_UNDONE)) == 1
    # Never in bulk: each undo has its own audit line.
    bulk = await client.post(
        "/api/appointments/bulk-update",
        json={"appointment_ids": [first], "status": "booked"},
        headers=world.headers("desk"),
    )
    assert bulk.status_code == 400 and "status" in bulk.text  # not in the schema's enum


async def test_staff_exceed_the_per_doctor_limit_only_with_a_recorded_reason(
    client, world, session
):
    day = day_after_tomorrow()
    for hour in (9, 10, 11):  # the limit is 3 future bookings with one doctor
        assert (await book(client, world, at(day, hour))).status_code == 201
    mine = await book(client, world, at(day, 12))
    assert mine.status_code == 422 and "override_reason" not in mine.json()["detail"]
    mine = await book(client, world, at(day, 12), override_reason="I insist")
    assert mine.status_code == 403

    desk = await book(client, world, at(day, 12), who="desk", patient_id=world.patients[0])
    assert desk.status_code == 422
    assert "at most 3" in desk.json()["detail"] and "override_reason" in desk.json()["detail"]
    blank = await book(
        client, world, at(day, 12), who="desk", patient_id=world.patients[0], override_reason=" "
    )
    assert blank.status_code == 400  # the schema: a reason says something
    assert await events(session, LIMIT_OVERRIDDEN) == []

    over = await book(
        client,
        world,
        at(day, 12),
        who="desk",
        patient_id=world.patients[0],
        override_reason="series of dressings after surgery",
    )
    assert over.status_code == 201, over.text
    (event,) = await events(session, LIMIT_OVERRIDDEN)
    assert event.subject_id == over.json()["id"] and event.patient_id == world.patients[0]
    assert event.actor_user_id == world.users["desk"].id
    assert event.details == {
        "reason": "series of dressings after surgery",
        "held": 3,
        "doctor_id": world.doctor_id,
    }
    # Under the limit a reason changes nothing and records nothing.
    other = await book(
        client, world, at(day, 13), who="desk", patient_id=world.patients[1], override_reason="x"
    )
    assert other.status_code == 201
    assert len(await events(session, LIMIT_OVERRIDDEN)) == 1


async def leave(client, world, start, end, **extra):
    response = await client.post(
        f"/api/doctors/{world.doctor_id}/exceptions",
        json={"starts_at": start.isoformat(), "ends_at": end.isoformat(), **extra},
        headers=world.headers("admin"),
    )
    assert response.status_code in (200, 201), response.text
    return response.json()


async def resolve(client, world, ids, action, who="desk"):
    return await client.post(
        "/api/appointments/conflicts",
        json={"appointment_ids": ids, "action": action},
        headers=world.headers(who),
    )


async def test_bookings_left_by_leave_are_marked_then_moved_or_cancelled(client, world, session):
    day = day_after_tomorrow()
    await session.execute(text("UPDATE patients SET email = 'p' || id || '@t.test'"))
    await session.commit()
    ids = [
        (await book(client, world, at(day, h), who=f"patient{h - 9}")).json()["id"]
        for h in (9, 10, 11)
    ]
    outside = (await book(client, world, at(day, 15), who="patient0")).json()["id"]
    ny = (
        await client.post(
            "/api/appointments",
            json={
                "doctor_id": world.other_doctor_id,
                "start": at(day, 10, tz=ZoneInfo("America/New_York")).isoformat(),
                "patient_id": world.patients[2],
            },
            headers=world.headers("admin"),
        )
    ).json()["id"]
    # 08:00-12:00 on leave, the bookings left in place; 12:00 is the first free time.
    result = await leave(client, world, at(day, 8), at(day, 12))
    assert result["cancelled"] is False and len(result["affected"]) == 3
    board = await client.get(
        "/desk", params={"date": day.isoformat()}, headers=world.headers("desk")
    )
    assert board.text.count('data-conflict="true"') == 3
    assert "3 appointments this day conflict with leave" in board.text

    assert (await resolve(client, world, ids, "move", who="doctor")).status_code == 403
    assert (await resolve(client, world, ids, "fly")).status_code == 400  # not in the enum
    moved = await resolve(client, world, [ids[0], ids[1], outside, ny, 999999], "move")
    assert moved.status_code == 200, moved.text
    results = {r["id"]: (r["result"], r["start"]) for r in moved.json()["results"]}
    assert results == {
        ids[0]: ("moved", at(day, 12).isoformat()),
        ids[1]: ("moved", at(day, 12, 30).isoformat()),
        outside: ("not_in_conflict", None),
        ny: ("not_found", None),  # another clinic's: like an unknown id
        999999: ("not_found", None),
    }
    # Each patient is told the new time: a fresh confirmation, due now.
    confirmations = await session.scalars(
        select(Notification.appointment_id).where(
            Notification.kind == "confirmation", Notification.status == "pending"
        )
    )
    assert {ids[0], ids[1]} <= set(confirmations)

    cancelled = await resolve(client, world, [ids[2]], "cancel")
    assert cancelled.json()["results"] == [
        {"id": ids[2], "result": "cancelled", "start": None, "detail": None}
    ]
    row = await session.get(Appointment, ids[2])
    await session.refresh(row)
    assert (
        row.status == "cancelled" and row.cancel_reason == "doctor unavailable (leave or closure)"
    )
    notice = await session.scalar(
        select(Notification.kind).where(
            Notification.appointment_id == ids[2], Notification.kind == "cancellation"
        )
    )
    assert notice == "cancellation"
    board = await client.get(
        "/desk", params={"date": day.isoformat()}, headers=world.headers("desk")
    )
    assert 'data-conflict="true"' not in board.text


async def test_no_free_time_leaves_the_booking_in_place(client, world, session):
    day = day_after_tomorrow()
    booked = (await book(client, world, at(day, 9))).json()["id"]
    # Leave from that day to the end of the horizon: nothing to move to.
    await leave(client, world, at(day, 8), at(day + dt.timedelta(days=120), 8))
    answer = await resolve(client, world, [booked], "move")
    assert answer.json()["results"][0]["result"] == "no_free_time"
    row = await session.get(Appointment, booked)
    assert row.starts_at == at(day, 9) and row.status == "booked"
    count = await session.scalar(text("SELECT count(*) FROM appointments WHERE status='booked'"))
    assert count == 1
