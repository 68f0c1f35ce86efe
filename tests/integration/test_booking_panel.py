"""The week of slots and its booking panel (issue #23.5-6): each closed slot says why, a
refused booking shows the reason without Confirm, a panel on a slot taken meanwhile
says so, and a visitor is asked to sign in."""

import datetime as dt
from urllib.parse import quote

import pytest

from tests.integration.notification_world import book_api
from tests.integration.world import at, day_after_tomorrow, make_world


@pytest.fixture
async def world(client, session, settings):
    return await make_world(session, settings.secret_key, patients=2)


def _slot(html: str, start: dt.datetime) -> str:
    return html.split(f'data-slot-start="{start.isoformat()}"')[1].split("</button>")[0]


async def test_closed_slots_say_why(client, world):
    day = day_after_tomorrow()
    await book_api(client, world, at(day, 9), who="patient1")  # a booking, no leave
    week = await client.get(f"/doctors/{world.doctor_id}/slots?date={day}")
    assert 'data-state="taken"' in _slot(week.text, at(day, 9))
    assert 'aria-label="09:00 taken"' in _slot(week.text, at(day, 9))
    assert 'data-available="true"' in _slot(week.text, at(day, 10))
    leave = {"starts_at": at(day, 12).isoformat(), "ends_at": at(day, 13).isoformat()}
    added = await client.post(
        f"/api/doctors/{world.doctor_id}/exceptions",
        json={**leave, "kind": "leave"},
        headers=world.headers("admin"),
    )
    assert added.status_code == 201, added.text
    week = await client.get(f"/doctors/{world.doctor_id}/slots?date={day}")
    assert 'aria-label="09:00 taken"' in _slot(week.text, at(day, 9))  # still a booking
    assert 'aria-label="12:00 doctor away"' in _slot(week.text, at(day, 12))
    past_day = day - dt.timedelta(days=5)
    old = await client.get(f"/doctors/{world.doctor_id}/slots?date={past_day}")
    assert 'aria-label="10:00 past"' in _slot(old.text, at(past_day, 10))
    far = day + dt.timedelta(days=120)
    later = await client.get(f"/doctors/{world.doctor_id}/slots?date={far}")
    assert 'aria-label="10:00 not bookable yet"' in _slot(later.text, at(far, 10))


async def test_a_refused_booking_shows_why_without_a_timestamp_or_confirm(client, world):
    far = at(day_after_tomorrow() + dt.timedelta(days=120), 10)
    answer = await client.post(
        f"/doctors/{world.doctor_id}/book",
        data={"start": far.isoformat(), "reason": "knee"},
        headers=world.headers("patient0"),
    )
    assert answer.status_code == 200
    assert 'role="alert"' in answer.text and far.isoformat() not in answer.text.split("<form")[0]
    assert "Confirm booking" not in answer.text and "<h2>Book" not in answer.text
    assert ">knee</textarea>" in answer.text  # what was typed stays


async def test_the_panel_of_a_slot_taken_meanwhile_says_so(client, world):
    start = at(day_after_tomorrow(), 10)
    path = f"/doctors/{world.doctor_id}/book?start={quote(start.isoformat())}&reason=knee"
    free = await client.get(path, headers=world.headers("patient0"))
    assert "Confirm booking" in free.text and f'data-slot-start="{start.isoformat()}"' in free.text
    await book_api(client, world, start, who="patient1")
    taken = await client.get(path, headers=world.headers("patient0"))
    assert "was just taken by someone else" in taken.text
    assert "Confirm booking" not in taken.text and ">knee</textarea>" in taken.text


async def test_a_visitor_browses_and_is_asked_to_sign_in_at_book(client, world):
    day = day_after_tomorrow()
    assert (await client.get("/doctors")).status_code == 200
    week = await client.get(f"/doctors/{world.doctor_id}/slots?date={day}")
    assert week.status_code == 200 and "/ws/live?view=slots" in week.text
    start = at(day, 10)
    panel = await client.get(
        f"/doctors/{world.doctor_id}/book?start={quote(start.isoformat())}",
        headers={"HX-Request": "true"},
    )
    back = f"/doctors/{world.doctor_id}/slots?date={day}&start={quote(start.isoformat(), safe='')}"
    assert f'href="/login?next={quote(back, safe="")}"' in panel.text
    assert "Confirm booking" not in panel.text
    # Signed in, the same address opens the panel on that slot.
    reopened = await client.get(back, headers=world.headers("patient0"))
    assert "Confirm booking" in reopened.text and f"Book {start:%a %d %b, %H:%M}" in reopened.text
