"""What else frees capacity for the waitlist, through the real API and a real worker: an
appointment moved away (refilled, and counted as a freed slot by the dashboard's figures),
a cancel from the reminder's link, and hours extended (a weekly template that adds time,
or an extra session on one day)."""

import datetime as dt

import pytest

from app.notifications.answer_links import answer_token
from app.waitlist.report import waitlist_report
from tests.integration.auth_helpers import csrf_from
from tests.integration.notification_servers import eventually, running_worker
from tests.integration.world import at, day_after_tomorrow, make_world


@pytest.fixture
async def world(client, session, settings):
    return await make_world(session, settings.secret_key, patients=3)


@pytest.fixture
async def worker(client, settings, monkeypatch):
    async with running_worker(settings, monkeypatch) as running:
        yield running


async def join(client, world, who, day, earliest, latest):
    body = {
        "doctor_id": world.doctor_id,
        "from": day.isoformat(),
        "to": day.isoformat(),
        "earliest": earliest,
        "latest": latest,
    }
    response = await client.post("/api/waitlist", json=body, headers=world.headers(who))
    assert response.status_code == 201, response.text
    return response.json()


async def open_offers(client, world, who):
    response = await client.get("/api/offers", headers=world.headers(who))
    assert response.status_code == 200, response.text
    return [o for o in response.json()["items"] if o["status"] == "open"]


async def book(client, world, start, who):
    body = {"doctor_id": world.doctor_id, "start": start.isoformat()}
    response = await client.post("/api/appointments", json=body, headers=world.headers(who))
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def move(client, world, appointment_id, start, who):
    response = await client.patch(
        f"/api/appointments/{appointment_id}",
        json={"start": start.isoformat()},
        headers=world.headers(who),
    )
    assert response.status_code == 200, response.text


async def report(session, world):
    today = dt.date.today()
    figures = await waitlist_report(
        await session.connection(),
        today - dt.timedelta(days=1),
        today + dt.timedelta(days=1),
        world.clinic_id,
    )
    await session.commit()
    return figures


async def test_a_time_moved_away_is_offered_and_counted_as_freed(client, world, worker, session):
    day = day_after_tomorrow()
    mine = await book(client, world, at(day, 10), "patient0")
    other = await book(client, world, at(day, 15), "patient0")
    await join(client, world, "patient1", day, "10:00", "10:30")
    assert (await report(session, world)).freed == 0

    await move(client, world, mine, at(day, 14), "patient0")  # 10:00 is free again
    (offer,) = await eventually(lambda: open_offers(client, world, "patient1"))
    assert dt.datetime.fromisoformat(offer["start"]) == at(day, 10)
    accepted = await client.post(
        f"/api/offers/{offer['id']}/accept", headers=world.headers("patient1")
    )
    assert accepted.status_code == 201, accepted.text
    figures = await report(session, world)
    assert (figures.freed, figures.refilled) == (1, 1)
    assert figures.median_seconds is not None and figures.median_seconds >= 0

    # Another move away that nobody takes: freed, not refilled.
    await move(client, world, other, at(day, 16), "patient0")
    figures = await report(session, world)
    assert (figures.freed, figures.refilled) == (2, 1)
    assert figures.refilled_share == 0.5


def week(start: str, end: str, **only) -> list[dict]:
    return [
        {"weekday": d, "start": start, "end": end, "slot_minutes": 30, **only} for d in range(7)
    ]


async def replace_schedule(client, world, ranges):
    response = await client.put(
        f"/api/doctors/{world.doctor_id}/schedule",
        json={"ranges": ranges, "reason": "hours extended"},
        headers=world.headers("admin"),
    )
    assert response.status_code == 200, response.text


async def test_longer_weekly_hours_refill_the_waitlist(client, world, worker):
    day = day_after_tomorrow()
    await join(client, world, "patient1", day, "20:00", "20:30")
    await replace_schedule(client, world, week("08:00", "21:00"))
    (offer,) = await eventually(lambda: open_offers(client, world, "patient1"))
    assert dt.datetime.fromisoformat(offer["start"]) == at(day, 20)


async def test_an_extra_session_refills_the_waitlist(client, world, worker):
    day = day_after_tomorrow()
    await join(client, world, "patient1", day, "20:00", "21:00")
    await join(client, world, "patient2", day, "20:00", "21:00")
    extra = {
        "weekday": day.weekday(),
        "start": "20:00",
        "end": "21:00",
        "slot_minutes": 30,
        "valid_from": day.isoformat(),
        "valid_to": day.isoformat(),
    }
    await replace_schedule(client, world, [*week("08:00", "20:00"), extra])
    (first,) = await eventually(lambda: open_offers(client, world, "patient1"))
    (second,) = await eventually(lambda: open_offers(client, world, "patient2"))
    # The session's two slots, one to each in line, first come first served.
    assert dt.datetime.fromisoformat(first["start"]) == at(day, 20)
    assert dt.datetime.fromisoformat(second["start"]) == at(day, 20, 30)


async def test_a_cancel_from_the_reminder_link_is_offered_to_the_waitlist(
    client, world, worker, settings
):
    """A patient cancelling from the reminder's link frees the slot into the waitlist at
    once: the first waitlister is offered it (issue 18, reminders a patient can answer)."""
    day = day_after_tomorrow()
    start = at(day, 11)
    appointment_id = await book(client, world, start, "patient0")
    await join(client, world, "patient1", day, "11:00", "11:30")
    link = f"/r/{answer_token(settings.secret_key, appointment_id, start)}"
    page = await client.get(link)
    done = await client.post(link, data={"action": "cancel", "csrf_token": csrf_from(page.text)})
    assert done.status_code == 200 and "Cancelled" in done.text
    (offer,) = await eventually(lambda: open_offers(client, world, "patient1"))
    assert dt.datetime.fromisoformat(offer["start"]) == start
