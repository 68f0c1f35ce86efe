"""Records in real browsers: a doctor uploads from the panel of the day view, a second
doctor with the patient in their care sees the document appear without a reload, and the
patient downloads it."""

from __future__ import annotations

import datetime as dt
import time

from playwright.sync_api import expect

import e2e.conftest as browsing
from conftest import LiveServer
from e2e.conftest import screenshot
from e2e.test_live import LIVE_WAIT_MS, _in_thread, fresh_world, sign_in
from tests.integration.world import BERLIN, at

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"


def give_care(settings, world) -> None:
    """Both doctors see patient 0 today (a second doctor gets a login), so both may read."""
    from app.access.passwords import hash_password
    from db.models import Appointment, User
    from db.session import create_engine, session_factory
    from tests.integration.world import PASSWORD

    async def build():
        engine = create_engine(settings, application_name="e2e-records")
        try:
            async with session_factory(engine)() as session:
                today = dt.datetime.now(BERLIN).date()
                for doctor_id, clinic_id, hour, status in (
                    (world.doctor_id, world.clinic_id, 9, "checked_in"),
                    (world.other_doctor_id, world.other_clinic_id, 11, "completed"),
                ):
                    session.add(
                        Appointment(
                            doctor_id=doctor_id,
                            patient_id=world.patients[0],
                            clinic_id=clinic_id,
                            starts_at=at(today, hour),
                            ends_at=at(today, hour, 30),
                            status=status,
                        )
                    )
                session.add(
                    User(
                        email="doc2@t.test",
                        password_hash=hash_password(PASSWORD),
                        role="doctor",
                        doctor_id=world.other_doctor_id,
                    )
                )
                await session.commit()
        finally:
            await engine.dispose()

    _in_thread(build)


def test_upload_appears_live_for_a_colleague_and_the_patient_downloads_it(
    browser, live_server: LiveServer, settings, tmp_path, record_property
):
    world = fresh_world(settings)
    give_care(settings, world)
    patient_id = world.patients[0]
    uploader = browser.new_context().new_page()
    colleague = browsing.live_page(browser)
    patient = browser.new_context(accept_downloads=True).new_page()

    # The uploading doctor opens the patient's panel from their day.
    sign_in(uploader, live_server, "doc@t.test", "/doctor/day")
    card = uploader.locator(".card", has_text="Patient 0")
    card.get_by_role("button", name="Records").click()
    panel = uploader.locator(f"#records-{patient_id}")
    expect(panel).to_contain_text("No records yet")

    # The colleague has the same patient's records page open.
    sign_in(colleague, live_server, "doc2@t.test", f"/patients/{patient_id}/records")
    expect(colleague.locator(f"#records-{patient_id}")).to_contain_text("No records yet")
    # Connected. (An upload before the subscription is confirmed still shows: the socket
    # sends what is newer than the page's records once it is subscribed.)
    browsing.wait_for_live(colleague, "opens")
    browsing.mark_document(colleague)

    document = tmp_path / "lab-report.pdf"
    document.write_bytes(PDF)
    panel.get_by_label("File (PDF, PNG or JPEG)").set_input_files(str(document))
    panel.get_by_label("Type").select_option("lab_result")
    panel.get_by_label("Title").fill("Lipid panel")
    uploaded = time.monotonic()
    panel.get_by_role("button", name="Upload").click()
    expect(panel.get_by_role("status").filter(has_text="Uploaded")).to_be_visible()

    row = colleague.locator(f"#records-list-{patient_id} tr", has_text="Lipid panel")
    expect(row).to_be_visible(timeout=LIVE_WAIT_MS)
    browsing.report_live_time(record_property, "upload on a colleague's records page", uploaded)
    assert browsing.same_document(colleague)  # never reloaded
    expect(uploader.locator(f"#records-list-{patient_id}")).to_contain_text("Lipid panel")
    screenshot(colleague, "records-live-colleague")
    screenshot(uploader, "records-doctor-day-panel")

    # The patient downloads it from their own page: the same bytes.
    sign_in(patient, live_server, "p0@t.test", "/me/records")
    with patient.expect_download() as info:
        patient.locator("tr", has_text="Lipid panel").get_by_role("link", name="Download").click()
    saved = tmp_path / "downloaded.pdf"
    info.value.save_as(saved)
    assert saved.read_bytes() == PDF
    screenshot(patient, "records-patient-page")
