"""An admin changes and then withdraws a doctor's leave in a real browser while a patient
watches the doctor's slots: the times the leave gives back open without a reload."""

from __future__ import annotations

import datetime as dt
import re

from playwright.sync_api import expect

from e2e.conftest import screenshot
from e2e.test_live import _in_thread, fresh_world, sign_in, slot
from tests.integration.world import at, day_after_tomorrow

# The live update's deadline: generous for a loaded machine, far below a reload cycle.
LIVE_TIMEOUT_MS = 5000
# Counts the live messages htmx has swapped in; the first is the resync the server sends
# once Redis has confirmed the page's subscriptions.
COUNT_LIVE_MESSAGES = """
window.liveMessages = 0;
document.addEventListener("htmx:wsAfterMessage", () => { window.liveMessages += 1; });
"""


def add_leave(settings, doctor_id: int, clinic_id: int, start: dt.datetime, end: dt.datetime):
    from db.models import ScheduleException
    from db.session import create_engine, session_factory

    async def create() -> int:
        engine = create_engine(settings, application_name="e2e-setup")
        try:
            async with session_factory(engine)() as session:
                leave = ScheduleException(
                    clinic_id=clinic_id,
                    doctor_id=doctor_id,
                    kind="leave",
                    starts_at=start,
                    ends_at=end,
                    note="training",
                )
                session.add(leave)
                await session.commit()
                return leave.id
        finally:
            await engine.dispose()

    return _in_thread(create)


def test_changed_then_withdrawn_leave_reopens_slots_live(browser, live_server, settings):
    world = fresh_world(settings, patients=1)
    day = day_after_tomorrow()
    add_leave(settings, world.doctor_id, world.clinic_id, at(day, 9), at(day, 12))
    errors: list[str] = []

    viewer = browser.new_context().new_page()
    viewer.on("pageerror", lambda exc: errors.append(str(exc)))
    viewer.add_init_script(COUNT_LIVE_MESSAGES)
    sign_in(viewer, live_server, "p0@t.test", f"/doctors/{world.doctor_id}/slots?date={day}")
    viewer.wait_for_function("() => window.liveMessages > 0")  # subscribed and in sync
    expect(slot(viewer, at(day, 10))).to_have_attribute("data-available", "false")
    expect(slot(viewer, at(day, 14))).to_have_attribute("data-available", "true")

    admin = browser.new_context().new_page()
    admin.on("pageerror", lambda exc: errors.append(str(exc)))
    sign_in(admin, live_server, "admin@t.test", f"/admin/doctors/{world.doctor_id}/schedule")
    planned = admin.locator("#exceptions ul.upcoming li")
    expect(planned).to_have_count(1)
    expect(planned).to_contain_text("09:00")

    # Move the leave to the afternoon: the morning reopens, the afternoon closes.
    planned.get_by_role("link", name=re.compile("^Change")).click()
    expect(admin.get_by_role("heading", name="Change this leave")).to_be_visible()
    expect(admin.get_by_label("Start time")).to_have_value("09:00")
    admin.get_by_label("Start time").fill("13:00")
    admin.get_by_label("End time").fill("16:00")
    admin.get_by_role("button", name="Save changes").click()
    expect(admin.locator("#exceptions").get_by_role("status").first).to_contain_text("Saved.")
    expect(planned).to_contain_text("13:00")
    expect(admin.get_by_role("heading", name="Change this leave")).to_have_count(0)

    expect(slot(viewer, at(day, 10))).to_have_attribute(
        "data-available", "true", timeout=LIVE_TIMEOUT_MS
    )
    expect(slot(viewer, at(day, 14))).to_have_attribute(
        "data-available", "false", timeout=LIVE_TIMEOUT_MS
    )

    # Withdraw it (the browser asks first): the afternoon reopens too.
    admin.once("dialog", lambda dialog: dialog.accept())
    planned.get_by_role("button", name=re.compile("^Withdraw")).click()
    expect(admin.locator("#exceptions")).to_contain_text("Leave withdrawn")
    expect(admin.locator("#exceptions")).to_contain_text("Nothing planned.")
    expect(slot(viewer, at(day, 14))).to_have_attribute(
        "data-available", "true", timeout=LIVE_TIMEOUT_MS
    )
    screenshot(viewer, "admin-leave-withdrawn-slots")
    screenshot(admin, "admin-leave-withdrawn")

    # What the patient saw live is what a reload shows.
    viewer.reload()
    for hour in (10, 14):
        expect(slot(viewer, at(day, hour))).to_have_attribute("data-available", "true")
    assert errors == []
