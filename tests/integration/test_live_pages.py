"""The patient, front-desk and doctor pages over HTTP (the browser tests cover live updates)."""

import re

import pytest
from sqlalchemy import func, select

from db.models import Appointment
from tests.integration.auth_helpers import browser_login, csrf_from
from tests.integration.world import PASSWORD, at, day_after_tomorrow, make_world


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
            "doctor_id": world.doctor_id,
            "date": day.isoformat(),
            "time": "10:00",
            "reason": "walk-in",
        },
    )
    assert "Booked at 10:00" in walk_in.text
    board = await client.get("/desk", params={"date": day.isoformat()})
    card = re.search(r'data-appointment-id="(\d+)" data-status="booked"', board.text)
    assert card and "Patient 1" in board.text
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
