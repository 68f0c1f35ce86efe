"""The waitlist through the real API and a real worker (in process): joining, a freed slot
offered to the first in line and held, accept, decline, expiry, leaving, who may do what."""

import datetime as dt

import pytest
from sqlalchemy import func, select, text, update

from app.waitlist.report import waitlist_report
from db.models import (
    Appointment,
    Notification,
    Patient,
    VisitType,
    WaitlistEntry,
    WaitlistOffer,
)
from tests.integration.notification_servers import eventually, running_worker
from tests.integration.world import at, day_after_tomorrow, make_world


@pytest.fixture
async def world(client, session, settings):
    return await make_world(session, settings.secret_key, patients=5)


@pytest.fixture
async def worker(client, settings, monkeypatch):
    async with running_worker(settings, monkeypatch) as running:
        yield running


def wish(world, day, **extra):
    return {"doctor_id": world.doctor_id, "from": day.isoformat(), "to": day.isoformat(), **extra}


async def join(client, world, who, day, **extra):
    response = await client.post(
        "/api/waitlist", json=wish(world, day, **extra), headers=world.headers(who)
    )
    assert response.status_code == 201, response.text
    return response.json()


async def book(client, world, start, who):
    body = {"doctor_id": world.doctor_id, "start": start.isoformat()}
    response = await client.post("/api/appointments", json=body, headers=world.headers(who))
    return response


async def cancel(client, world, appointment_id, who):
    response = await client.patch(
        f"/api/appointments/{appointment_id}",
        json={"status": "cancelled"},
        headers=world.headers(who),
    )
    assert response.status_code == 200, response.text


async def open_offers(client, world, who):
    response = await client.get("/api/offers", headers=world.headers(who))
    assert response.status_code == 200, response.text
    return [o for o in response.json()["items"] if o["status"] == "open"]


async def available(client, world, day, start, who="patient4"):
    response = await client.get(
        "/api/appointments/available-slots",
        params={"doctor_id": world.doctor_id, "date": day.isoformat()},
        headers=world.headers(who),
    )
    return {s["start"]: s["available"] for s in response.json()["slots"]}[start.isoformat()]


async def _one_slot_day(client, world):
    """A day whose only free slot, once freed, is 10:00 (the rest booked by patient 0)."""
    day = day_after_tomorrow()
    ids = {}
    for i in range(24):
        moment = at(day, 8) + dt.timedelta(minutes=30 * i)
        response = await client.post(
            "/api/appointments",
            json={
                "doctor_id": world.doctor_id,
                "start": moment.isoformat(),
                "patient_id": world.patients[0],
                "override_reason": "fill the day",
            },
            headers=world.headers("desk"),
        )
        assert response.status_code == 201, response.text
        ids[moment] = response.json()["id"]
    return day, at(day, 10), ids


async def test_a_freed_slot_is_held_for_the_first_in_line_who_accepts_it(
    client, world, worker, session
):
    day, start, ids = await _one_slot_day(client, world)
    await session.execute(
        update(Patient)
        .where(Patient.id == world.patients[1])
        .values(email="p1@example.test", phone="+4915100000001")
    )
    await session.commit()
    first = await join(client, world, "patient1", day, earliest="09:00", latest="12:00")
    await join(client, world, "patient2", day)
    assert first["status"] == "waiting"

    await cancel(client, world, ids[start], "desk")
    (offer,) = await eventually(lambda: open_offers(client, world, "patient1"))
    assert dt.datetime.fromisoformat(offer["start"]) == start
    assert (offer["visit_type_id"], offer["visit_type_name"]) == (None, None)  # plain slot
    assert await open_offers(client, world, "patient2") == []  # one slot, one offer
    # Held: nobody else sees it free or can book it.
    assert await available(client, world, day, start) is False
    assert (await book(client, world, start, "patient3")).status_code == 409
    # The offer is told by the outbox, on every channel the patient has an address for.
    channels = await session.scalars(
        select(Notification.channel).where(Notification.kind == "offer")
    )
    assert sorted(channels) == ["email", "sms"]

    accepted = await client.post(
        f"/api/offers/{offer['id']}/accept", headers=world.headers("patient1")
    )
    assert accepted.status_code == 201, accepted.text
    body = accepted.json()
    assert body["status"] == "booked" and body["patient_id"] == world.patients[1]
    assert dt.datetime.fromisoformat(body["start"]) == start
    again = await client.post(
        f"/api/offers/{offer['id']}/accept", headers=world.headers("patient1")
    )
    assert again.status_code == 409
    entry = await session.get(WaitlistEntry, first["id"])
    await session.refresh(entry)
    assert entry.status == "booked"
    mine = await client.get("/api/appointments", headers=world.headers("patient1"))
    assert [a["id"] for a in mine.json()["items"]] == [body["id"]]
    assert await available(client, world, day, start) is False

    # The figures: one offer made and accepted; one freed slot, refilled.
    # The range covers the clinic's local day whatever the hour: the dashboard's default
    # range ends on today's UTC date, a day behind a clinic east of UTC late in the
    # evening (an hour a day for Berlin; the closing note names it).
    first, last = dt.date.today() - dt.timedelta(days=1), dt.date.today() + dt.timedelta(days=1)
    report = await waitlist_report(await session.connection(), first, last, world.clinic_id)
    assert (report.made, report.accepted, report.expired) == (1, 1, 0)
    assert (report.freed, report.refilled) == (1, 1)
    assert report.median_seconds is not None and report.median_seconds >= 0
    await session.commit()
    dashboard = await client.get(
        f"/analytics?from={first}&to={last}", headers=world.headers("desk")
    )
    assert 'data-figure="offers-accepted">1<' in dashboard.text
    scraped = (await client.get("/metrics")).text
    assert 'medbook_waitlist_offers{status="accepted"} 1.0' in scraped


async def test_declined_and_expired_offers_go_to_the_next_in_line(client, world, worker, session):
    day, start, ids = await _one_slot_day(client, world)
    for who in ("patient1", "patient2", "patient3"):
        await join(client, world, who, day)
    await cancel(client, world, ids[start], "desk")
    (first,) = await eventually(lambda: open_offers(client, world, "patient1"))

    declined = await client.post(
        f"/api/offers/{first['id']}/decline", headers=world.headers("patient1")
    )
    assert declined.status_code == 200, declined.text
    (second,) = await eventually(lambda: open_offers(client, world, "patient2"))
    assert second["start"] == first["start"]
    assert await open_offers(client, world, "patient1") == []  # never offered it again

    # The second lapses: the sweeper (the cron's job, run here) releases it.
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    await session.execute(
        update(WaitlistOffer).where(WaitlistOffer.id == second["id"]).values(expires_at=past)
    )
    await session.execute(
        update(Appointment).where(Appointment.status == "held").values(hold_expires_at=past)
    )
    await session.commit()
    assert await available(client, world, day, start) is False
    await worker.queue.enqueue("sweep_waitlist")
    (third,) = await eventually(lambda: open_offers(client, world, "patient3"))
    assert third["start"] == first["start"]
    statuses = dict((await session.execute(select(WaitlistOffer.id, WaitlistOffer.status))).all())
    assert statuses[first["id"]] == "declined"
    assert statuses[second["id"]] == "expired"
    held = await session.scalar(select(func.count()).where(Appointment.status == "held"))
    assert held == 1  # only the third's hold


async def test_the_expiry_job_releases_a_hold_on_its_own(client, world, worker, session, settings):
    """Expiry needs no request: the job scheduled at the offer's end releases it."""
    from tasks.waitlist import expire_offer

    day, start, ids = await _one_slot_day(client, world)
    await join(client, world, "patient1", day)
    await cancel(client, world, ids[start], "desk")
    (offer,) = await eventually(lambda: open_offers(client, world, "patient1"))
    assert await expire_offer({"services": worker.context["services"]}, offer_id=offer["id"]) == 0
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    await session.execute(update(WaitlistOffer).values(expires_at=past))
    await session.execute(
        update(Appointment).where(Appointment.status == "held").values(hold_expires_at=past)
    )
    await session.commit()
    assert await expire_offer({"services": worker.context["services"]}, offer_id=offer["id"]) == 1
    assert await available(client, world, day, start) is True
    refused = await client.post(
        f"/api/offers/{offer['id']}/accept", headers=world.headers("patient1")
    )
    assert refused.status_code == 409


async def test_leaving_releases_the_open_offer_to_the_next(client, world, worker, session):
    day, start, ids = await _one_slot_day(client, world)
    entry = await join(client, world, "patient1", day)
    await join(client, world, "patient2", day)
    await cancel(client, world, ids[start], "desk")
    await eventually(lambda: open_offers(client, world, "patient1"))
    left = await client.delete(f"/api/waitlist/{entry['id']}", headers=world.headers("patient1"))
    assert left.status_code == 200, left.text
    await eventually(lambda: open_offers(client, world, "patient2"))
    listed = await client.get("/api/waitlist", headers=world.headers("patient1"))
    assert listed.json()["items"] == []


async def test_who_may_join_see_and_leave(client, world):
    day = day_after_tomorrow()
    # the desk joins for a patient of its clinic's doctor; not for another clinic's
    by_desk = await client.post(
        "/api/waitlist",
        json=wish(world, day, patient_id=world.patients[1]),
        headers=world.headers("desk"),
    )
    assert by_desk.status_code == 201, by_desk.text
    other = await client.post(
        "/api/waitlist",
        json=wish(world, day, patient_id=world.patients[1]),
        headers=world.headers("other_desk"),
    )
    assert other.status_code == 403
    assert (
        await client.post("/api/waitlist", json=wish(world, day), headers=world.headers("doctor"))
    ).status_code == 403
    # a patient only for themself
    for_other = await client.post(
        "/api/waitlist",
        json=wish(world, day, patient_id=world.patients[2]),
        headers=world.headers("patient1"),
    )
    assert for_other.status_code == 403
    # the desk sees its clinic's list, a patient only their own, another desk nothing
    desk_list = (await client.get("/api/waitlist", headers=world.headers("desk"))).json()["items"]
    assert [e["patient_id"] for e in desk_list] == [world.patients[1]]
    assert (await client.get("/api/waitlist", headers=world.headers("other_desk"))).json()[
        "items"
    ] == []
    assert (await client.get("/api/waitlist", headers=world.headers("patient2"))).json()[
        "items"
    ] == []
    stranger = await client.delete(
        f"/api/waitlist/{by_desk.json()['id']}", headers=world.headers("patient2")
    )
    assert stranger.status_code == 404
    assert (await client.get("/api/offers", headers=world.headers("desk"))).status_code == 403
    assert (
        await client.post("/api/offers/1/accept", headers=world.headers("patient2"))
    ).status_code == 404


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"to": "2000-01-01", "from": "2000-01-01"}, "over"),
        ({"latest": "09:00", "earliest": "10:00"}, "after"),
        ({"doctor_id": None}, "either"),
        ({"clinic_id": 1, "specialty": "GP"}, "either"),
        ({"weekdays": [7]}, None),
        ({"to": "not a day"}, None),
    ],
)
async def test_bad_wishes_are_refused_with_a_reason(client, world, change, why):
    body = wish(world, day_after_tomorrow()) | change
    body = {k: v for k, v in body.items() if v is not None}
    response = await client.post("/api/waitlist", json=body, headers=world.headers("patient1"))
    assert response.status_code in (400, 422), response.text
    if why:
        assert why in response.json()["detail"]


async def test_a_patient_waits_in_at_most_ten_entries(client, world):
    from app.waitlist.entries import MAX_WAITING_PER_PATIENT

    day = day_after_tomorrow()
    for _ in range(MAX_WAITING_PER_PATIENT):
        await join(client, world, "patient1", day)
    over = await client.post(
        "/api/waitlist", json=wish(world, day), headers=world.headers("patient1")
    )
    assert over.status_code == 422
    assert "at most" in over.json()["detail"]


async def test_a_hold_cannot_be_changed_as_an_appointment(client, world, worker, session):
    day, start, ids = await _one_slot_day(client, world)
    await join(client, world, "patient1", day)
    await cancel(client, world, ids[start], "desk")
    await eventually(lambda: open_offers(client, world, "patient1"))
    hold = await session.scalar(text("SELECT id FROM appointments WHERE status = 'held'"))
    for who in ("desk", "admin", "patient1"):
        response = await client.patch(
            f"/api/appointments/{hold}", json={"status": "cancelled"}, headers=world.headers(who)
        )
        # not an appointment to the API (404), or refused by the rules (422)
        assert response.status_code in (404, 422), (who, response.text)
    bulk = await client.post(
        "/api/appointments/bulk-update",
        json={"appointment_ids": [hold], "status": "cancelled"},
        headers=world.headers("admin"),
    )
    assert "updated" not in bulk.text
    assert (
        await session.scalar(text("SELECT status FROM appointments WHERE id = :i"), {"i": hold})
        == "held"
    )


async def test_withdrawn_leave_frees_slots_for_the_waitlist(client, world, worker):
    """Capacity also frees up when leave is withdrawn: the schedule change asks for a
    refill, and the first in line is offered a slot of the reopened day."""
    day = day_after_tomorrow()
    leave = await client.post(
        f"/api/doctors/{world.doctor_id}/exceptions",
        json={
            "starts_at": at(day, 0).isoformat(),
            "ends_at": at(day + dt.timedelta(days=1), 0).isoformat(),
            "note": "conference",
        },
        headers=world.headers("admin"),
    )
    assert leave.status_code == 201, leave.text
    await join(client, world, "patient1", day, earliest="11:00", latest="11:30")
    assert await open_offers(client, world, "patient1") == []
    withdrawn = await client.delete(
        f"/api/doctors/{world.doctor_id}/exceptions/{leave.json()['exception']['id']}",
        headers=world.headers("admin"),
    )
    assert withdrawn.status_code in (200, 204), withdrawn.text
    (offer,) = await eventually(lambda: open_offers(client, world, "patient1"))
    assert dt.datetime.fromisoformat(offer["start"]) == at(day, 11)


async def test_a_typed_entry_is_held_a_visit_of_its_type_with_its_buffers(
    client, world, worker, session
):
    checkup = VisitType(
        doctor_id=world.doctor_id, name="Check-up", minutes=30, buffer_after_minutes=30
    )
    session.add(checkup)
    await session.commit()
    day, start, ids = await _one_slot_day(client, world)
    typed = await join(client, world, "patient1", day, visit_type_id=checkup.id)
    assert typed["visit_type_id"] == checkup.id
    # 10:00 alone is too short for the visit and its buffer (10:30 is booked): no offer.
    await cancel(client, world, ids[start], "desk")
    later = start + dt.timedelta(minutes=30)
    await cancel(client, world, ids[later], "desk")
    (offer,) = await eventually(lambda: open_offers(client, world, "patient1"))
    assert dt.datetime.fromisoformat(offer["start"]) == start
    assert dt.datetime.fromisoformat(offer["end"]) == later
    # Every list of offers names the kind of visit held: the API, the patient's pages
    # page (the banner: test_waitlist_live.py), the desk's waitlist.
    assert (offer["visit_type_id"], offer["visit_type_name"]) == (checkup.id, "Check-up")
    named = 'Dr. Berlin (<span class="visit-type">Check-up</span>) at'
    mine = await client.get("/me/appointments", headers=world.headers("patient1"))
    assert f'data-offer-id="{offer["id"]}"' in mine.text and named in mine.text
    desk = await client.get("/desk/waitlist", headers=world.headers("desk"))
    assert 'offered a time (<span class="visit-type">Check-up</span>), held until' in desk.text
    hold = (
        await session.execute(
            text(
                "SELECT visit_type_id, buffer_before_minutes, buffer_after_minutes,"
                " upper(blocked) AS until FROM appointments WHERE status = 'held'"
            )
        )
    ).one()
    assert (hold.visit_type_id, hold.buffer_before_minutes, hold.buffer_after_minutes) == (
        checkup.id,
        0,
        30,
    )
    assert hold.until == later + dt.timedelta(minutes=30)
    # The buffer is held too: 10:30 is free of bookings, yet nobody can book it.
    assert await available(client, world, day, later) is False
    assert (await book(client, world, later, "patient3")).status_code == 409

    accepted = await client.post(
        f"/api/offers/{offer['id']}/accept", headers=world.headers("patient1")
    )
    assert accepted.status_code == 201, accepted.text
    booked = await session.get(Appointment, accepted.json()["id"])
    await session.refresh(booked)
    assert (booked.visit_type_id, booked.buffer_after_minutes) == (checkup.id, 30)


async def test_a_visit_type_is_a_doctors_own(client, world, session):
    other = await client.post(
        "/api/waitlist",
        json={
            "clinic_id": world.clinic_id,
            "specialty": "general",
            "visit_type_id": 1,
            "from": day_after_tomorrow().isoformat(),
            "to": day_after_tomorrow().isoformat(),
        },
        headers=world.headers("patient1"),
    )
    assert other.status_code == 422, other.text
    unknown = await client.post(
        "/api/waitlist",
        json=wish(world, day_after_tomorrow(), visit_type_id=10**9),
        headers=world.headers("patient1"),
    )
    assert unknown.status_code == 404, unknown.text
    surgery = VisitType(doctor_id=world.doctor_id, name="Surgery", minutes=60, online=False)
    session.add(surgery)
    await session.commit()
    staff_only = await client.post(
        "/api/waitlist",
        json=wish(world, day_after_tomorrow(), visit_type_id=surgery.id),
        headers=world.headers("patient1"),
    )
    assert staff_only.status_code == 403, staff_only.text
    assert await session.scalar(select(func.count()).select_from(WaitlistEntry)) == 0


async def test_accepting_keeps_the_per_doctor_limit(client, world, worker, settings):
    day, start, ids = await _one_slot_day(client, world)
    await join(client, world, "patient1", day)
    later = day + dt.timedelta(days=1)
    for hour in range(9, 9 + settings.max_future_appointments_per_doctor):
        assert (await book(client, world, at(later, hour), "patient1")).status_code == 201
    await cancel(client, world, ids[start], "desk")
    (offer,) = await eventually(lambda: open_offers(client, world, "patient1"))
    refused = await client.post(
        f"/api/offers/{offer['id']}/accept", headers=world.headers("patient1")
    )
    assert refused.status_code == 422, refused.text
    assert "at most" in refused.json()["detail"]
    assert await open_offers(client, world, "patient1") != []  # still theirs to decline
