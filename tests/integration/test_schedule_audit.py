"""Schedule changes leave a trail: a replaced weekly template is kept (with who replaced
it, when and why) and audited; leave or a closure is audited with its actor and every
appointment it cancelled."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from app.access import audit
from app.scheduling import schedules
from db.models import AuditEvent, ScheduleTemplate
from tests.integration.test_booking_api import book
from tests.integration.world import at, day_after_tomorrow, make_world


@pytest.fixture
async def world(client, session, settings):
    return await make_world(session, settings.secret_key, patients=2)


async def events(session, action):
    query = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
    return list((await session.scalars(query)).all())


def week(start: int, end: int) -> list[dict]:
    return [
        {"weekday": d, "start": f"{start:02}:00", "end": f"{end:02}:00", "slot_minutes": 30}
        for d in range(5)
    ]


async def test_replacing_a_template_keeps_every_earlier_version_with_actor_and_reason(
    client, session, world
):
    path = f"/api/doctors/{world.doctor_id}/schedule"
    admin = world.users["admin"].id
    first = await client.put(
        path, json={"ranges": week(9, 17), "reason": "new hours"}, headers=world.headers("admin")
    )
    assert first.status_code == 200, first.text
    second = await client.put(path, json={"ranges": week(10, 12)}, headers=world.headers("admin"))
    assert second.status_code == 200, second.text

    history = await schedules.schedule_history(session, world.doctor_id)
    assert [(v.replaced_by, v.reason, len(v.ranges)) for v in history] == [
        (admin, None, 5),  # the 9-17 week, replaced second (no reason given)
        (admin, "new hours", 7),  # make_world's every-day 8-20, replaced first
    ]
    newest, oldest = history
    assert {(r.start, r.end) for r in newest.ranges} == {(dt.time(9), dt.time(17))}
    assert {(r.weekday, r.start, r.end) for r in oldest.ranges} == {
        (d, dt.time(8), dt.time(20)) for d in range(7)
    }
    assert newest.replaced_at > oldest.replaced_at
    live = await session.scalars(
        select(ScheduleTemplate.start_time).where(ScheduleTemplate.doctor_id == world.doctor_id)
    )
    assert set(live) == {dt.time(10)}  # availability reads only the live table

    replaced = await events(session, audit.SCHEDULE_REPLACED)
    assert [(e.actor_user_id, e.subject_type, e.subject_id) for e in replaced] == [
        (admin, "doctor", world.doctor_id)
    ] * 2
    assert [(e.details["ranges_before"], e.details["ranges_after"]) for e in replaced] == [
        (7, 5),
        (5, 5),
    ]
    assert replaced[0].details["reason"] == "new hours"
    assert dt.datetime.fromisoformat(replaced[0].details["replaced_at"]) == oldest.replaced_at


async def test_a_refused_template_changes_and_audits_nothing(client, session, world):
    extra = {"weekday": 0, "start": "11:00", "end": "13:00", "slot_minutes": 30}
    overlapping = [*week(9, 12), extra]
    refused = await client.put(
        f"/api/doctors/{world.doctor_id}/schedule",
        json={"ranges": overlapping},
        headers=world.headers("admin"),
    )
    assert refused.status_code == 422
    assert await schedules.schedule_history(session, world.doctor_id) == []
    assert await events(session, audit.SCHEDULE_REPLACED) == []


async def test_leave_is_audited_with_its_actor_and_the_appointments_it_cancelled(
    client, session, world
):
    day = day_after_tomorrow()
    booked = [
        (await book(client, world, at(day, hour), who=f"patient{i}")).json()["id"]
        for i, hour in enumerate((10, 11))
    ]
    span = {"starts_at": at(day, 9).isoformat(), "ends_at": at(day, 12).isoformat()}
    preview = await client.post(
        f"/api/doctors/{world.doctor_id}/exceptions",
        json={**span, "preview": True},
        headers=world.headers("admin"),
    )
    assert preview.status_code == 201
    assert await events(session, audit.EXCEPTION_ADDED) == []  # a preview changes nothing

    reported = await client.post(
        f"/api/doctors/{world.doctor_id}/exceptions",
        json={**span, "note": "conference"},
        headers=world.headers("admin"),
    )
    closure = await client.post(
        f"/api/clinics/{world.clinic_id}/exceptions",
        json={**span, "kind": "closure", "cancel_affected": True},
        headers=world.headers("admin"),
    )
    assert reported.status_code == closure.status_code == 201
    leave, closed = await events(session, audit.EXCEPTION_ADDED)
    admin = world.users["admin"].id
    assert (leave.actor_user_id, leave.subject_type) == (admin, "schedule_exception")
    assert leave.subject_id == reported.json()["exception"]["id"]
    assert leave.details["kind"] == "leave" and leave.details["note"] == "conference"
    assert leave.details["doctor_id"] == world.doctor_id
    assert leave.details["overlapping_appointment_ids"] == booked
    assert leave.details["cancelled_appointment_ids"] == []  # only reported
    assert closed.actor_user_id == admin and closed.details["doctor_id"] is None
    assert closed.details["cancelled_appointment_ids"] == booked
    assert closed.details["clinic_id"] == world.clinic_id
