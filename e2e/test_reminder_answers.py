"""A reminder answered in a real browser: the patient confirms from the e-mail's link
without signing in, and the desk board, open meanwhile, shows it live."""

from __future__ import annotations

import time

from playwright.sync_api import expect

from app.notifications.answer_links import answer_token
from e2e.conftest import live_page, mark_document, report_live_time, same_document, wait_for_live
from e2e.test_live import LIVE_WAIT_MS, fresh_world, sign_in
from tests.integration.world import at, day_after_tomorrow


def test_a_confirmation_from_the_link_shows_on_the_desk_board_live(
    browser, live_server, settings, record_property
):
    world = fresh_world(settings)
    day = day_after_tomorrow()
    desk = live_page(browser)
    sign_in(desk, live_server, "desk@t.test", f"/desk?date={day.isoformat()}")
    booked = desk.request.post(
        f"{live_server.url}/api/appointments",
        data={"doctor_id": world.doctor_id, "start": at(day, 10).isoformat()},
        headers=world.headers("patient0"),
    )
    assert booked.status == 201, booked.text()
    appointment_id = booked.json()["id"]
    card = desk.locator(f'.card[data-appointment-id="{appointment_id}"]')
    expect(card).to_be_visible(timeout=LIVE_WAIT_MS)
    expect(card.locator("[data-confirmed]")).to_have_count(0)
    wait_for_live(desk)
    mark_document(desk)

    patient = browser.new_context().new_page()  # not signed in: the link is enough
    token = answer_token(settings.secret_key, appointment_id, at(day, 10))
    patient.goto(f"{live_server.url}/r/{token}")
    patient.get_by_role("button", name="Confirm — I will come").click()
    confirmed = time.monotonic()
    expect(patient.get_by_role("status")).to_contain_text("confirmed")

    expect(card.locator("[data-confirmed='true']")).to_have_count(1, timeout=LIVE_WAIT_MS)
    report_live_time(record_property, "confirmation on the desk board", confirmed)
    assert same_document(desk)
    # The link is single-use: opening it again only says so.
    patient.goto(f"{live_server.url}/r/{token}")
    expect(patient.get_by_text("You have confirmed this appointment.")).to_be_visible()
    expect(patient.get_by_role("button", name="Confirm — I will come")).to_have_count(0)
