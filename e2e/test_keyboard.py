"""Keyboard only, in a real browser (issue 20, WCAG 2.1.1 and 2.4.3/2.4.7): a patient finds a
doctor, picks a time, books, reschedules and cancels; the desk checks a patient in and books
a walk-in. These tests never click: Tab, Shift+Tab, Enter, Space and typing, through
`page.keyboard` (Enter on a button is how a keyboard presses it). Focus is visible at every
stop and moves after each htmx swap to what it brought (static/js/focus.js); a live update
never takes focus away, and the slot grid's changes are said once in the polite live
region (static/js/announce.js)."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
import redis as redis_sync
from playwright.sync_api import Locator, Page, expect

from app import i18n
from e2e.conftest import live_page, screenshot, wait_for_live
from e2e.test_journeys import LIVE_MS, Api, active_appointments, past_appointment, watch
from e2e.test_live import fresh_world, slot
from tests.integration.world import BERLIN, PASSWORD, at, day_after_tomorrow

FOCUS_WAIT_MS = 5000  # as long as an `expect` waits
TAB_LIMIT = 250  # more stops than any page here has before the element a test wants


def is_focused(target: Locator) -> bool:
    return bool(target.evaluate("el => el === document.activeElement"))


def focus_ring(page: Page) -> dict[str, str]:
    """The focused element's outline, as drawn (WCAG 2.4.7: focus visible)."""
    return page.evaluate(
        """() => { const s = getComputedStyle(document.activeElement);
                   return {style: s.outlineStyle, width: s.outlineWidth}; }"""
    )


def assert_focus_visible(page: Page) -> None:
    ring = focus_ring(page)
    assert ring["style"] != "none" and float(ring["width"].removesuffix("px")) >= 2, ring


def tab_to(page: Page, target: Locator, key: str = "Tab") -> None:
    """Press Tab (or `key`) until `target` has focus; its focus ring must show."""
    target.wait_for(state="attached")
    for _ in range(TAB_LIMIT):
        if is_focused(target):
            assert_focus_visible(page)
            return
        page.keyboard.press(key)
    raise AssertionError(f"{target} never took focus in {TAB_LIMIT} presses of {key}")


def sign_in_by_keyboard(page: Page, url: str, email: str, then: str) -> None:
    page.goto(f"{url}/login?next={then}")
    tab_to(page, page.get_by_label("Email"))
    page.keyboard.type(email)
    tab_to(page, page.get_by_label("Password"))
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"**{then.split('?')[0]}*")


def test_a_patient_books_reschedules_and_cancels_by_keyboard(browser, live_server, settings):
    world = fresh_world(settings)
    day = day_after_tomorrow()
    page = live_page(browser)
    errors = watch(page)
    sign_in_by_keyboard(page, live_server.url, "p0@t.test", "/doctors")

    tab_to(page, page.get_by_label("Name"))
    page.keyboard.type("berl")
    expect(page.locator(".doctor")).to_have_count(1)
    tab_to(page, page.get_by_role("link", name="Dr. Berlin"))
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/doctors/{world.doctor_id}/slots*")

    # The day after tomorrow is in the first week shown; Tab walks the grid to 10:00.
    tab_to(page, slot(page, at(day, 10)))
    page.keyboard.press("Enter")
    heading = page.get_by_role("heading", name=re.compile(r"^Book "))
    expect(heading).to_be_focused()  # the panel that came in takes focus
    assert_focus_visible(page)
    page.keyboard.press("Tab")
    expect(page.get_by_label("Reason for the visit (optional)")).to_be_focused()
    page.keyboard.type("Check-up")
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Confirm booking")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Booked")).to_be_focused()
    screenshot(page, "keyboard-booked")
    [(appointment_id, starts_at)] = active_appointments(settings, world.patients[0])
    assert starts_at == at(day, 10)

    tab_to(page, page.get_by_role("link", name="See my appointments"))
    page.keyboard.press("Enter")
    page.wait_for_url("**/me/appointments")
    mine = page.locator(f'[data-appointment-id="{appointment_id}"]')
    tab_to(page, mine.get_by_role("link", name="Reschedule"))
    page.keyboard.press("Enter")
    page.wait_for_url("**reschedule=*")
    tab_to(page, slot(page, at(day, 12)))
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name=re.compile("^Move my appointment to"))).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Confirm new time")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Moved")).to_be_focused()
    assert active_appointments(settings, world.patients[0]) == [(appointment_id, at(day, 12))]

    # Back to the list, by Shift+Tab this time (the link is after the heading).
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="See my appointments")).to_be_focused()
    page.keyboard.press("Enter")
    page.wait_for_url("**/me/appointments")
    cancel = page.locator(f'[data-appointment-id="{appointment_id}"]').get_by_role(
        "button", name="Cancel"
    )
    tab_to(page, cancel)
    page.keyboard.press("Shift+Tab")  # and back: focus order runs both ways
    expect(cancel).not_to_be_focused()
    page.keyboard.press("Tab")
    expect(cancel).to_be_focused()
    page.once("dialog", lambda dialog: dialog.accept())  # hx-confirm's question: Enter = OK
    page.keyboard.press("Enter")
    expect(page.locator("#my-message [role=status]")).to_be_focused()
    expect(page.locator("#my-message")).to_have_text("Cancelled.")
    expect(page.locator(f'[data-appointment-id="{appointment_id}"]')).to_have_count(0)
    assert active_appointments(settings, world.patients[0]) == []
    assert errors == [], "\n".join(errors)
    page.context.close()


def test_the_desk_checks_in_and_books_a_walk_in_by_keyboard(browser, live_server, settings):
    world = fresh_world(settings)
    today = dt.datetime.now(BERLIN).date()
    now_one = past_appointment(settings, world, 0, at(today, 0))
    page = live_page(browser)
    errors = watch(page)
    sign_in_by_keyboard(page, live_server.url, "desk@t.test", f"/desk?date={today.isoformat()}")
    wait_for_live(page)

    card = page.locator(f'.card[data-appointment-id="{now_one}"]')
    tab_to(page, card.get_by_role("button", name="Check in"))
    page.keyboard.press("Enter")
    expect(card).to_have_attribute("data-status", "checked_in", timeout=LIVE_MS)
    message = page.locator("#board-message")
    expect(message).to_be_focused()
    expect(message).to_contain_text("checked in")

    # The walk-in, on a day ahead (a time today may already have passed).
    day = day_after_tomorrow()
    page.goto(f"{live_server.url}/desk?date={day.isoformat()}")
    search = page.get_by_label("Patient name")
    tab_to(page, search)
    page.keyboard.type("Patient 1")
    choice = page.get_by_label("Patient 1")
    expect(choice).to_be_visible()
    expect(search).to_be_focused()  # the hits arriving while typing leave focus alone
    page.keyboard.press("Tab")
    expect(choice).to_be_focused()
    page.keyboard.press("Space")
    expect(choice).to_be_checked()
    tab_to(page, page.get_by_label("Time (HH:MM)"))
    page.keyboard.type("11:00")
    page.keyboard.press("Enter")  # submits the walk-in form
    result = page.locator("#walk-in-result")
    expect(result).to_contain_text("Booked at 11:00 for Patient 1 with Dr. Berlin")
    # Focus follows once htmx has settled the answer (static/js/focus.js).
    page.wait_for_function(
        "() => document.activeElement.closest('#walk-in-result') !== null",
        timeout=FOCUS_WAIT_MS,
    )
    assert_focus_visible(page)
    card = page.locator(f'[data-slot-start="{at(day, 11).isoformat()}"] .card')
    expect(card).to_contain_text("Patient 1", timeout=LIVE_MS)
    screenshot(page, "keyboard-walk-in")
    assert errors == [], "\n".join(errors)
    page.context.close()


# Every text the live region takes, in order (a MutationObserver; set up after the load).
_HEAR = """() => {
  const region = document.getElementById("live-announcer");
  window.__said = [];
  new MutationObserver(() => window.__said.push(region.textContent))
    .observe(region, {childList: true, characterData: true, subtree: true});
}"""


def publish_again(settings, doctor_id: int, day: dt.date) -> None:
    """The doctor-day's event once more, with nothing changed: every watcher gets an
    identical push (as after a resync)."""
    from app.live.realtime import channel_prefix, schedule_messages

    client = redis_sync.Redis.from_url(settings.redis_url)
    try:
        prefix = channel_prefix(client)  # type: ignore[arg-type]
        for channel, payload in schedule_messages([(doctor_id, day)]):
            client.publish(prefix + channel, json.dumps(payload))
    finally:
        client.close()


def choose_language_by_keyboard(page: Page, language: str) -> None:
    """The header's switcher, by keyboard: type the language's name into the focused
    select (Chromium's type-ahead picks the option), then Enter on its button."""
    if language == i18n.SOURCE_LANGUAGE:
        return
    choice = page.locator("#language-choice")
    tab_to(page, choice)
    page.keyboard.type(i18n.NAMES[language])
    expect(choice).to_have_value(language)
    tab_to(page, page.locator(".language-switcher button[type=submit]"))
    page.keyboard.press("Enter")
    expect(page.locator("html")).to_have_attribute("lang", language)


def said(language: str, time: str) -> str:
    """The polite region's words for a time taken, as the catalogue has them."""
    return (
        i18n.translations(language)
        .gettext("{time} is no longer available.")
        .replace("{time}", time)
    )


@pytest.mark.parametrize("language", ["en", "de"])
def test_a_live_update_keeps_focus_and_is_announced_once(browser, live_server, settings, language):
    """In each language the words come from its catalogue (the template's data-gone),
    said once per change."""
    world = fresh_world(settings)
    day = day_after_tomorrow()
    page = live_page(browser)
    sign_in_by_keyboard(page, live_server.url, "p0@t.test", "/me")
    page.wait_for_url(f"{live_server.url}/me")  # ("**/me*" matches /login?next=/me too)
    choose_language_by_keyboard(page, language)  # saved: the patient's language now
    page.goto(f"{live_server.url}/doctors/{world.doctor_id}/slots?date={day}")
    expect(page.locator("html")).to_have_attribute("lang", language)
    wait_for_live(page)  # the whole view, as on every connect: nothing changed, nothing said
    page.evaluate(_HEAR)
    region = page.locator("#live-announcer")
    expect(region).to_have_attribute("aria-live", "polite")
    eleven = slot(page, at(day, 11))
    tab_to(page, eleven)

    other = Api(live_server, "p1@t.test")
    try:
        other.book(world.doctor_id, at(day, 10))
        wait_for_live(page, count=2)
        expect(slot(page, at(day, 10))).to_have_attribute("data-available", "false")
        expect(region).to_have_text(said(language, "10:00"))
        expect(eleven).to_be_focused()  # the redrawn day kept focus on the same time
        assert_focus_visible(page)

        publish_again(settings, world.doctor_id, day)
        wait_for_live(page, count=3)
        assert page.evaluate("window.__said") == [said(language, "10:00")]
        expect(eleven).to_be_focused()

        # The focused time itself is taken: focus moves on to the next free time, not to
        # the top of the page.
        other.book(world.doctor_id, at(day, 11))
        wait_for_live(page, count=4)
        expect(region).to_have_text(said(language, "11:00"))
        expect(slot(page, at(day, 11, 30))).to_be_focused()
        assert page.evaluate("window.__said") == [
            said(language, "10:00"),
            said(language, "11:00"),
        ]
    finally:
        other.close()
        page.context.close()


def test_focus_is_visible_and_the_skip_link_leads_to_the_content(browser, live_server, settings):
    fresh_world(settings)
    page = browser.new_context().new_page()
    page.goto(f"{live_server.url}/login")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    assert_focus_visible(page)
    assert skip.is_visible()  # shown when tabbed to, hidden otherwise
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    # The next stop is inside <main>, past the header's links.
    assert page.evaluate("document.activeElement.closest('main') !== null")
    assert_focus_visible(page)
    page.context.close()


def test_a_live_redraw_of_the_board_keeps_the_desks_focus(browser, live_server, settings):
    """A booking redraws the doctor's whole column; the desk's focus stays on the button it
    was on (found again by its appointment), not thrown back to the top of the page."""
    world = fresh_world(settings)
    day = day_after_tomorrow()
    patient = Api(live_server, "p0@t.test")
    other = Api(live_server, "p1@t.test")
    page = live_page(browser)
    try:
        first = patient.book(world.doctor_id, at(day, 10))
        sign_in_by_keyboard(page, live_server.url, "desk@t.test", f"/desk?date={day}")
        wait_for_live(page)
        no_show = page.locator(f'.card[data-appointment-id="{first}"]').get_by_role(
            "button", name="No-show"
        )
        tab_to(page, no_show)
        other.book(world.doctor_id, at(day, 11))
        wait_for_live(page, count=2)
        eleven = page.locator(f'[data-slot-start="{at(day, 11).isoformat()}"] .card')
        expect(eleven).to_have_count(1)
        expect(no_show).to_be_focused()
        assert_focus_visible(page)
    finally:
        patient.close()
        other.close()
        page.context.close()


def test_arrow_keys_move_through_the_slot_grid(browser, live_server, settings):
    """Up/Down: the day's next or previous free time; Left/Right: the same place a day
    later or earlier; Home/End: the day's first or last; a taken time is skipped."""
    world = fresh_world(settings)
    day = day_after_tomorrow()
    later = day + dt.timedelta(days=1)
    other = Api(live_server, "p1@t.test")
    try:
        other.book(world.doctor_id, at(day, 8, 30))
    finally:
        other.close()
    page = live_page(browser)
    try:
        page.goto(f"{live_server.url}/doctors/{world.doctor_id}/slots?date={day}")
        tab_to(page, slot(page, at(day, 8)))
        steps = [
            ("ArrowDown", at(day, 9)),  # 08:30 is taken
            ("ArrowRight", at(later, 9)),
            ("ArrowDown", at(later, 9, 30)),
            ("ArrowLeft", at(day, 9, 30)),
            ("ArrowUp", at(day, 9)),
            ("End", at(day, 19, 30)),
            ("Home", at(day, 8)),
            ("ArrowUp", at(day, 8)),  # the first time: focus stays
        ]
        for key, start in steps:
            page.keyboard.press(key)
            expect(slot(page, start)).to_be_focused()
            assert_focus_visible(page)
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", name=re.compile(r"^Book "))).to_be_focused()
    finally:
        page.context.close()
