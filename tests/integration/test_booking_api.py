"""Booking through the real HTTP API: rules, conflicts, idempotency, reschedule, status, bulk."""

import datetime as dt

import pytest
from sqlalchemy import func, select

from db.models import Appointment
from tests.integration.world import at, day_after_tomorrow, make_world, move_to_today


@pytest.fixture
async def world(client, session, settings):
    return await make_world(session, settings.secret_key, patients=4)


async def slots(client, world, day, who="patient0", doctor=None):
    response = await client.get(
        "/api/appointments/available-slots",
        params={"doctor_id": doctor or world.doctor_id, "date": day.isoformat()},
        headers=world.headers(who),
    )
    assert response.status_code == 200, response.text
    return {s["start"]: s["available"] for s in response.json()["slots"]}


async def book(client, world, start, who="patient0", **extra):
    headers = world.headers(who) | extra.pop("headers", {})
    body = {"doctor_id": world.doctor_id, "start": start.isoformat(), **extra}
    return await client.post("/api/appointments", json=body, headers=headers)


async def count(session):
    return await session.scalar(select(func.count()).select_from(Appointment))


async def test_availability_shape_and_clinic_offsets(client, world):
    day = day_after_tomorrow()
    response = await client.get(
        "/api/appointments/available-slots",
        params={"doctor_id": world.doctor_id, "date": day.isoformat()},
        headers=world.headers("patient0"),
    )
    body = response.json()
    assert body["doctor_id"] == world.doctor_id
    assert body["date"] == day.isoformat()
    assert body["timezone"] == "Europe/Berlin"
    assert len(body["slots"]) == 24
    first = body["slots"][0]
    assert dt.datetime.fromisoformat(first["start"]) == at(day, 8)
    assert first["start"].endswith(("+01:00", "+02:00"))
    assert all(s["available"] for s in body["slots"])


async def test_week_form_returns_each_day(client, world):
    day = day_after_tomorrow()
    response = await client.get(
        "/api/appointments/available-slots",
        params={"doctor_id": world.doctor_id, "date": day.isoformat(), "days": 7},
        headers=world.headers("patient0"),
    )
    days = response.json()["days"]
    assert [d["date"] for d in days] == [(day + dt.timedelta(days=i)).isoformat() for i in range(7)]
    assert all(len(d["slots"]) == 24 for d in days)


async def test_book_then_the_slot_is_taken_and_a_second_booking_gets_409(client, world, session):
    day = day_after_tomorrow()
    start = at(day, 10)
    first = await book(client, world, start, reason="Cough")
    assert first.status_code == 201, first.text
    assert first.json()["status"] == "booked"
    assert first.json()["patient_id"] == world.patients[0]
    assert (await slots(client, world, day))[start.isoformat()] is False

    second = await book(client, world, start, who="patient1")
    assert second.status_code == 409
    body = second.json()
    assert body["detail"] == "this time has just been taken"
    free = await slots(client, world, day)
    assert body["alternatives"]
    for alternative in body["alternatives"]:
        assert (
            free[
                dt.datetime.fromisoformat(alternative["start"]).astimezone(start.tzinfo).isoformat()
            ]
            is True
        )
    assert await count(session) == 1


@pytest.mark.parametrize(
    ("shift", "why"),
    [
        (dt.timedelta(minutes=10), "slot grid"),
        (dt.timedelta(hours=-13), "slot grid"),  # 21:00 the evening before, after hours
    ],
)
async def test_off_grid_starts_are_422(client, world, shift, why):
    response = await book(client, world, at(day_after_tomorrow(), 10) + shift)
    assert response.status_code == 422
    assert why in response.json()["detail"]


async def test_past_horizon_notice_and_leave_are_422(client, world, settings):
    today = dt.datetime.now(world_tz()).date()
    past = await book(client, world, at(today - dt.timedelta(days=1), 10))
    assert past.status_code == 422 and "past" in past.json()["detail"]
    far = today + dt.timedelta(days=settings.booking_horizon_days + 2)
    beyond = await book(client, world, at(far, 10))
    assert beyond.status_code == 422 and "ahead" in beyond.json()["detail"]

    day = day_after_tomorrow()
    leave = await client.post(
        f"/api/doctors/{world.doctor_id}/exceptions",
        json={"starts_at": at(day, 12).isoformat(), "ends_at": at(day, 14).isoformat()},
        headers=world.headers("admin"),
    )
    assert leave.status_code == 201, leave.text
    on_leave = await book(client, world, at(day, 12, 30))
    assert on_leave.status_code == 422 and "not available" in on_leave.json()["detail"]


async def test_an_exception_over_bookings_reports_them_and_cancels_only_when_asked(
    client, world, session
):
    day = day_after_tomorrow()
    hit = [
        (await book(client, world, at(day, h), who=f"patient{i}")).json()["id"]
        for i, h in ((0, 10), (1, 11))
    ]
    spared = (await book(client, world, at(day, 15), who="patient2")).json()["id"]
    span = {"starts_at": at(day, 9, 30).isoformat(), "ends_at": at(day, 12).isoformat()}

    async def status(appointment_id):
        row = await session.get(Appointment, appointment_id, populate_existing=True)
        return row.status

    preview = await client.post(
        f"/api/doctors/{world.doctor_id}/exceptions",
        json={**span, "preview": True, "cancel_affected": True},
        headers=world.headers("admin"),
    )
    assert preview.status_code == 201, preview.text
    assert preview.json()["exception"] is None and preview.json()["cancelled"] is False
    assert sorted(a["id"] for a in preview.json()["affected"]) == sorted(hit)
    assert (await slots(client, world, day))[at(day, 9, 30).isoformat()] is True  # nothing saved

    leave = await client.post(
        f"/api/doctors/{world.doctor_id}/exceptions",
        json=span,
        headers=world.headers("admin"),
    )
    assert leave.status_code == 201, leave.text
    body = leave.json()
    assert body["exception"]["doctor_id"] == world.doctor_id and body["cancelled"] is False
    affected = sorted(body["affected"], key=lambda a: a["start"])
    assert [a["id"] for a in affected] == hit
    assert [a["patient_id"] for a in affected] == world.patients[:2]
    assert [await status(i) for i in (*hit, spared)] == ["booked"] * 3  # reported, kept

    closure = await client.post(
        f"/api/clinics/{world.clinic_id}/exceptions",
        json={**span, "kind": "closure", "cancel_affected": True},
        headers=world.headers("admin"),
    )
    assert closure.status_code == 201, closure.text
    assert closure.json()["exception"]["doctor_id"] is None
    assert closure.json()["cancelled"] is True
    assert sorted(a["id"] for a in closure.json()["affected"]) == sorted(hit)
    assert [await status(i) for i in (*hit, spared)] == ["cancelled", "cancelled", "booked"]
    free = await slots(client, world, day)
    assert free[at(day, 10).isoformat()] is False  # inside the leave: cancelled, not bookable
    assert free[at(day, 15).isoformat()] is False  # still held by the spared booking
    assert free[at(day, 14).isoformat()] is True


def world_tz():
    from tests.integration.world import BERLIN

    return BERLIN


async def test_a_patient_may_hold_only_a_few_future_appointments_per_doctor(
    client, world, settings
):
    day = day_after_tomorrow()
    limit = settings.max_future_appointments_per_doctor
    for i in range(limit):
        assert (await book(client, world, at(day, 9 + i))).status_code == 201
    over = await book(client, world, at(day, 15))
    assert over.status_code == 422
    assert "at most" in over.json()["detail"]


async def test_who_may_book_for_whom(client, world, session):
    start = at(day_after_tomorrow(), 11)
    other = await book(client, world, start, patient_id=world.patients[1])
    assert other.status_code == 403  # a patient books only for themself
    doctor = await book(client, world, start, who="doctor", patient_id=world.patients[1])
    assert doctor.status_code == 403
    elsewhere = await book(client, world, start, who="other_desk", patient_id=world.patients[1])
    assert elsewhere.status_code == 403  # another clinic's front desk
    anonymous = await client.post(
        "/api/appointments", json={"doctor_id": world.doctor_id, "start": start.isoformat()}
    )
    assert anonymous.status_code == 401
    assert await count(session) == 0
    unknown = await book(client, world, start, who="desk", patient_id=max(world.patients) + 99)
    assert unknown.status_code == 422
    assert "does not exist" in unknown.json()["detail"]
    assert await count(session) == 0
    desk = await book(client, world, start, who="desk", patient_id=world.patients[1])
    assert desk.status_code == 201
    assert desk.json()["patient_id"] == world.patients[1]


async def test_idempotent_retry_returns_the_original(client, world, session):
    start = at(day_after_tomorrow(), 9)
    key = {"Idempotency-Key": "retry-1"}
    first = await book(client, world, start, headers=key, reason="Back pain")
    again = await book(client, world, start, headers=key, reason="Back pain")
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    different = await book(client, world, start + dt.timedelta(hours=1), headers=key)
    assert different.status_code == 422
    assert "Idempotency-Key" in different.json()["detail"]
    assert await count(session) == 1


async def test_reschedule_is_atomic(client, world, session):
    day = day_after_tomorrow()
    mine = (await book(client, world, at(day, 9))).json()
    theirs = (await book(client, world, at(day, 10), who="patient1")).json()
    path = f"/api/appointments/{mine['id']}"

    taken = await client.patch(
        path, json={"start": at(day, 10).isoformat()}, headers=world.headers("patient0")
    )
    assert taken.status_code == 409
    unchanged = await session.get(Appointment, mine["id"])
    await session.refresh(unchanged)
    assert unchanged.starts_at == at(day, 9)

    moved = await client.patch(
        path, json={"start": at(day, 11).isoformat()}, headers=world.headers("patient0")
    )
    assert moved.status_code == 200, moved.text
    free = await slots(client, world, day)
    assert free[at(day, 9).isoformat()] is True
    assert free[at(day, 11).isoformat()] is False
    assert free[at(day, 10).isoformat()] is False
    assert theirs["id"] != mine["id"]


async def test_status_machine(client, world, session):
    day = day_after_tomorrow()
    appointment = (await book(client, world, at(day, 9))).json()
    path = f"/api/appointments/{appointment['id']}"

    async def set_status(status, who):
        return await client.patch(path, json={"status": status}, headers=world.headers(who))

    assert (await set_status("checked_in", "patient0")).status_code == 403
    assert (await set_status("no_show", "desk")).status_code == 422  # not started yet
    assert (await set_status("flying", "desk")).status_code == 400  # not in the schema's enum
    early = await set_status("checked_in", "desk")
    assert early.status_code == 422 and "on the day of the appointment" in early.json()["detail"]
    await move_to_today(session, appointment["id"])
    assert (await set_status("checked_in", "desk")).status_code == 200
    assert (await set_status("completed", "doctor")).status_code == 200
    assert (await set_status("cancelled", "desk")).status_code == 422  # completed is final
    other = (await book(client, world, at(day, 10))).json()
    cancel = await client.patch(
        f"/api/appointments/{other['id']}",
        json={"status": "cancelled", "reason": "better"},
        headers=world.headers("patient0"),
    )
    assert cancel.status_code == 200
    assert (await slots(client, world, day))[at(day, 10).isoformat()] is True
    rebook = await book(client, world, at(day, 10), who="patient1")
    assert rebook.status_code == 201


async def test_other_peoples_appointments_are_404(client, world):
    appointment = (await book(client, world, at(day_after_tomorrow(), 9))).json()
    path = f"/api/appointments/{appointment['id']}"
    assert (await client.get(path, headers=world.headers("patient1"))).status_code == 404
    assert (await client.get(path, headers=world.headers("other_desk"))).status_code == 404
    assert (await client.get(path, headers=world.headers("desk"))).status_code == 200
    assert (await client.get(path, headers=world.headers("doctor"))).status_code == 200
    cancel = await client.patch(
        path, json={"status": "cancelled"}, headers=world.headers("patient1")
    )
    assert cancel.status_code == 404


async def test_bulk_update_reports_each_id(client, world, session):
    day = day_after_tomorrow()
    ids = []
    for i, hour in enumerate((9, 10, 11)):
        response = await book(client, world, at(day, hour), who=f"patient{i}")
        ids.append(response.json()["id"])
    done = ids[2]
    await client.patch(
        f"/api/appointments/{done}", json={"status": "cancelled"}, headers=world.headers("desk")
    )
    ny = await book_in_new_york(client, world, day)
    await move_to_today(session, ids[0], ids[1])
    response = await client.post(
        "/api/appointments/bulk-update",
        json={
            "appointment_ids": [ids[0], ids[1], done, ny.json()["id"], 999999],
            "status": "checked_in",
        },
        headers=world.headers("desk"),
    )
    assert response.status_code == 200
    results = {r["id"]: r["result"] for r in response.json()["results"]}
    assert results == {
        ids[0]: "updated",
        ids[1]: "updated",
        done: "invalid_transition",
        ny.json()["id"]: "not_found",  # another clinic's: same answer as an unknown id
        999999: "not_found",
    }
    statuses = dict((await session.execute(select(Appointment.id, Appointment.status))).all())
    assert statuses[ids[0]] == statuses[ids[1]] == "checked_in"
    assert statuses[ny.json()["id"]] == "booked"
    patient = await client.post(
        "/api/appointments/bulk-update",
        json={"appointment_ids": [ids[0]], "status": "completed"},
        headers=world.headers("patient0"),
    )
    assert patient.status_code == 403


async def book_in_new_york(client, world, day):
    """Another clinic's appointment: the New York desk books its doctor at 10:00 there."""
    response = await client.post(
        "/api/appointments",
        json={
            "doctor_id": world.other_doctor_id,
            "patient_id": world.patients[3],
            "start": at(day, 10, tz=_ny()).isoformat(),
        },
        headers=world.headers("other_desk"),
    )
    assert response.status_code == 201, response.text
    return response


def _ny():
    from zoneinfo import ZoneInfo

    return ZoneInfo("America/New_York")


async def test_lists_are_scoped_and_paginate(client, world):
    day = day_after_tomorrow()
    for hour in range(8, 20):  # 12 bookings, 3 per patient (the per-doctor limit)
        response = await book(
            client, world, at(day, hour), who="desk", patient_id=world.patients[hour % 4]
        )
        assert response.status_code == 201, response.text
    mine = await client.get("/api/appointments", headers=world.headers("patient0"))
    assert mine.status_code == 200
    assert {i["patient_id"] for i in mine.json()["items"]} == {world.patients[0]}
    assert len(mine.json()["items"]) == 3

    seen, cursor = [], None
    while True:
        params = {"clinic_id": world.clinic_id, "date": day.isoformat(), "limit": 5}
        if cursor:
            params["cursor"] = cursor
        page = (
            await client.get("/api/appointments", params=params, headers=world.headers("desk"))
        ).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 12
    starts = [i for i in seen]
    assert starts == sorted(starts)  # booked in time order, so ids rise with time
    other = await client.get(
        "/api/appointments",
        params={"clinic_id": world.clinic_id, "date": day.isoformat()},
        headers=world.headers("other_desk"),
    )
    assert other.json()["items"] == []
    bad = await client.get(
        "/api/appointments", params={"cursor": "nonsense!"}, headers=world.headers("desk")
    )
    assert bad.status_code == 422


async def test_bad_input_is_4xx(client, world):
    bad_json = await client.post(
        "/api/appointments",
        content=b"{not json",
        headers=world.headers("patient0") | {"Content-Type": "application/json"},
    )
    assert bad_json.status_code == 400
    wrong_type = await client.post(
        "/api/appointments",
        json={"doctor_id": "seven", "start": "tomorrow"},
        headers=world.headers("patient0"),
    )
    assert wrong_type.status_code == 400
    unknown = await client.post(
        "/api/appointments",
        json={
            "doctor_id": world.doctor_id,
            "start": at(day_after_tomorrow(), 9).isoformat(),
            "colour": "blue",
        },
        headers=world.headers("patient0"),
    )
    assert unknown.status_code == 400
    naive = await client.post(
        "/api/appointments",
        json={"doctor_id": world.doctor_id, "start": "2030-01-01T09:00:00"},
        headers=world.headers("patient0"),
    )
    assert naive.status_code == 422
    missing = await book(client, world, at(day_after_tomorrow(), 9))
    assert missing.status_code == 201
    no_doctor = await client.post(
        "/api/appointments",
        json={"doctor_id": 424242, "start": at(day_after_tomorrow(), 9).isoformat()},
        headers=world.headers("patient0"),
    )
    assert no_doctor.status_code == 404


async def test_a_doctor_bulk_updates_only_what_doctors_may_set(client, world, session):
    """Doctors run their own day in bulk (check in, complete, no-show); a status their role
    may never set is `forbidden` per id for their own appointments, and another doctor's
    appointment is `not_found` like an unknown id."""
    day = day_after_tomorrow()
    mine = [
        (await book(client, world, at(day, h), who=f"patient{h - 9}")).json()["id"] for h in (9, 10)
    ]
    theirs = await book_in_new_york(client, world, day)
    ids = [*mine, theirs.json()["id"]]

    async def bulk(status):
        response = await client.post(
            "/api/appointments/bulk-update",
            json={"appointment_ids": ids, "status": status},
            headers=world.headers("doctor"),
        )
        assert response.status_code == 200, response.text
        return {r["id"]: r["result"] for r in response.json()["results"]}

    assert await bulk("cancelled") == {
        mine[0]: "forbidden",
        mine[1]: "forbidden",
        ids[2]: "not_found",
    }
    assert await bulk("checked_in") == {
        mine[0]: "invalid_transition",  # not their day yet
        mine[1]: "invalid_transition",
        ids[2]: "not_found",
    }
    await move_to_today(session, *mine)
    assert await bulk("checked_in") == {mine[0]: "updated", mine[1]: "updated", ids[2]: "not_found"}
    statuses = dict((await session.execute(select(Appointment.id, Appointment.status))).all())
    assert [statuses[i] for i in ids] == ["checked_in", "checked_in", "booked"]
    back = await client.post(
        "/api/appointments/bulk-update",
        json={"appointment_ids": mine, "status": "booked"},
        headers=world.headers("desk"),
    )
    assert back.status_code == 400  # never back to booked in bulk: not in the enum
