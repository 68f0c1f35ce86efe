"""The patient, front-desk and doctor pages over HTTP (the browser tests cover live updates)."""

import re

import pytest
from sqlalchemy import func, select

from db.models import Appointment
from tests.integration.auth_helpers import browser_login, csrf_from
from tests.integration.world import PASSWORD, at, day_after_tomorrow, make_world, move_to_today


@pytest.fixture
async def world(client, session, settings):
    return await make_world(session, settings.secret_key, patients=3)


async def sign_in(client, email):
    response = await browser_login(client, email=email, password=PASSWORD)
    assert 'class="whoami"' in response.text  # signed in (the client followed the redirect)
    return csrf_from((await client.get("/me")).text)


def htmx(token):
    return {"HX-Request": "true", "X-CSRF-Token": token}


async def test_doctor_search_page_and_fragment(client, world):
    await sign_in(client, "p0@t.test")
    page = await client.get("/doctors")
    assert page.status_code == 200 and "Dr. Berlin" in page.text and "<html" in page.text
    assert page.headers["vary"] == "HX-Request"
    fragment = await client.get("/doctors", params={"name": "ny"}, headers={"HX-Request": "1"})
    assert "<html" not in fragment.text
    assert "Dr. NY" in fragment.text and "Dr. Berlin" not in fragment.text


async def test_slots_page_marks_every_slot(client, world):
    await sign_in(client, "p0@t.test")
    day = day_after_tomorrow()
    page = await client.get(f"/doctors/{world.doctor_id}/slots", params={"date": day.isoformat()})
    assert page.status_code == 200
    starts = re.findall(r'data-slot-start="([^"]+)" data-available="(true|false)"', page.text)
    assert len(starts) == 7 * 24
    assert (at(day, 8).isoformat(), "true") in starts
    assert 'ws-connect="/ws/live?view=slots' in page.text


async def test_book_from_the_panel_then_a_stale_panel_hears_it_was_taken(client, world, session):
    token = await sign_in(client, "p0@t.test")
    start = at(day_after_tomorrow(), 10).isoformat()
    path = f"/doctors/{world.doctor_id}/book"
    panel = await client.get(path, params={"start": start}, headers=htmx(token))
    assert "Confirm booking" in panel.text
    key = re.search(r'name="idempotency_key" value="([^"]+)"', panel.text).group(1)
    booked = await client.post(
        path, data={"start": start, "reason": "Rash", "idempotency_key": key}, headers=htmx(token)
    )
    assert booked.status_code == 200 and ">Booked<" in booked.text

    other = await client.post(
        path, data={"start": start, "idempotency_key": "another"}, headers=htmx(token)
    )
    assert other.status_code == 200
    assert "just taken" in other.text and 'data-available="true"' in other.text
    assert await session.scalar(select(func.count()).select_from(Appointment)) == 1

    off_grid = await client.post(
        path,
        data={"start": at(day_after_tomorrow(), 10, 7).isoformat(), "reason": "kept"},
        headers=htmx(token),
    )
    assert "slot grid" in off_grid.text and "kept" in off_grid.text  # what was typed stays


async def test_my_appointments_cancel_and_reschedule(client, world, session):
    token = await sign_in(client, "p0@t.test")
    day = day_after_tomorrow()
    path = f"/doctors/{world.doctor_id}/book"
    await client.post(path, data={"start": at(day, 9).isoformat()}, headers=htmx(token))
    mine = await client.get("/me/appointments")
    appointment_id = int(
        re.search(r'data-appointment-id="(\d+)" data-status="booked"', mine.text).group(1)
    )
    week = await client.get(
        f"/doctors/{world.doctor_id}/slots",
        params={"date": day.isoformat(), "reschedule": appointment_id},
    )
    assert f'hx-vals=\'{{"reschedule": "{appointment_id}"}}\'' in week.text
    panel = await client.get(
        f"/doctors/{world.doctor_id}/book",
        headers=htmx(token),
        params={"start": at(day, 11).isoformat(), "reschedule": appointment_id},
    )
    assert "Move my appointment" in panel.text
    assert f"/me/appointments/{appointment_id}/reschedule" in panel.text
    moved = await client.post(
        f"/me/appointments/{appointment_id}/reschedule",
        data={"start": at(day, 11).isoformat()},
        headers=htmx(token),
    )
    assert ">Moved<" in moved.text
    row = await session.get(Appointment, appointment_id)
    await session.refresh(row)
    assert row.starts_at == at(day, 11)
    cancelled = await client.post(f"/me/appointments/{appointment_id}/cancel", headers=htmx(token))
    assert cancelled.status_code == 200  # an htmx answer, not "201 Created"
    assert 'data-status="cancelled"' not in cancelled.text.split("<h2>Past</h2>")[0]
    await session.refresh(row)
    assert row.status == "cancelled"


async def test_desk_board_actions_and_walk_in(client, world, session):
    token = await sign_in(client, "desk@t.test")
    day = day_after_tomorrow()
    hits = await client.get("/desk/patients", params={"q": "pat"}, headers=htmx(token))
    assert hits.text.count('name="patient_id"') == 3
    walk_in = await client.post(
        "/desk/walk-in",
        headers=htmx(token),
        data={
            "patient_id": world.patients[1],
            "q": "Patient 1",
            "doctor_id": world.doctor_id,
            "date": day.isoformat(),
            "time": "10:00",
            "reason": "walk-in",
        },
    )
    assert "Booked at 10:00 for Patient 1 with Dr. Berlin" in walk_in.text
    board = await client.get("/desk", params={"date": day.isoformat()})
    card = re.search(r'data-appointment-id="(\d+)" data-status="booked"', board.text)
    assert card and "Patient 1" in board.text
    early = await client.post(
        f"/desk/appointments/{card.group(1)}/status",
        data={"status": "checked_in"},
        headers=htmx(token),
    )
    assert "checked in only on the day of the appointment" in early.text
    await move_to_today(session, int(card.group(1)))
    done = await client.post(
        f"/desk/appointments/{card.group(1)}/status",
        data={"status": "checked_in"},
        headers=htmx(token),
    )
    assert done.status_code == 200
    assert "checked in" in done.text
    again = await client.post(
        f"/desk/appointments/{card.group(1)}/status",
        data={"status": "checked_in"},
        headers=htmx(token),
    )
    assert 'class="error"' in again.text  # an illegal transition says why, no 5xx
    bulk = await client.post("/desk/bulk-check-in", headers=htmx(token), data={})
    assert "Select the appointments" in bulk.text


async def test_doctor_day_and_who_may_open_what(client, world):
    await sign_in(client, "doc@t.test")
    day = await client.get("/doctor/day")
    assert day.status_code == 200 and "Dr. Berlin" in day.text
    assert (await client.get("/desk")).status_code == 403
    assert (await client.get("/me/appointments")).status_code == 403


def _hx_get(html: str, start: str) -> str:
    """The URL a "Free times nearby" button for `start` asks for."""
    match = re.search(rf'data-slot-start="{re.escape(start)}"[^>]*hx-get="([^"]+)"', html)
    assert match, f"no nearby time {start} offered"
    return match.group(1).replace("&amp;", "&")


async def _book_as(client, world, who: str, start) -> int:
    booked = await client.post(
        "/api/appointments",
        json={"doctor_id": world.doctor_id, "start": start.isoformat()},
        headers=world.headers(who),
    )
    assert booked.status_code == 201, booked.text
    return int(booked.json()["id"])


async def test_a_failed_reschedule_offers_times_that_move_the_same_appointment(
    client, world, session
):
    token = await sign_in(client, "p0@t.test")
    day = day_after_tomorrow()
    mine = await _book_as(client, world, "patient0", at(day, 9))
    await _book_as(client, world, "patient1", at(day, 11))  # the time p0 will ask for

    failed = await client.post(
        f"/me/appointments/{mine}/reschedule",
        data={"start": at(day, 11).isoformat()},
        headers=htmx(token),
    )
    assert "just taken" in failed.text and "unchanged" in failed.text
    nearby = _hx_get(failed.text, at(day, 11, 30).isoformat())
    assert f"reschedule={mine}" in nearby  # the offered time moves, it does not book anew

    panel = await client.get(nearby, headers=htmx(token))
    assert "Move my appointment" in panel.text and "Confirm booking" not in panel.text
    action = re.search(r'hx-post="([^"]+)"', panel.text).group(1)
    assert action == f"/me/appointments/{mine}/reschedule"
    start = re.search(r'name="start" value="([^"]+)"', panel.text).group(1)
    moved = await client.post(action, data={"start": start}, headers=htmx(token))
    assert ">Moved<" in moved.text

    rows = (
        await session.execute(
            select(Appointment.id, Appointment.starts_at).where(
                Appointment.patient_id == world.patients[0], Appointment.status != "cancelled"
            )
        )
    ).all()
    assert rows == [(mine, at(day, 11, 30))]  # one appointment, at the new time


async def test_a_taken_slot_keeps_the_typed_reason(client, world, session):
    token = await sign_in(client, "p0@t.test")
    day = day_after_tomorrow()
    path = f"/doctors/{world.doctor_id}/book"
    await _book_as(client, world, "patient1", at(day, 10))

    taken = await client.post(
        path,
        data={"start": at(day, 10).isoformat(), "reason": "Sore <throat>", "idempotency_key": "k"},
        headers=htmx(token),
    )
    assert "just taken" in taken.text
    assert ">Sore &lt;throat&gt;</textarea>" in taken.text  # kept, and escaped
    nearby = _hx_get(taken.text, at(day, 10, 30).isoformat())
    assert 'hx-include="#booking-panel [name=reason]"' in taken.text
    panel = await client.get(f"{nearby}&reason=Sore%20%3Cthroat%3E", headers=htmx(token))
    assert "Confirm booking" in panel.text and ">Sore &lt;throat&gt;</textarea>" in panel.text

    unreadable = await client.post(
        path, data={"start": "half past ten", "reason": "Cough"}, headers=htmx(token)
    )
    assert "Choose a time from the list" in unreadable.text
    assert ">Cough</textarea>" in unreadable.text
    week = await client.get(f"/doctors/{world.doctor_id}/slots", params={"date": day.isoformat()})
    assert 'class="week" hx-include="#booking-panel [name=reason], #live .week"' in week.text
    count = select(func.count()).select_from(Appointment)
    assert await session.scalar(count) == 1  # only the other patient's booking


async def test_walk_in_search_finds_any_word_of_the_name(client, world, session):
    from db.models import Patient

    session.add_all(
        [
            Patient(full_name="Lena Fischer"),
            Patient(full_name="Otto Meyer-Fischer"),
            Patient(full_name="Fischer Lang"),
            Patient(full_name="Anna 100%"),
        ]
    )
    await session.commit()
    token = await sign_in(client, "desk@t.test")

    async def names(q: str) -> list[str]:
        hits = await client.get("/desk/patients", params={"q": q}, headers=htmx(token))
        assert hits.status_code == 200
        return re.findall(
            r'name="patient_id" value="\d+" required> ([^<·]+?)(?: ·|</label>)', hits.text
        )

    assert await names("Fischer") == ["Fischer Lang", "Lena Fischer", "Otto Meyer-Fischer"]
    assert await names("  lena  ") == ["Lena Fischer"]
    assert await names("lena fi") == ["Lena Fischer"]
    assert await names("ischer") == []  # the start of a word, not any part of it
    assert await names("%") == []  # too short
    assert await names("0%") == []  # a literal %, not a wildcard
    assert await names("100%") == ["Anna 100%"]


async def test_board_rows_line_up_and_carry_slot_attributes(client, world, session):
    import datetime as dt

    from db.models import Doctor, ScheduleTemplate

    day = day_after_tomorrow()
    short = Doctor(clinic_id=world.clinic_id, full_name="Dr. Short", specialty="GP")
    session.add(short)
    await session.flush()
    session.add(
        ScheduleTemplate(
            doctor_id=short.id,
            weekday=day.weekday(),
            start_time=dt.time(9),
            end_time=dt.time(10),
            slot_minutes=20,
        )
    )
    await session.commit()
    await _book_as(client, world, "patient0", at(day, 9))
    await sign_in(client, "desk@t.test")
    board = await client.get("/desk", params={"date": day.isoformat()})
    assert board.status_code == 200
    columns = re.findall(r'<section class="board-column"(.*?)</section>', board.text, re.S)
    assert len(columns) == 2
    grids = [re.findall(r'<time datetime="([^"]+)"', c) for c in columns]
    assert grids[0] == grids[1]  # one time grid: the rows line up
    assert at(day, 9, 20).isoformat() in grids[0] and at(day, 19, 30).isoformat() in grids[0]
    berlin, short_column = (
        (c for c in columns if "Dr. Berlin" in c),
        (c for c in columns if "Dr. Short" in c),
    )
    berlin_html, short_html = next(berlin), next(short_column)
    slots = dict(
        re.findall(r'data-slot-start="([^"]+)" data-available="(true|false)"', berlin_html)
    )
    assert len(slots) == 24 and slots[at(day, 9).isoformat()] == "false"  # booked
    assert slots[at(day, 9, 30).isoformat()] == "true"
    short_slots = re.findall(r'data-slot-start="([^"]+)" data-available="true"', short_html)
    assert short_slots == [
        at(day, 9).isoformat(),
        at(day, 9, 20).isoformat(),
        at(day, 9, 40).isoformat(),
    ]
    assert short_html.count('class="row off" aria-hidden="true"') == len(grids[0]) - 3
    assert 'hx-preserve name="appointment_ids"' in berlin_html  # selection survives redraws
    assert "clinic-chooser" not in board.text  # a desk has one clinic


async def test_admin_chooses_the_clinic_of_the_board(client, world):
    await sign_in(client, "admin@t.test")
    day = day_after_tomorrow()
    board = await client.get("/desk", params={"date": day.isoformat()})
    assert "Dr. Berlin" in board.text  # the first clinic unless one is chosen
    assert f'<option value="{world.other_clinic_id}">New York</option>' in board.text
    other = await client.get(
        "/desk", params={"date": day.isoformat(), "clinic_id": world.other_clinic_id}
    )
    assert "Dr. NY" in other.text and "Dr. Berlin" not in other.text
    following = (day + __import__("datetime").timedelta(days=1)).isoformat()
    assert f'href="/desk?date={following}&amp;clinic_id={world.other_clinic_id}"' in other.text
    assert f'href="/desk?clinic_id={world.other_clinic_id}">Today' in other.text
    assert f"clinic_id={world.other_clinic_id}&date={day}" in other.text.replace("&amp;", "&")


async def test_doctor_filter_form_with_any_clinic(client, world):
    await sign_in(client, "p0@t.test")
    hx = {"HX-Request": "1"}
    fragment = await client.get("/doctors?clinic_id=&specialty=&name=ny", headers=hx)
    assert fragment.status_code == 200  # "Any clinic" sends an empty clinic_id
    assert "Dr. NY" in fragment.text and "Dr. Berlin" not in fragment.text
    chosen = await client.get(f"/doctors?clinic_id={world.clinic_id}&name=", headers=hx)
    assert "Dr. Berlin" in chosen.text and "Dr. NY" not in chosen.text
    bad = await client.get("/doctors?clinic_id=berlin", headers=hx)
    assert bad.status_code == 400
