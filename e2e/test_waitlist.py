"""The waitlist end to end (issue 18): patient B waits for an earlier time on "my
appointments", patient A cancels, B's page shows the offer live (made by the worker, pushed
over B's socket), B accepts, and the desk board shows B's booking live."""

from __future__ import annotations

import time

import httpx
from playwright.sync_api import expect

from e2e.conftest import (
    live_page,
    mark_document,
    report_live_time,
    same_document,
    screenshot,
    wait_for_live,
)
from e2e.test_journeys import Api, watch
from e2e.test_live import LIVE_WAIT_MS, fresh_world, sign_in
from tests.integration.world import PASSWORD, at, day_after_tomorrow


def test_a_freed_slot_is_offered_live_and_accepted(browser, live_server, settings, record_property):
    world = fresh_world(settings, patients=2)
    day = day_after_tomorrow()
    start = at(day, 10)
    patient_a = Api(live_server, "p0@t.test")
    try:
        appointment = patient_a.book(world.doctor_id, start)

        b = live_page(browser)
        desk = live_page(browser)
        errors = [watch(b), watch(desk)]
        sign_in(b, live_server, "p1@t.test", "/me/appointments")
        sign_in(desk, live_server, "desk@t.test", f"/desk?date={day.isoformat()}")

        # B joins the waitlist for this doctor, that day, 10:00 to 10:30.
        form = b.locator("#waitlist-join")
        form.locator("select[name=doctor_id]").select_option(str(world.doctor_id))
        form.get_by_label("From", exact=True).fill(day.isoformat())
        form.get_by_label("To", exact=True).fill(day.isoformat())
        form.get_by_label("Not before").fill("10:00")
        form.get_by_label("Not after").fill("10:30")
        form.get_by_role("button", name="Join the waitlist").click()
        expect(b.locator("#my-message")).to_contain_text("You are on the waitlist")
        expect(b.locator(".waitlist li")).to_have_count(1)
        for page in (b, desk):
            wait_for_live(page)  # subscribed: no event is missed from here on
            mark_document(page)

        # A cancels; the worker offers the slot to B, whose page shows it live.
        freed = time.monotonic()
        cancelled = patient_a.http.patch(
            f"/api/appointments/{appointment}", json={"status": "cancelled"}
        )
        assert cancelled.status_code == 200, cancelled.text
        offer = b.locator("[data-offer-id]")
        expect(offer).to_be_visible(timeout=LIVE_WAIT_MS)
        report_live_time(record_property, "a freed slot offered on the waitlister's page", freed)
        expect(offer).to_contain_text("held for you until")
        # The desk sees the slot held for B meanwhile, not free.
        expect(desk.locator(".card[data-status='held']")).to_contain_text(
            "Patient 1", timeout=LIVE_WAIT_MS
        )
        screenshot(b, "waitlist-offer")

        accepted = time.monotonic()
        offer.get_by_role("button", name="Accept").click()
        expect(b.locator("#my-message")).to_contain_text("Booked")
        expect(b.locator("[data-offer-id]")).to_have_count(0)
        expect(b.locator("li[data-status='booked']")).to_have_count(1)

        card = desk.locator(".card[data-status='booked']")
        expect(card).to_contain_text("Patient 1", timeout=LIVE_WAIT_MS)
        report_live_time(record_property, "the accepted offer on the desk board", accepted)
        screenshot(desk, "waitlist-desk-board")
        assert same_document(b) and same_document(desk)  # never reloaded
        assert errors == [[], []]
    finally:
        patient_a.close()
    with httpx.Client(base_url=live_server.url) as http:
        token = http.post("/api/auth/token", json={"email": "p1@t.test", "password": PASSWORD})
        offers = http.get(
            "/api/offers", headers={"Authorization": f"Bearer {token.json()['access_token']}"}
        )
        assert [o["status"] for o in offers.json()["items"]] == ["accepted"]


def test_an_offer_reaches_any_open_page_and_is_accepted_there(
    browser, live_server, settings, record_property
):
    """Patient B is on the doctor search, not "my appointments": the offer still shows,
    live, in the banner every patient page carries, and B accepts it there."""
    world = fresh_world(settings, patients=2)
    day = day_after_tomorrow()
    start = at(day, 10)
    patient_a = Api(live_server, "p0@t.test")
    patient_b = Api(live_server, "p1@t.test")
    try:
        appointment = patient_a.book(world.doctor_id, start)
        joined = patient_b.http.post(
            "/api/waitlist",
            json={
                "doctor_id": world.doctor_id,
                "from": day.isoformat(),
                "to": day.isoformat(),
                "earliest": "10:00",
                "latest": "10:30",
            },
        )
        assert joined.status_code == 201, joined.text

        b = live_page(browser)
        errors = [watch(b)]
        sign_in(b, live_server, "p1@t.test", "/doctors")
        wait_for_live(b, socket="offers")  # the banner is subscribed: no offer is missed
        mark_document(b)
        expect(b.locator("#offer-list [data-offer-id]")).to_have_count(0)

        freed = time.monotonic()
        cancelled = patient_a.http.patch(
            f"/api/appointments/{appointment}", json={"status": "cancelled"}
        )
        assert cancelled.status_code == 200, cancelled.text
        offer = b.locator("#offer-list [data-offer-id]")
        expect(offer).to_be_visible(timeout=LIVE_WAIT_MS)
        report_live_time(record_property, "a freed slot offered on the doctor search", freed)
        expect(offer).to_contain_text("held for you until")
        expect(offer).to_contain_text("Dr. Berlin")
        screenshot(b, "waitlist-offer-banner")

        offer.get_by_role("button", name="Accept").click()
        expect(b.locator("#offer-answer")).to_contain_text("Booked: the time is yours.")
        expect(b.locator("#offer-list [data-offer-id]")).to_have_count(0)
        expect(b.get_by_role("heading", name="Find a doctor")).to_be_visible()
        assert same_document(b)  # never reloaded, never left the page
        assert errors == [[]]
        mine = patient_b.http.get("/api/appointments").json()["items"]
        assert [a["status"] for a in mine] == ["booked"]
    finally:
        patient_a.close()
        patient_b.close()


def test_a_second_desk_sees_a_new_waitlist_entry_without_reload(browser, live_server, settings):
    """Two desks of one clinic have the waitlist open; one adds a patient with a visit
    type, and a patient joins by themself: both entries appear on the other desk's page."""
    world = fresh_world(settings, patients=2)
    admin = Api(live_server, "admin@t.test")
    try:
        kind = admin.http.post(
            f"/api/doctors/{world.doctor_id}/visit-types",
            json={"name": "Follow-up", "minutes": 30},
        )
        assert kind.status_code == 201, kind.text
    finally:
        admin.close()
    day = day_after_tomorrow()
    patient = Api(live_server, "p0@t.test")
    try:
        one, two = live_page(browser), live_page(browser)
        errors = [watch(one), watch(two)]
        for page in (one, two):
            sign_in(page, live_server, "desk@t.test", "/desk/waitlist")
            wait_for_live(page)
            mark_document(page)
            expect(page.locator("#desk-waitlist-entries")).to_contain_text("Nobody is waiting.")

        form = one.locator("#waitlist-join")
        form.get_by_label("Patient number").fill(str(world.patients[1]))
        form.locator("select[name=doctor_id]").select_option(str(world.doctor_id))
        # Choosing the doctor brings their visit types into the chooser.
        form.locator("select[name=visit_type_id]").select_option(label="Follow-up (30 min)")
        form.get_by_label("From", exact=True).fill(day.isoformat())
        form.get_by_label("To", exact=True).fill(day.isoformat())
        form.get_by_role("button", name="Join the waitlist").click()
        expect(one.locator("#waitlist-message")).to_contain_text("Added to the waitlist.")

        entry = two.locator(f"#desk-waitlist-entries li[data-patient-id='{world.patients[1]}']")
        expect(entry).to_contain_text("Follow-up", timeout=LIVE_WAIT_MS)
        # The second desk was filling in its own form meanwhile: the push leaves it be.
        two.locator("#waitlist-join").get_by_label("Patient number").fill("42")
        joined = patient.http.post(
            "/api/waitlist",
            json={"doctor_id": world.doctor_id, "from": day.isoformat(), "to": day.isoformat()},
        )
        assert joined.status_code == 201, joined.text
        expect(two.locator("#desk-waitlist-entries li")).to_have_count(2, timeout=LIVE_WAIT_MS)
        expect(one.locator("#desk-waitlist-entries li")).to_have_count(2, timeout=LIVE_WAIT_MS)
        expect(two.locator("#waitlist-join").get_by_label("Patient number")).to_have_value("42")
        screenshot(two, "waitlist-desk-live")
        assert same_document(one) and same_document(two)
        assert errors == [[], []]
    finally:
        patient.close()
