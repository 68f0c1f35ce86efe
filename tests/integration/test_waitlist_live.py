"""The waitlist live: a patient's open offers reach the banner of every page they have
open (their own channel), and the desk's waitlist page hears its clinic's entries join,
leave, get an offer and book it — through a real server and a real worker."""

import asyncio
import datetime as dt
import re

import httpx
import pytest
from sqlalchemy import update

from db.models import Appointment, VisitType, WaitlistOffer
from tests.integration.notification_servers import eventually, running_worker
from tests.integration.test_ws_access import handshake
from tests.integration.world import at, day_after_tomorrow, make_world

HX_BANNER = {"HX-Request": "true", "HX-Target": "offer-answer"}


@pytest.fixture
async def world(session, settings, redis):
    return await make_world(session, settings.secret_key, patients=3)


async def heard(socket, containing: str, absent: str | None = None) -> str:
    """The next fragment the socket is sent that contains `containing` (and not `absent`)."""
    async with asyncio.timeout(20):
        while True:
            html = await socket.recv()
            if containing in html and (absent is None or absent not in html):
                return html


def wish(world, day, **extra):
    return {"doctor_id": world.doctor_id, "from": day.isoformat(), "to": day.isoformat(), **extra}


async def test_only_the_clinics_staff_watch_its_waitlist_and_a_patient_only_own_offers(
    world, live_server
):
    query = f"view=waitlist&clinic_id={world.clinic_id}"
    assert await handshake(live_server, query, world.headers("other_desk")) == 403
    assert await handshake(live_server, query, world.headers("patient0")) == 403
    assert await handshake(live_server, query) == 403
    missing = await handshake(live_server, "view=waitlist&clinic_id=999999", world.headers("admin"))
    assert missing == 403
    assert await handshake(live_server, "view=offers", world.headers("desk")) == 403
    assert await handshake(live_server, "view=offers") == 403
    for who, view in (("desk", query), ("admin", query), ("patient0", "view=offers")):
        socket = await handshake(live_server, view, world.headers(who))
        assert not isinstance(socket, int), (who, socket)
        await socket.close()


async def test_the_desk_list_hears_joins_and_leaves(world, live_server):
    day = day_after_tomorrow()
    async with httpx.AsyncClient(base_url=live_server.url) as api:
        desks = [
            await handshake(
                live_server, f"view=waitlist&clinic_id={world.clinic_id}", world.headers(who)
            )
            for who in ("desk", "admin")
        ]
        try:
            for desk in desks:  # the resync: the list as it is
                first = await heard(desk, 'id="desk-waitlist-entries"')
                assert 'hx-swap-oob="true"' in first and "Nobody is waiting." in first
            joined = await api.post(
                "/api/waitlist", json=wish(world, day), headers=world.headers("patient1")
            )
            assert joined.status_code == 201, joined.text
            entry = joined.json()["id"]
            for desk in desks:  # every open desk page of the clinic
                pushed = await heard(desk, f'data-entry-id="{entry}"')
                assert "Patient 1" in pushed and "Add a patient" not in pushed  # the form stays
            left = await api.delete(f"/api/waitlist/{entry}", headers=world.headers("patient1"))
            assert left.status_code in (200, 204), left.text
            for desk in desks:
                await heard(desk, "Nobody is waiting.")
        finally:
            for desk in desks:
                await desk.close()


async def test_an_offer_reaches_the_banner_and_the_desk_and_is_accepted_there(
    world, live_server, settings, monkeypatch, session
):
    day = day_after_tomorrow()
    start = at(day, 10)
    checkup = VisitType(doctor_id=world.doctor_id, name="Check-up", minutes=30)
    session.add(checkup)
    await session.commit()
    async with (
        running_worker(settings, monkeypatch),
        httpx.AsyncClient(base_url=live_server.url) as api,
    ):
        booked = await api.post(
            "/api/appointments",
            json={"doctor_id": world.doctor_id, "start": start.isoformat()},
            headers=world.headers("patient0"),
        )
        assert booked.status_code == 201, booked.text
        joined = await api.post(
            "/api/waitlist",
            json=wish(world, day, earliest="10:00", latest="10:30", visit_type_id=checkup.id),
            headers=world.headers("patient1"),
        )
        assert joined.status_code == 201, joined.text
        entry = joined.json()["id"]
        # Any page of patient 1 carries the banner's socket; "my appointments" not (it
        # lists offers itself).
        doctors_page = await api.get("/doctors", headers=world.headers("patient1"))
        assert 'ws-connect="/ws/live?view=offers"' in doctors_page.text
        mine = await api.get("/me/appointments", headers=world.headers("patient1"))
        assert "view=offers" not in mine.text
        banner = await handshake(live_server, "view=offers", world.headers("patient1"))
        other = await handshake(live_server, "view=offers", world.headers("patient2"))
        desk = await handshake(
            live_server, f"view=waitlist&clinic_id={world.clinic_id}", world.headers("desk")
        )
        assert not any(isinstance(s, int) for s in (banner, other, desk))
        try:
            await heard(banner, 'id="offer-list"', absent="data-offer-id")  # resync: none
            await heard(other, 'id="offer-list"')
            await heard(desk, f'data-entry-id="{entry}"', absent='data-offered="true"')

            cancelled = await api.patch(
                f"/api/appointments/{booked.json()['id']}",
                json={"status": "cancelled"},
                headers=world.headers("patient0"),
            )
            assert cancelled.status_code == 200, cancelled.text
            offered = await heard(banner, "data-offer-id")
            assert 'hx-swap-oob="true"' in offered and "held for you until" in offered
            assert "Dr. Berlin" in offered and f"{start:%H:%M}" in offered
            assert '(<span class="visit-type">Check-up</span>) at' in offered  # what is held
            offer_id = offered.split('data-offer-id="')[1].split('"')[0]
            await heard(desk, 'offered a time (<span class="visit-type">Check-up</span>)')
            with pytest.raises(TimeoutError):  # patient 2's banner hears nothing of it
                await asyncio.wait_for(other.recv(), 1)

            # Accepted from the banner: the answer is the banner's, the desk list empties.
            answer = await api.post(
                f"/me/offers/{offer_id}/accept", headers={**world.headers("patient1"), **HX_BANNER}
            )
            assert answer.status_code == 200, answer.text
            assert "Booked: the time is yours." in answer.text
            assert 'id="offer-list"' in answer.text and "data-offer-id" not in answer.text
            assert "my-appointments" not in answer.text  # not the other page's answer
            await heard(desk, "Nobody is waiting.")
            await heard(banner, 'id="offer-list"', absent="data-offer-id")
            again = await api.post(
                f"/me/offers/{offer_id}/accept", headers={**world.headers("patient1"), **HX_BANNER}
            )
            assert "can no longer be accepted" in again.text
        finally:
            for socket in (banner, other, desk):
                await socket.close()
        mine = await api.get("/api/appointments", headers=world.headers("patient1"))
        (appointment,) = mine.json()["items"]
        assert dt.datetime.fromisoformat(appointment["start"]) == start


def slot_states(html: str) -> dict[dt.datetime, bool]:
    """The slots of a pushed day: start -> bookable."""
    found = re.findall(r'data-slot-start="([^"]+)" data-available="(true|false)"', html)
    return {dt.datetime.fromisoformat(start): free == "true" for start, free in found}


async def test_a_held_slot_is_taken_to_others_and_comes_back_live_when_the_offer_lapses(
    world, live_server, settings, monkeypatch, session
):
    """Another patient watching the doctor's day sees the held slot as not bookable, and
    sees it bookable again, live, once the only offer for it lapses (nobody else waits;
    the lapsed entry is not offered the same slot again)."""
    day = day_after_tomorrow()
    start = at(day, 10)
    async with (
        running_worker(settings, monkeypatch) as worker,
        httpx.AsyncClient(base_url=live_server.url) as api,
    ):
        booked = await api.post(
            "/api/appointments",
            json={"doctor_id": world.doctor_id, "start": start.isoformat()},
            headers=world.headers("patient0"),
        )
        assert booked.status_code == 201, booked.text
        joined = await api.post(
            "/api/waitlist",
            json=wish(world, day, earliest="10:00", latest="10:30"),
            headers=world.headers("patient1"),
        )
        assert joined.status_code == 201, joined.text
        cancelled = await api.patch(
            f"/api/appointments/{booked.json()['id']}",
            json={"status": "cancelled"},
            headers=world.headers("patient0"),
        )
        assert cancelled.status_code == 200, cancelled.text

        async def open_offer() -> list[dict]:
            listed = await api.get("/api/offers", headers=world.headers("patient1"))
            return [o for o in listed.json()["items"] if o["status"] == "open"]

        (offer,) = await eventually(open_offer)
        query = f"view=slots&doctor_id={world.doctor_id}&date={day.isoformat()}&days=1"
        viewer = await handshake(live_server, query, world.headers("patient2"))
        assert not isinstance(viewer, int)
        try:
            resync = await heard(viewer, f'id="day-{world.doctor_id}-{day.isoformat()}"')
            assert slot_states(resync)[start] is False  # held for patient 1: not for others
            assert slot_states(resync)[start + dt.timedelta(minutes=30)] is True

            # The offer lapses; the sweeper (the cron's job, run here) releases the hold.
            past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
            await session.execute(
                update(WaitlistOffer).where(WaitlistOffer.id == offer["id"]).values(expires_at=past)
            )
            await session.execute(
                update(Appointment).where(Appointment.status == "held").values(hold_expires_at=past)
            )
            await session.commit()
            await worker.queue.enqueue("sweep_waitlist")
            async with asyncio.timeout(20):
                while True:
                    pushed = await viewer.recv()
                    if slot_states(pushed).get(start) is True:
                        break
        finally:
            await viewer.close()
        assert await open_offer() == []
        listed = await api.get("/api/offers", headers=world.headers("patient1"))
        assert [o["status"] for o in listed.json()["items"]] == ["expired"]
