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
