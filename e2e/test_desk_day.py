"""The front desk and the doctor in a real browser (issue #23 items 7-12): check-in on the
day with its undo, a new patient registered in the walk-in form, a cleared search that
books nobody, and a record downloaded under its title and type with its time in the
clinic's zone and no patient named on a refusal."""

from __future__ import annotations

import datetime as dt
import re

from playwright.sync_api import expect

from e2e.conftest import screenshot
from e2e.test_journeys import LIVE_MS, past_appointment, sql, watch
from e2e.test_live import fresh_world, sign_in
from e2e.test_records import PDF
from tests.integration.world import BERLIN, at, day_after_tomorrow


def test_check_in_on_the_day_then_undo_it(browser, live_server, settings):
    world = fresh_world(settings)
    today = dt.datetime.now(BERLIN).date()
    # Today's first minutes (the booking rules refuse a time that has passed).
    now_one = past_appointment(settings, world, 0, at(today, 0))
    later = past_appointment(settings, world, 1, at(day_after_tomorrow(), 9))
    desk = browser.new_context().new_page()
    try:
        errors = watch(desk)
        sign_in(desk, live_server, "desk@t.test", f"/desk?date={day_after_tomorrow()}")
        future = desk.locator(f'.card[data-appointment-id="{later}"]')
        expect(future).to_be_visible()
        expect(future.get_by_role("button", name="Check in")).to_have_count(0)  # not its day

        desk.goto(f"{live_server.url}/desk?date={today.isoformat()}")
        card = desk.locator(f'.card[data-appointment-id="{now_one}"]')
        card.get_by_role("button", name="Check in").click()
        expect(card).to_have_attribute("data-status", "checked_in", timeout=LIVE_MS)
        screenshot(desk, "desk-day-checked-in")
        card.get_by_role("button", name="Undo check-in").click()
        expect(desk.locator("#board-message")).to_have_text(
            f"Appointment {now_one}: check-in undone."
        )
        expect(card).to_have_attribute("data-status", "booked", timeout=LIVE_MS)
        expect(card.get_by_role("button", name="Undo check-in")).to_have_count(0)
        actions = sql(
            settings,
            "SELECT count(*) FROM audit_events WHERE action = 'appointment.check_in_undone' "
            "AND subject_id = :i",
            i=now_one,
        )
        assert actions[0] == 1
        assert errors == [], "\n".join(errors)
    finally:
        desk.context.close()


def test_walk_in_of_a_new_patient_and_a_cleared_search_books_nobody(browser, live_server, settings):
    world = fresh_world(settings)
    day = day_after_tomorrow()
    desk = browser.new_context().new_page()
    try:
        errors = watch(desk)
        sign_in(desk, live_server, "desk@t.test", f"/desk?date={day.isoformat()}")
        desk.get_by_label("Patient name").fill("Nowak")
        expect(desk.locator("#patient-hits")).to_contain_text("No patient found for “Nowak”")
        expect(desk.get_by_label("Full name")).to_have_value("Nowak")  # what was typed
        desk.get_by_label("Full name").fill("Jan Nowak")
        desk.get_by_label("Date of birth").fill("1980-02-29")
        desk.get_by_role("button", name="Register patient").click()
        expect(desk.locator("#new-patient-msg")).to_have_text(
            "Registered Jan Nowak: selected for the walk-in."
        )
        expect(desk.get_by_label("Jan Nowak")).to_be_checked()
        expect(desk.get_by_label("Patient name")).to_have_value("Jan Nowak")
        desk.get_by_label("Doctor").select_option(str(world.doctor_id))
        desk.get_by_label("Time (HH:MM)").fill("11:00")
        desk.get_by_role("button", name="Book", exact=True).click()
        expect(desk.locator("#walk-in-result")).to_contain_text(
            "Booked at 11:00 for Jan Nowak with Dr. Berlin"
        )
        card = desk.locator(f'[data-slot-start="{at(day, 11).isoformat()}"] .card')
        expect(card).to_contain_text("Jan Nowak", timeout=LIVE_MS)
        screenshot(desk, "desk-day-new-patient-walk-in")

        # Choose a patient, clear the box and press Book at once: nobody is booked.
        desk.get_by_label("Patient name").fill("Patient 1")
        desk.get_by_label("Patient 1").check()
        desk.get_by_label("Time (HH:MM)").fill("12:00")
        desk.get_by_label("Patient name").fill("")
        desk.get_by_role("button", name="Book", exact=True).click()
        # Book sent before the cleared search's answer: the server sees a choice the box no
        # longer shows; after it (a busy machine): the radio is gone, no patient is chosen.
        # Either way nobody is booked, and the desk is told to choose.
        expect(desk.locator("#walk-in-result")).to_contain_text(
            re.compile("the patient search has changed: choose the patient again|Choose a patient")
        )
        count = sql(
            settings, "SELECT count(*) FROM appointments WHERE patient_id = :p", p=world.patients[1]
        )
        assert count[0] == 0
        assert errors == [], "\n".join(errors)
    finally:
        desk.context.close()


def test_the_doctor_downloads_a_record_by_its_name_and_reads_its_time(
    browser, live_server, settings, tmp_path
):
    world = fresh_world(settings)
    today = dt.datetime.now(BERLIN).date()
    past_appointment(settings, world, 0, at(today, 0))  # patient 0: in the doctor's care
    sql(  # patient 1: only a cancelled appointment, so not theirs to read
        settings,
        "INSERT INTO appointments (doctor_id, patient_id, clinic_id, starts_at, ends_at, status)"
        " VALUES (:d, :p, :c, :s, :e, 'cancelled')",
        d=world.doctor_id,
        p=world.patients[1],
        c=world.clinic_id,
        s=at(today, 1),
        e=at(today, 1, 30),
    )
    doctor = browser.new_context(timezone_id="UTC").new_page()
    try:
        errors = watch(doctor)
        sign_in(doctor, live_server, "doc@t.test", f"/patients/{world.patients[0]}/records")
        pdf = tmp_path / "scan.pdf"
        pdf.write_bytes(PDF)
        doctor.get_by_label("File (PDF, PNG or JPEG)").set_input_files(str(pdf))
        doctor.get_by_label("Type").select_option("imaging")
        doctor.get_by_label("Title").fill("Röntgen Thorax")
        doctor.get_by_role("button", name="Upload").click()
        row = doctor.locator("tr[data-record-id]").first
        expect(row).to_be_visible(timeout=LIVE_MS)
        uploaded = sql(settings, "SELECT uploaded_at FROM medical_records")[0]
        expect(row.locator("time")).to_have_text(
            uploaded.astimezone(BERLIN).strftime("%Y-%m-%d %H:%M %Z")
        )
        with doctor.expect_download() as download:
            row.get_by_role("link", name="Download").click()
        assert download.value.suggested_filename == "Röntgen Thorax (imaging).pdf"
        screenshot(doctor, "doctor-records-local-time")

        doctor.goto(f"{live_server.url}/patients/{world.patients[1]}/records")
        expect(doctor.get_by_role("alert")).to_contain_text("break-glass reason")
        assert "Patient 1" not in doctor.content()
        assert errors == [], "\n".join(errors)
    finally:
        doctor.context.close()
