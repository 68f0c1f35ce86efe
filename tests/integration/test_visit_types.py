"""Visit types through the API: managing them, availability and booking per type, and
buffers that no booking can enter."""

import datetime as dt

import pytest
from sqlalchemy import select, text

from db.models import AuditEvent, VisitType
from tests.integration.world import at, day_after_tomorrow, make_world

SLOTS = "/api/appointments/available-slots"


@pytest.fixture
async def world(client, session, settings):
    return await make_world(session, settings.secret_key, patients=3)


def types_url(world, doctor=None):
    return f"/api/doctors/{doctor or world.doctor_id}/visit-types"


async def add_type(client, world, **fields):
    body = {"name": "First visit", "minutes": 60, **fields}
    response = await client.post(types_url(world), json=body, headers=world.headers("admin"))
    assert response.status_code == 201, response.text
    return response.json()


async def typed_slots(client, world, day, visit_type_id, who="patient0"):
    params = {"doctor_id": world.doctor_id, "date": day.isoformat()}
    if visit_type_id is not None:
        params["visit_type_id"] = visit_type_id
    response = await client.get(SLOTS, params=params, headers=world.headers(who))
    assert response.status_code == 200, response.text
    return {
        dt.datetime.fromisoformat(s["start"]): (dt.datetime.fromisoformat(s["end"]), s["available"])
        for s in response.json()["slots"]
    }


async def book(client, world, start, who="patient0", **extra):
    body = {"doctor_id": world.doctor_id, "start": start.isoformat(), **extra}
    return await client.post("/api/appointments", json=body, headers=world.headers(who))


async def test_admins_manage_types_others_only_read_them(client, world, session):
    created = await add_type(client, world, buffer_after_minutes=15)
    assert created | {"id": 0} == {
        "id": 0,
        "doctor_id": world.doctor_id,
        "name": "First visit",
        "minutes": 60,
        "buffer_before_minutes": 0,
        "buffer_after_minutes": 15,
        "online": True,
        "min_notice_minutes": None,
        "horizon_days": None,
    }
    staff_only = await add_type(client, world, name="Procedure", minutes=45, online=False)
    for who in ("patient0", "desk", "doctor"):
        response = await client.post(
            types_url(world), json={"name": "X", "minutes": 10}, headers=world.headers(who)
        )
        assert response.status_code == 403, who
    # Patients see what they can book online; staff see every type.
    patient_view = await client.get(types_url(world), headers=world.headers("patient0"))
    assert [t["name"] for t in patient_view.json()] == ["First visit"]
    desk_view = await client.get(types_url(world), headers=world.headers("desk"))
    assert [t["name"] for t in desk_view.json()] == ["First visit", "Procedure"]
    # Bad input: 400 from the body's bounds, 409 for a name the doctor already uses.
    for bad in ({"name": "Y", "minutes": 3}, {"name": "", "minutes": 10}, {"minutes": 10}):
        response = await client.post(types_url(world), json=bad, headers=world.headers("admin"))
        assert response.status_code == 400, bad
    again = await client.post(
        types_url(world),
        json={"name": "first  VISIT", "minutes": 20},
        headers=world.headers("admin"),
    )
    assert again.status_code == 409
    changed = await client.patch(
        f"{types_url(world)}/{staff_only['id']}",
        json={"online": True, "horizon_days": 10},
        headers=world.headers("admin"),
    )
    assert changed.status_code == 200 and changed.json()["online"] is True
    assert changed.json()["horizon_days"] == 10 and changed.json()["minutes"] == 45
    # Another doctor's type is not found under this doctor.
    elsewhere = await client.patch(
        f"{types_url(world, world.other_doctor_id)}/{staff_only['id']}",
        json={"minutes": 30},
        headers=world.headers("admin"),
    )
    assert elsewhere.status_code == 404
    assert (
        await client.get(types_url(world, 10**9), headers=world.headers("admin"))
    ).status_code == 404
    actions = list(
        await session.scalars(
            select(AuditEvent.action).where(AuditEvent.subject_type == "visit_type")
        )
    )
    assert sorted(actions) == ["visit_type.changed", "visit_type.created", "visit_type.created"]


async def test_slots_of_a_type_are_on_the_grid_with_its_length_and_buffers(client, world):
    day = day_after_tomorrow()
    first = await add_type(client, world, buffer_after_minutes=15)
    slots = await typed_slots(client, world, day, first["id"])
    # 08:00-20:00 on a 30-minute grid: a 60-minute visit starts 08:00 to 19:00.
    assert min(slots) == at(day, 8) and max(slots) == at(day, 19)
    assert all(end - start == dt.timedelta(minutes=60) for start, (end, _) in slots.items())
    booked = await book(client, world, at(day, 10), visit_type_id=first["id"])
    assert booked.status_code == 201, booked.text
    assert booked.json()["end"] == at(day, 11).isoformat()
    assert booked.json()["visit_type_id"] == first["id"]
    after = await typed_slots(client, world, day, first["id"])
    free = {
        start.astimezone(at(day, 0).tzinfo).strftime("%H:%M")
        for start, (_, ok) in after.items()
        if ok
    }
    # 09:00 would run into the visit with its buffer; 11:00 starts inside the buffer.
    assert "08:30" in free and "09:00" not in free and "11:00" not in free
    assert "11:30" in free
    # The plain slots (no type) see the buffer too, and nobody can book into it.
    plain = await typed_slots(client, world, day, None)
    assert plain[at(day, 11)][1] is False and plain[at(day, 11, 30)][1] is True
    squeezed = await book(client, world, at(day, 11), who="patient1")
    assert squeezed.status_code == 409
    assert all(a["start"] != at(day, 11).isoformat() for a in squeezed.json()["alternatives"])


async def test_the_cache_follows_bookings_and_type_edits_exactly(client, world):
    day = day_after_tomorrow()
    first = await add_type(client, world)
    before = await typed_slots(client, world, day, first["id"])  # cached now
    assert before[at(day, 9, 30)][1] is True
    assert (await book(client, world, at(day, 10), who="patient1")).status_code == 201
    after = await typed_slots(client, world, day, first["id"])
    assert after[at(day, 9, 30)][1] is False  # a plain booking changed the typed day
    response = await client.patch(
        f"{types_url(world)}/{first['id']}",
        json={"minutes": 30, "buffer_before_minutes": 30},
        headers=world.headers("admin"),
    )
    assert response.status_code == 200
    edited = await typed_slots(client, world, day, first["id"])
    assert edited[at(day, 9)][0] == at(day, 9, 30)  # the new length, at once
    assert edited[at(day, 9)][1] is True and edited[at(day, 10, 30)][1] is False


async def test_staff_only_types_notice_and_horizon(client, world):
    day = day_after_tomorrow()
    procedure = await add_type(client, world, name="Procedure", online=False)
    refused = await book(client, world, at(day, 10), visit_type_id=procedure["id"])
    assert refused.status_code == 403
    params = {
        "doctor_id": world.doctor_id,
        "date": day.isoformat(),
        "visit_type_id": procedure["id"],
    }
    hidden = await client.get(SLOTS, params=params, headers=world.headers("patient0"))
    assert hidden.status_code == 403
    by_desk = await book(
        client,
        world,
        at(day, 10),
        who="desk",
        visit_type_id=procedure["id"],
        patient_id=world.patients[0],
    )
    assert by_desk.status_code == 201, by_desk.text
    soon = await add_type(client, world, name="Vaccination", minutes=30, horizon_days=1)
    slots = await typed_slots(client, world, day, soon["id"])
    assert not any(ok for _, ok in slots.values())  # the day after tomorrow: beyond 1 day
    beyond = await book(client, world, at(day, 15), visit_type_id=soon["id"])
    assert beyond.status_code == 422 and "1 days ahead" in beyond.text
    unknown = await book(client, world, at(day, 15), visit_type_id=10**9)
    assert unknown.status_code == 404
    other = await client.post(
        types_url(world, world.other_doctor_id),
        json={"name": "Other", "minutes": 30},
        headers=world.headers("admin"),
    )
    not_theirs = await book(client, world, at(day, 15), visit_type_id=other.json()["id"])
    assert not_theirs.status_code == 404


async def test_a_move_keeps_the_visit_length_and_buffers(client, world, session):
    day = day_after_tomorrow()
    first = await add_type(client, world, buffer_before_minutes=10, buffer_after_minutes=20)
    booked = (await book(client, world, at(day, 10), visit_type_id=first["id"])).json()
    # Off the type's fit: 19:30 + 60 minutes runs past 20:00.
    late = await client.patch(
        f"/api/appointments/{booked['id']}",
        json={"start": at(day, 19, 30).isoformat()},
        headers=world.headers("patient0"),
    )
    assert late.status_code == 422 and "runs past" in late.text
    moved = await client.patch(
        f"/api/appointments/{booked['id']}",
        json={"start": at(day, 14).isoformat()},
        headers=world.headers("patient0"),
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["end"] == at(day, 15).isoformat()
    blocked = await session.scalar(
        text("SELECT blocked FROM appointments WHERE id = :id"), {"id": booked["id"]}
    )
    assert (blocked.lower, blocked.upper) == (at(day, 13, 50), at(day, 15, 20))


async def test_a_type_with_bookings_ahead_cannot_be_deleted(client, world):
    day = day_after_tomorrow()
    first = await add_type(client, world)
    booked = (await book(client, world, at(day, 10), visit_type_id=first["id"])).json()
    url = f"{types_url(world)}/{first['id']}"
    refused = await client.delete(url, headers=world.headers("admin"))
    assert refused.status_code == 409
    assert (await client.delete(url, headers=world.headers("desk"))).status_code == 403
    cancelled = await client.patch(
        f"/api/appointments/{booked['id']}",
        json={"status": "cancelled"},
        headers=world.headers("patient0"),
    )
    assert cancelled.status_code == 200
    assert (await client.delete(url, headers=world.headers("admin"))).status_code == 204
    assert (await client.delete(url, headers=world.headers("admin"))).status_code == 404
    gone = await client.get(
        SLOTS,
        params={
            "doctor_id": world.doctor_id,
            "date": day.isoformat(),
            "visit_type_id": first["id"],
        },
        headers=world.headers("patient0"),
    )
    assert gone.status_code == 404


async def test_admin_pages_add_change_and_delete_types(client, session, settings):
    from tests.integration.auth_helpers import browser_login, csrf_from, make_user

    world = await make_world(session, settings.secret_key, patients=1)
    await make_user(session, "admin", "root@example.test")
    assert (await browser_login(client, "root@example.test")).status_code == 200
    url = f"/admin/doctors/{world.doctor_id}/visit-types"
    page = await client.get(url)
    assert page.status_code == 200 and "No visit types" in page.text
    token = csrf_from(page.text)
    form = {"csrf_token": token, "name": "Follow-up", "minutes": "abc", "online": "on"}
    wrong = await client.post(url, data=form)
    assert wrong.status_code == 200 and "must be a whole number" in wrong.text
    assert 'value="Follow-up"' in wrong.text  # what was typed stays
    form |= {"minutes": "10", "buffer_after_minutes": "5", "horizon_days": "14"}
    done = await client.post(url, data=form)
    assert done.status_code == 200 and "Added Follow-up" in done.text
    created = await session.scalar(select(VisitType).where(VisitType.doctor_id == world.doctor_id))
    assert (created.minutes, created.buffer_after_minutes, created.horizon_days) == (10, 5, 14)
    assert created.online and created.min_notice_minutes is None
    row = f"{url}/{created.id}"
    too_long = await client.post(row, data=form | {"minutes": "600", "action": "save"})
    assert "minutes must be between 5 and 480" in too_long.text
    saved = await client.post(
        row, data={**form, "minutes": "15", "action": "save"} | {"online": ""}
    )
    assert "Saved Follow-up" in saved.text
    await session.refresh(created)
    assert created.minutes == 15 and created.online is False
    deleted = await client.post(row, data={"csrf_token": token, "action": "delete"})
    assert "Deleted." in deleted.text and "No visit types" in deleted.text
    # Without the CSRF token nothing is written; a desk may not open the page at all.
    refused = await client.post(url, data={k: v for k, v in form.items() if k != "csrf_token"})
    assert refused.status_code == 403
    desk = await client.get(url, headers=world.headers("desk"))
    assert desk.status_code in (401, 403)


async def test_the_patient_page_chooses_a_type_and_books_it(client, session, settings):
    from tests.integration.auth_helpers import browser_login, csrf_from
    from tests.integration.world import PASSWORD

    world = await make_world(session, settings.secret_key, patients=1)
    day = day_after_tomorrow()
    path = f"/doctors/{world.doctor_id}/slots?date={day.isoformat()}"
    plain = await client.get(path)
    assert 'id="visit-type"' not in plain.text  # no types: the weekly hours' slots
    session.add_all(
        [
            VisitType(doctor_id=world.doctor_id, name="Follow-up", minutes=30),
            VisitType(
                doctor_id=world.doctor_id, name="Check-up", minutes=60, buffer_after_minutes=30
            ),
            VisitType(doctor_id=world.doctor_id, name="Surgery", minutes=90, online=False),
        ]
    )
    await session.commit()
    check_up = await session.scalar(select(VisitType).where(VisitType.name == "Check-up"))
    surgery = await session.scalar(select(VisitType).where(VisitType.name == "Surgery"))
    assert (await browser_login(client, "p0@t.test", PASSWORD)).status_code == 200
    page = await client.get(path)
    # The online types by name, the first chosen; the staff-only one is not offered.
    assert '<option value="' in page.text and "Check-up (60 min)" in page.text
    assert "Surgery" not in page.text
    assert f'<option value="{check_up.id}" selected>' in page.text
    assert f"visit_type_id={check_up.id}" in page.text  # the slots and the live socket
    assert (await client.get(f"{path}&visit_type_id={surgery.id}")).status_code == 404
    ten = at(day, 10).isoformat()
    panel = await client.get(
        f"/doctors/{world.doctor_id}/book",
        params={"start": ten, "visit_type_id": check_up.id},
        headers={"HX-Request": "true"},
    )
    assert f'name="visit_type_id" value="{check_up.id}"' in panel.text
    booked = await client.post(
        f"/doctors/{world.doctor_id}/book",
        data={
            "start": ten,
            "visit_type_id": str(check_up.id),
            "idempotency_key": "page-1",
            "csrf_token": csrf_from(page.text),
        },
        headers={"HX-Request": "true"},
    )
    assert booked.status_code == 200 and "Booked" in booked.text, booked.text
    row = (
        await session.execute(
            text("SELECT visit_type_id, ends_at, upper(blocked) FROM appointments")
        )
    ).one()
    assert row == (check_up.id, at(day, 11), at(day, 11, 30))


async def test_a_type_edit_leaves_the_plain_slots_cached(client, world, engine, redis):
    """Plain slots do not depend on the doctor's types: after a type edit they are still
    stored and served from the cache, while the type's own days are computed again."""
    from app.scheduling.slots import SlotCache

    day = day_after_tomorrow()
    first = await add_type(client, world)
    response = await client.patch(
        f"{types_url(world)}/{first['id']}", json={"minutes": 30}, headers=world.headers("admin")
    )
    assert response.status_code == 200
    cache = SlotCache(redis, engine)
    await cache.days(world.doctor_id, day, 1)
    await cache.days(world.doctor_id, day, 1)
    assert (cache.hits, cache.misses) == (1, 1)
    await cache.days(world.doctor_id, day, 1, visit_type_id=first["id"])
    typed = await cache.days(world.doctor_id, day, 1, visit_type_id=first["id"])
    assert (cache.hits, cache.misses) == (2, 2) and typed.visit_type.minutes == 30
    await client.patch(
        f"{types_url(world)}/{first['id']}", json={"minutes": 60}, headers=world.headers("admin")
    )
    edited = await cache.days(world.doctor_id, day, 1, visit_type_id=first["id"])
    assert cache.misses == 3 and edited.visit_type.minutes == 60
    await cache.days(world.doctor_id, day, 1)
    assert cache.hits == 3  # the plain day is still cached


async def test_neither_the_desk_nor_a_move_can_enter_a_buffer(client, world):
    """The desk's override skips the booking rules, not the buffers; a move into a buffer
    is refused like a booking (PostgreSQL's `no_overlap` compares the spans with buffers)."""
    day = day_after_tomorrow()
    first = await add_type(client, world, buffer_before_minutes=30, buffer_after_minutes=30)
    booked = await book(client, world, at(day, 10), visit_type_id=first["id"])
    assert booked.status_code == 201, booked.text  # blocks 09:30-11:30
    for start in (at(day, 9, 30), at(day, 11)):
        by_desk = await book(
            client,
            world,
            start,
            who="desk",
            patient_id=world.patients[1],
            override_reason="squeeze in",
        )
        assert by_desk.status_code == 409, by_desk.text
    later = await book(client, world, at(day, 12), who="patient2")
    assert later.status_code == 201, later.text
    for who in ("patient2", "desk"):
        moved = await client.patch(
            f"/api/appointments/{later.json()['id']}",
            json={"start": at(day, 11).isoformat()},
            headers=world.headers(who),
        )
        assert moved.status_code == 409, (who, moved.text)
    outside = await book(
        client,
        world,
        at(day, 11, 30),
        who="desk",
        patient_id=world.patients[1],
        override_reason="right after the buffer",
    )
    assert outside.status_code == 201, outside.text
