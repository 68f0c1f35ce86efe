"""A patient's day in a real browser (issue #23): a visitor browses a doctor's week, sees
why each closed slot is closed, is asked to sign in at "book" and comes back to that
slot; each role lands on its own page; the profile takes both channels; "my
appointments" shows a clinic's cancellation live, with its reason and "book again"."""

from __future__ import annotations

import datetime as dt

import httpx
from playwright.sync_api import expect

from e2e.conftest import screenshot
from e2e.test_live import LIVE_WAIT_MS, _in_thread, fresh_world, sign_in, slot
from tests.integration.world import PASSWORD, at, day_after_tomorrow


def _api(server, world, who: str, method: str, path: str, **body) -> httpx.Response:
    with httpx.Client(base_url=server.url) as client:
        response = client.request(method, path, json=body or None, headers=world.headers(who))
    assert response.status_code < 300, response.text
    return response


def _leave(server, world, start: dt.datetime, end: dt.datetime) -> None:
    _api(
        server,
        world,
        "admin",
        "POST",
        f"/api/doctors/{world.doctor_id}/exceptions",
        starts_at=start.isoformat(),
        ends_at=end.isoformat(),
        kind="leave",
        cancel_affected=True,
    )


def test_a_visitor_browses_sees_why_and_signs_in_at_book(browser, live_server, settings):
    world = fresh_world(settings)
    day = day_after_tomorrow()
    _api(
        live_server,
        world,
        "patient1",
        "POST",
        "/api/appointments",
        doctor_id=world.doctor_id,
        start=at(day, 9).isoformat(),
    )
    _leave(live_server, world, at(day, 12), at(day, 13))
    page = browser.new_context().new_page()
    page.goto(f"{live_server.url}/doctors")
    page.get_by_role("link", name="Dr. Berlin").click()
    expect(page.get_by_role("heading", name="Dr. Berlin")).to_be_visible()
    page.goto(f"{live_server.url}/doctors/{world.doctor_id}/slots?date={day.isoformat()}")
    expect(slot(page, at(day, 9))).to_have_attribute("data-state", "taken")
    expect(slot(page, at(day, 9))).to_have_attribute("aria-label", "09:00 taken")
    expect(slot(page, at(day, 12))).to_have_attribute("aria-label", "12:00 doctor away")
    yesterday = day - dt.timedelta(days=3)
    page.goto(f"{live_server.url}/doctors/{world.doctor_id}/slots?date={yesterday.isoformat()}")
    expect(slot(page, at(yesterday, 10))).to_have_attribute("aria-label", "10:00 past")
    far = dt.date.today() + dt.timedelta(days=120)
    page.goto(f"{live_server.url}/doctors/{world.doctor_id}/slots?date={far.isoformat()}")
    expect(slot(page, at(far, 10))).to_have_attribute("aria-label", "10:00 not bookable yet")

    page.goto(f"{live_server.url}/doctors/{world.doctor_id}/slots?date={day.isoformat()}")
    slot(page, at(day, 10)).click()
    page.get_by_role("link", name="Sign in to book this time").click()
    page.get_by_label("Email").fill("p0@t.test")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    # Back on the week, the chosen time waiting to be confirmed.
    expect(page.get_by_role("heading", name="Book")).to_contain_text("10:00")
    page.get_by_role("button", name="Confirm booking").click()
    expect(page.get_by_role("heading", name="Booked")).to_be_visible()
    screenshot(page, "patient-day-visitor-booked")


def test_each_role_lands_on_its_own_page(browser, live_server, settings):
    fresh_world(settings)
    for email, path in (
        ("p0@t.test", "/me/appointments"),
        ("desk@t.test", "/desk"),
        ("doc@t.test", "/doctor/day"),
        ("admin@t.test", "/admin/clinics"),
    ):
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{live_server.url}/login")
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{live_server.url}{path}*")
        context.close()


def _give_patients_their_login_email(settings) -> None:
    """The test world's patients have logins but no address for messages; registration
    gives them the login's."""
    from sqlalchemy import text

    from db.session import create_engine

    async def update():
        engine = create_engine(settings, application_name="e2e-setup")
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    text(
                        "UPDATE patients p SET email = u.email FROM users u"
                        " WHERE u.patient_id = p.id"
                    )
                )
        finally:
            await engine.dispose()

    _in_thread(update)


def test_the_profile_takes_email_and_sms(browser, live_server, settings):
    fresh_world(settings)
    _give_patients_their_login_email(settings)
    page = browser.new_context().new_page()
    sign_in(page, live_server, "p0@t.test", "/me/profile")
    page.get_by_label("Full name").fill("Ann Example")
    page.get_by_label("Mobile number").fill("+4915112345678")
    page.get_by_label("Language").select_option("de")
    page.get_by_label("email", exact=True).check()
    page.get_by_label("SMS to my mobile").check()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("Saved.")
    expect(page.get_by_label("SMS to my mobile")).to_be_checked()
    expect(page.get_by_label("email", exact=True)).to_be_checked()
    expect(page.get_by_label("Full name")).to_have_value("Ann Example")
    screenshot(page, "patient-day-profile")


def test_my_appointments_shows_a_clinic_cancellation_live(browser, live_server, settings):
    world = fresh_world(settings)
    day = day_after_tomorrow()
    start = at(day, 10)
    booked = _api(
        live_server,
        world,
        "patient0",
        "POST",
        "/api/appointments",
        doctor_id=world.doctor_id,
        start=start.isoformat(),
    ).json()["id"]
    page = browser.new_context().new_page()
    # Counts what the live socket delivered (the first message is its resync).
    page.add_init_script(
        "document.addEventListener('htmx:wsAfterMessage',"
        " () => { window.liveMessages = (window.liveMessages || 0) + 1; });"
    )
    sign_in(page, live_server, "p0@t.test", "/me/appointments")
    item = page.locator(f'[data-appointment-id="{booked}"]')
    expect(item).to_contain_text("at Berlin")
    expect(item).to_contain_text("(Europe/Berlin)")
    page.wait_for_function("() => window.liveMessages >= 1")  # subscribed and resynced

    _leave(live_server, world, start - dt.timedelta(minutes=30), start + dt.timedelta(minutes=30))
    expect(item).to_have_attribute("data-cancelled-by", "clinic", timeout=LIVE_WAIT_MS * 2)
    expect(item).to_contain_text("cancelled by the clinic")
    expect(item).to_contain_text("Reason: doctor unavailable (leave)")
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    screenshot(page, "patient-day-cancelled-by-clinic")
    item.get_by_role("link", name="Book again").click()
    expect(page.get_by_role("heading", name="Dr. Berlin")).to_be_visible()
