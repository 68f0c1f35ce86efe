"""A day at the clinic (issue #23), in four browser contexts of one browser: the desk's
morning board, a walk-in of a new patient, leave that conflicts with two bookings, the
desk moving one and cancelling the other with a notice, the doctor's day following live,
the cancelled patient seeing it and booking again, and a password reset followed from its
e-mail (the worker writes it to the dev mailbox). Screenshots go
to test-artifacts/day-at-the-clinic/."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import Page, expect

from e2e.conftest import ARTIFACTS
from e2e.test_journeys import LIVE_MS, Api, sql, wait_for, watch
from e2e.test_live import fresh_world, sign_in, slot
from tests.integration.world import PASSWORD, at, day_after_tomorrow

SHOTS = ARTIFACTS / "day-at-the-clinic"
NEW_PASSWORD = "a-new-long-passphrase-9"


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True, caret="initial")


RESET_LINK = re.compile(r"https?://[^/\s]+(/password-reset/[\w-]+)")


def reset_link_from_mail(settings, email: str) -> str:
    """The path of the reset link in the e-mail `email` got: the browsers' worker sends
    through the outbox into the dev mailbox (no SMTP server here), and this reads that
    e-mail's text as sent. The link's origin is the configured public one; the path is
    followed on the server under test."""
    mail: list[str] = []

    def arrived() -> bool:
        row = sql(
            settings,
            "SELECT body_text FROM dev_mailbox WHERE recipient = :r "
            "AND subject = 'Reset your medbook password' ORDER BY id DESC LIMIT 1",
            r=email,
        )
        mail[:] = [row[0]] if row else []
        return bool(mail)

    wait_for(arrived, f"the reset e-mail to {email}")
    link = RESET_LINK.search(mail[0])
    assert link, mail[0]
    return link.group(1)


def test_a_day_at_the_clinic(browser, live_server, settings):
    world = fresh_world(settings, patients=2)
    sql(settings, "UPDATE patients SET email = 'p' || id || '@t.test'")
    day = day_after_tomorrow()
    apis = [Api(live_server, f"p{i}@t.test") for i in range(2)]
    try:
        anna = apis[0].book(world.doctor_id, at(day, 9))  # will be moved
        ben = apis[1].book(world.doctor_id, at(day, 10))  # will be cancelled
    finally:
        for api in apis:
            api.close()
    contexts = [browser.new_context() for _ in range(4)]
    try:
        desk, doctor, patient_a, patient_b = (c.new_page() for c in contexts)
        errors = [watch(p) for p in (desk, doctor, patient_a)]

        # Morning: the board and the doctor's day.
        sign_in(desk, live_server, "desk@t.test", f"/desk?date={day.isoformat()}")
        sign_in(doctor, live_server, "doc@t.test", f"/doctor/day?date={day.isoformat()}")
        for page in (desk, doctor):
            page.wait_for_function("() => document.querySelector('#live') !== null")
        doctor.wait_for_timeout(300)  # let both sockets subscribe
        berlin = desk.get_by_role("region", name="Dr. Berlin")
        expect(berlin.locator(".card")).to_have_count(2)
        shot(desk, "01-morning-board")

        # A walk-in new to medbook.
        desk.get_by_label("Patient name").fill("Nowak")
        expect(desk.locator("#patient-hits")).to_contain_text("No patient found")
        desk.get_by_label("Full name").fill("Jan Nowak")
        desk.get_by_label("Date of birth").fill("1975-06-01")
        desk.get_by_role("button", name="Register patient").click()
        expect(desk.get_by_label("Jan Nowak")).to_be_checked()
        desk.get_by_label("Doctor").select_option(str(world.doctor_id))
        desk.get_by_label("Time (HH:MM)").fill("14:00")
        desk.get_by_role("button", name="Book", exact=True).click()
        expect(desk.locator("#walk-in-result")).to_contain_text("for Jan Nowak with Dr. Berlin")
        expect(doctor.locator(".card", has_text="Jan Nowak")).to_be_visible(timeout=LIVE_MS)
        shot(desk, "02-walk-in-new-patient")

        # Leave over the morning, the bookings left in place: both show as conflicting.
        with httpx.Client(base_url=live_server.url, timeout=10) as http:
            token = http.post(
                "/api/auth/token", json={"email": "admin@t.test", "password": PASSWORD}
            ).json()["access_token"]
            leave = http.post(
                f"/api/doctors/{world.doctor_id}/exceptions",
                json={
                    "starts_at": at(day, 8).isoformat(),
                    "ends_at": at(day, 12).isoformat(),
                    "note": "training",
                },
                headers={"Authorization": f"Bearer {token}"},
            )
            assert leave.status_code in (200, 201), leave.text
        for appointment_id in (anna, ben):
            card = desk.locator(f'.card[data-appointment-id="{appointment_id}"]')
            expect(card).to_have_attribute("data-conflict", "true", timeout=LIVE_MS)
            doctor_card = doctor.locator(f'[data-appointment-id="{appointment_id}"]')
            expect(doctor_card).to_have_attribute("data-conflict", "true", timeout=LIVE_MS)
        shot(desk, "03-leave-conflicts")
        shot(doctor, "03-doctor-sees-conflicts")

        # The desk moves Anna to the nearest free time and cancels Ben with a notice.
        desk.locator(f'[data-appointment-id="{anna}"] input[type=checkbox]').check()
        desk.get_by_role("button", name="Move selected to nearest free times").click()
        moved = desk.locator(f'#board-message [data-appointment-id="{anna}"]')
        expect(moved).to_have_attribute("data-result", "moved")
        expect(moved).to_contain_text("12:00")
        new_slot = berlin.locator(f'[data-slot-start="{at(day, 12).isoformat()}"]')
        expect(new_slot.locator(f'[data-appointment-id="{anna}"]')).to_be_visible(timeout=LIVE_MS)
        # Dealt with, so no longer selected: the next bulk action is Ben's alone.
        expect(
            desk.locator(f'[data-appointment-id="{anna}"] input[type=checkbox]')
        ).not_to_be_checked()
        desk.locator(f'[data-appointment-id="{ben}"] input[type=checkbox]').check()
        desk.once("dialog", lambda dialog: dialog.accept())
        desk.get_by_role("button", name="Cancel selected with notice").click()
        cancelled = desk.locator(f'#board-message [data-appointment-id="{ben}"]')
        expect(cancelled).to_have_attribute("data-result", "cancelled")
        expect(desk.locator("#board-message [data-appointment-id]")).to_have_count(1)
        expect(desk.locator('.card[data-conflict="true"]')).to_have_count(0, timeout=LIVE_MS)
        expect(doctor.locator(f'[data-appointment-id="{anna}"] time')).to_have_text(
            "12:00", timeout=LIVE_MS
        )
        shot(desk, "04-desk-resolved")
        shot(doctor, "04-doctor-day-after")

        # Anna sees her new time; Ben sees the clinic's cancellation and books again.
        sign_in(patient_a, live_server, "p0@t.test", "/me/appointments")
        expect(patient_a.locator(f'[data-appointment-id="{anna}"]')).to_have_attribute(
            "data-status", "booked"
        )
        # The clinic's cancellation stays in his list, said to be the clinic's, with a way
        # to book again; its notice waits in the outbox.
        sign_in(patient_b, live_server, "p1@t.test", "/me/appointments")
        cancelled_item = patient_b.locator(f'[data-appointment-id="{ben}"]')
        expect(cancelled_item).to_have_attribute("data-cancelled-by", "clinic")
        expect(cancelled_item).to_contain_text("cancelled by the clinic")
        shot(patient_b, "05-patient-sees-cancellation")
        notice = sql(
            settings,
            "SELECT count(*) FROM notifications WHERE appointment_id = :a "
            "AND kind = 'cancellation'",
            a=ben,
        )
        assert notice[0] == 1
        cancelled_item.get_by_role("link", name="Book again").click()
        patient_b.wait_for_url(f"**/doctors/{world.doctor_id}/slots?date={day}")
        slot(patient_b, at(day, 15)).click()
        patient_b.get_by_role("button", name="Confirm booking").click()
        expect(patient_b.get_by_role("heading", name="Booked")).to_be_visible()
        expect(
            desk.locator(f'[data-slot-start="{at(day, 15).isoformat()}"] .card')
        ).to_contain_text("Patient 1", timeout=LIVE_MS)
        shot(patient_b, "06-patient-books-again")

        # Ben forgot his password: a reset link, a new password, signed in again.
        patient_b.context.clear_cookies()
        patient_b.goto(f"{live_server.url}/password-reset")
        patient_b.get_by_label("Email").fill("p1@t.test")
        patient_b.get_by_role("button", name="Send reset link").click()
        expect(patient_b.get_by_role("status")).to_contain_text("a reset link")
        patient_b.goto(live_server.url + reset_link_from_mail(settings, "p1@t.test"))
        patient_b.get_by_label("New password").fill(NEW_PASSWORD)
        patient_b.get_by_role("button", name="Set password").click()
        patient_b.wait_for_url("**/login*")
        patient_b.get_by_label("Email").fill("p1@t.test")
        patient_b.get_by_label("Password").fill(NEW_PASSWORD)
        patient_b.get_by_role("button", name="Sign in").click()
        expect(patient_b.locator(".whoami")).to_be_visible()
        shot(patient_b, "07-signed-in-after-reset")
        for found in errors:
            assert found == [], "\n".join(found)
    finally:
        for context in contexts:
            context.close()
