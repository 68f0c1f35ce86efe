"""Visit-type edits reach the open slot pages of that doctor live: the chooser and the
days change shape at once (the cache forgotten first, so the page and the API never see
the old shape), and other doctors' pages hear nothing."""

import asyncio
import datetime as dt

import httpx
import pytest

from tests.integration.test_ws_access import handshake
from tests.integration.world import day_after_tomorrow, make_world

SLOTS = "/api/appointments/available-slots"


@pytest.fixture
async def world(session, settings, redis):
    return await make_world(session, settings.secret_key, patients=1)


async def heard(socket, containing: str) -> str:
    async with asyncio.timeout(20):
        while True:
            html = await socket.recv()
            if containing in html:
                return html


async def lengths(api, world, day, visit_type_id) -> set[int]:
    """The slot lengths (minutes) the API offers for the type on `day`."""
    response = await api.get(
        SLOTS,
        params={
            "doctor_id": world.doctor_id,
            "date": day.isoformat(),
            "visit_type_id": visit_type_id,
        },
        headers=world.headers("patient0"),
    )
    assert response.status_code == 200, response.text
    return {
        int(
            (dt.datetime.fromisoformat(s["end"]) - dt.datetime.fromisoformat(s["start"])).seconds
            / 60
        )
        for s in response.json()["slots"]
    }


async def test_type_edits_reach_open_slot_pages_with_the_cache_forgotten(world, live_server):
    day = day_after_tomorrow()
    admin = world.headers("admin")
    path = f"/api/doctors/{world.doctor_id}/visit-types"
    async with httpx.AsyncClient(base_url=live_server.url) as api:
        created = await api.post(path, json={"name": "Check-up", "minutes": 30}, headers=admin)
        assert created.status_code == 201, created.text
        kind = created.json()["id"]
        assert await lengths(api, world, day, kind) == {30}  # now cached
        query = f"view=slots&doctor_id={world.doctor_id}&date={day.isoformat()}&days=1"
        page = await handshake(
            live_server, f"{query}&visit_type_id={kind}", world.headers("patient0")
        )
        other = await handshake(
            live_server,
            f"view=slots&doctor_id={world.other_doctor_id}&date={day.isoformat()}&days=1",
            world.headers("patient0"),
        )
        assert not isinstance(page, int) and not isinstance(other, int)
        try:
            await heard(page, f'id="day-{world.doctor_id}-{day.isoformat()}"')  # the resync
            await heard(other, f'id="day-{world.other_doctor_id}-')

            changed = await api.patch(f"{path}/{kind}", json={"minutes": 60}, headers=admin)
            assert changed.status_code == 200, changed.text
            pushed = await heard(page, 'id="visit-type-choice"')
            assert "Check-up (60 min)" in pushed and 'hx-swap-oob="true"' in pushed
            assert f'id="day-{world.doctor_id}-{day.isoformat()}"' in pushed  # the day too
            # Exact invalidation: the cached 30-minute day is gone for the API as well.
            assert await lengths(api, world, day, kind) == {60}

            added = await api.post(path, json={"name": "Vaccination", "minutes": 15}, headers=admin)
            assert added.status_code == 201, added.text
            pushed = await heard(page, "Vaccination (15 min)")
            assert f'<option value="{kind}" selected>Check-up (60 min)' in pushed

            deleted = await api.delete(f"{path}/{kind}", headers=admin)
            assert deleted.status_code == 204, deleted.text
            pushed = await heard(page, "no longer offered")
            assert "Check-up" not in pushed and "Vaccination (15 min)" in pushed

            with pytest.raises(TimeoutError):  # another doctor's page heard none of it
                while True:
                    html = await asyncio.wait_for(other.recv(), 1)
                    assert "visit-type-choice" not in html
        finally:
            await page.close()
            await other.close()
        # A page opened now shows the new chooser.
        fresh = await api.get(f"/doctors/{world.doctor_id}/slots", params={"date": day.isoformat()})
        assert "Vaccination (15 min)" in fresh.text and "Check-up" not in fresh.text


async def test_staff_pages_keep_their_staff_only_types_in_the_pushed_chooser(world, live_server):
    """Staff see (and may book) staff-only types, on the page and in what is pushed to it;
    a patient's page on the same day never hears of them."""
    day = day_after_tomorrow()
    admin = world.headers("admin")
    path = f"/api/doctors/{world.doctor_id}/visit-types"
    async with httpx.AsyncClient(base_url=live_server.url) as api:
        created = await api.post(path, json={"name": "Check-up", "minutes": 30}, headers=admin)
        surgery = await api.post(
            path, json={"name": "Minor surgery", "minutes": 60, "online": False}, headers=admin
        )
        assert created.status_code == surgery.status_code == 201, (created.text, surgery.text)
        online, staff_only = created.json()["id"], surgery.json()["id"]
        page = f"/doctors/{world.doctor_id}/slots"
        shown = {"date": day.isoformat(), "visit_type_id": staff_only}
        desk_page = await api.get(page, params=shown, headers=world.headers("desk"))
        assert desk_page.status_code == 200, desk_page.text
        assert f'<option value="{staff_only}" selected>Minor surgery (60 min, staff only)' in (
            desk_page.text
        )
        refused = await api.get(page, params=shown, headers=world.headers("patient0"))
        assert refused.status_code == 404  # not the patient's to choose
        patient_page = await api.get(
            page, params={"date": day.isoformat()}, headers=world.headers("patient0")
        )
        assert "Check-up (30 min)" in patient_page.text and "Minor surgery" not in patient_page.text

        query = f"view=slots&doctor_id={world.doctor_id}&date={day.isoformat()}&days=1"
        desk = await handshake(
            live_server, f"{query}&visit_type_id={staff_only}", world.headers("desk")
        )
        patient = await handshake(
            live_server, f"{query}&visit_type_id={online}", world.headers("patient0")
        )
        assert not isinstance(desk, int) and not isinstance(patient, int)
        try:
            await heard(desk, f'id="day-{world.doctor_id}-{day.isoformat()}"')  # the resyncs
            await heard(patient, f'id="day-{world.doctor_id}-{day.isoformat()}"')

            added = await api.post(path, json={"name": "Vaccination", "minutes": 15}, headers=admin)
            assert added.status_code == 201, added.text
            to_desk = await heard(desk, "Vaccination (15 min)")
            assert f'<option value="{staff_only}" selected>Minor surgery (60 min, staff only)' in (
                to_desk
            )
            assert "no longer offered" not in to_desk and "Check-up (30 min)" in to_desk
            to_patient = await heard(patient, "Vaccination (15 min)")
            assert f'<option value="{online}" selected>Check-up (30 min)' in to_patient
            assert "Minor surgery" not in to_patient

            # Made bookable online, it reaches the patient's chooser too.
            opened = await api.patch(f"{path}/{staff_only}", json={"online": True}, headers=admin)
            assert opened.status_code == 200, opened.text
            to_patient = await heard(patient, "Minor surgery (60 min)<")
            assert f'<option value="{online}" selected>Check-up (30 min)' in to_patient
            to_desk = await heard(desk, "Minor surgery (60 min)<")
            assert f'<option value="{staff_only}" selected>' in to_desk
        finally:
            await desk.close()
            await patient.close()
