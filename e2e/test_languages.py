"""Languages in a real browser: a visitor switches the page to German in the header, and
a slot taken by an English-speaking patient meanwhile arrives live, in German for her and
in English for an English viewer of the same week (one render per language)."""

from __future__ import annotations

from playwright.sync_api import expect

from e2e.conftest import live_page, mark_document, same_document, screenshot, wait_for_live
from e2e.test_live import LIVE_WAIT_MS, fresh_world, sign_in, slot
from tests.integration.world import at, day_after_tomorrow


def test_a_visitor_switches_to_german_and_live_slots_arrive_in_german(
    browser, live_server, settings
):
    world = fresh_world(settings)
    day = day_after_tomorrow()
    start = at(day, 10)
    path = f"/doctors/{world.doctor_id}/slots?date={day.isoformat()}"
    german = live_page(browser, locale="en-US")  # the browser asks for English
    german.goto(live_server.url + path)
    expect(german.get_by_role("link", name="Later →")).to_be_visible()
    german.get_by_label("Show pages in").select_option("de")
    german.get_by_role("button", name="Change").click()
    expect(german.locator("html")).to_have_attribute("lang", "de")
    expect(german.get_by_role("link", name="Später →")).to_be_visible()
    wait_for_live(german)  # subscribed, in German (its cookie)
    mark_document(german)
    english = live_page(browser, locale="en-US")
    english.goto(live_server.url + path)
    wait_for_live(english)

    booker = browser.new_context(locale="en-US").new_page()
    sign_in(booker, live_server, "p1@t.test", path)
    slot(booker, start).click()
    booker.get_by_role("button", name="Confirm booking").click()
    expect(booker.get_by_role("heading", name="Booked")).to_be_visible()

    expect(slot(german, start)).to_have_attribute("data-available", "false", timeout=LIVE_WAIT_MS)
    expect(slot(german, start)).to_have_attribute("title", "vergeben")
    expect(slot(english, start)).to_have_attribute("data-available", "false", timeout=LIVE_WAIT_MS)
    expect(slot(english, start)).to_have_attribute("title", "taken")
    assert same_document(german)  # the change came over the socket, not by a reload
    screenshot(german, "live-slots-german")
