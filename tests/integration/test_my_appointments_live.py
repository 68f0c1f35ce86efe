""" "My appointments" is live: each patient's socket hears their own appointments' changes
(a per-patient channel, ids only on the wire, the list rendered for that patient), shows
the clinic and the time zone, and a clinic's cancellation stays on the list with its
reason and a way to book again."""

import asyncio
import datetime as dt

import httpx
import pytest

from tests.integration.notification_world import book_api, cancel_by_leave
from tests.integration.test_ws_access import handshake
from tests.integration.world import at, day_after_tomorrow, make_world


@pytest.fixture
async def world(session, settings, redis):
    return await make_world(session, settings.secret_key, patients=2)


async def next_list(socket, containing: str) -> str:
    """The next list the socket is sent that contains `containing`."""
    async with asyncio.timeout(15):
        while True:
            html = await socket.recv()
            if containing in html:
                return html


async def test_a_clinic_cancellation_reaches_the_open_page_with_its_reason(world, live_server):
    start = at(day_after_tomorrow(), 10)
    async with httpx.AsyncClient(base_url=live_server.url) as api:
        mine = await book_api(api, world, start, who="patient0")
        theirs = await book_api(api, world, at(day_after_tomorrow(), 12), who="patient1")
        own = await handshake(live_server, "view=my_appointments", world.headers("patient0"))
        other = await handshake(live_server, "view=my_appointments", world.headers("patient1"))
        assert not isinstance(own, int) and not isinstance(other, int)
        try:
            first = await next_list(own, f'data-appointment-id="{mine}"')  # the resync
            assert 'hx-swap-oob="true"' in first and 'id="my-appointments"' in first
            assert "at Berlin" in first and "(Europe/Berlin)" in first  # clinic and zone
            assert f"{start:%H:%M} CET" in first or f"{start:%H:%M} CEST" in first
            assert f'data-appointment-id="{theirs}"' not in first
            await next_list(other, f'data-appointment-id="{theirs}"')

            # The doctor's leave covers patient0's visit only; the clinic cancels it.
            await cancel_by_leave(api, world, start - dt_minutes(30), start + dt_minutes(30))
            update = await next_list(own, 'data-cancelled-by="clinic"')
            item = update.split(f'data-appointment-id="{mine}"')[1].split("</li>")[0]
            assert "cancelled by the clinic" in item
            assert "Reason: doctor unavailable (leave)" in item
            day = day_after_tomorrow().isoformat()
            assert f'href="/doctors/{world.doctor_id}/slots?date={day}">Book again' in item
            assert "Reschedule" not in item and "Cancel</button>" not in item
            # patient1's socket heard nothing of it: their channel is their own. Their own
            # next change is the very next thing it hears.
            gone = await api.patch(
                f"/api/appointments/{theirs}",
                json={"status": "cancelled"},
                headers=world.headers("patient1"),
            )
            assert gone.status_code == 200
            heard = await asyncio.wait_for(other.recv(), 15)
            assert "Nothing booked." in heard and f'data-appointment-id="{mine}"' not in heard
        finally:
            await own.close()
            await other.close()
        # The page itself (not only the socket) keeps it, with the same reason.
        page = await api.get("/me/appointments", headers=world.headers("patient0"))
        assert 'data-cancelled-by="clinic"' in page.text
        assert 'ws-connect="/ws/live?view=my_appointments"' in page.text


async def test_a_patients_own_cancellation_leaves_the_list_and_booking_adds_to_it(
    world, live_server
):
    async with httpx.AsyncClient(base_url=live_server.url) as api:
        socket = await handshake(live_server, "view=my_appointments", world.headers("patient0"))
        assert not isinstance(socket, int)
        try:
            await next_list(socket, "Nothing booked.")
            booked = await book_api(api, world, at(day_after_tomorrow(), 9), who="patient0")
            await next_list(socket, f'data-appointment-id="{booked}"')
            cancelled = await api.patch(
                f"/api/appointments/{booked}",
                json={"status": "cancelled"},
                headers=world.headers("patient0"),
            )
            assert cancelled.status_code == 200
            after = await next_list(socket, "Nothing booked.")
            assert "cancelled by the clinic" not in after
        finally:
            await socket.close()


async def test_only_a_patient_may_follow_a_list_and_only_their_own(world, live_server):
    for who in ("desk", "doctor", "admin"):
        assert await handshake(live_server, "view=my_appointments", world.headers(who)) == 403
    assert await handshake(live_server, "view=my_appointments") == 403  # anonymous
    # Asking for someone else's list gives one's own: the channel comes from the session.
    async with httpx.AsyncClient(base_url=live_server.url) as api:
        theirs = await book_api(api, world, at(day_after_tomorrow(), 15), who="patient1")
    socket = await handshake(
        live_server,
        f"view=my_appointments&patient_id={world.patients[1]}",
        world.headers("patient0"),
    )
    assert not isinstance(socket, int)
    try:
        first = await next_list(socket, 'id="my-appointments"')
        assert f'data-appointment-id="{theirs}"' not in first
    finally:
        await socket.close()


def dt_minutes(n: int) -> dt.timedelta:
    return dt.timedelta(minutes=n)
