"""An admin in a real browser: weekly hours for a doctor, then leave that hits a booking,
previewed before it is saved."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import uuid
from zoneinfo import ZoneInfo

import httpx
from playwright.sync_api import expect

from e2e.conftest import screenshot

PASSWORD = "an e2e admin password"
BERLIN = ZoneInfo("Europe/Berlin")


def _in_thread(coro_factory):
    """Run async setup code beside Playwright's own event loop."""
    box = {}

    def target():
        box["value"] = asyncio.run(coro_factory())

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    return box["value"]


def make_people(settings, tag: str) -> dict[str, int | str]:
    """An admin and a patient login, a Berlin clinic and a doctor with no hours yet."""

    async def create():
        from app.access.accounts import create_user
        from db.models import Clinic, Doctor
        from db.session import create_engine, session_factory

        engine = create_engine(settings, application_name="medbook-e2e")
        try:
            async with session_factory(engine)() as session:
                clinic = Clinic(name=f"Clinic {tag}", timezone="Europe/Berlin")
                session.add(clinic)
                await session.flush()
                doctor = Doctor(clinic_id=clinic.id, full_name=f"Dr. {tag}", specialty="GP")
                session.add(doctor)
                await session.commit()
                admin = f"admin-{tag}@example.test"
                patient = f"patient-{tag}@example.test"
                await create_user(session, role="admin", email=admin, password=PASSWORD)
                await create_user(
                    session,
                    role="patient",
                    email=patient,
                    password=PASSWORD,
                    full_name=f"Paula {tag}",
                )
                return {
                    "clinic": clinic.name,
                    "doctor": doctor.id,
                    "admin": admin,
                    "patient": patient,
                }
        finally:
            await engine.dispose()

    return _in_thread(create)


def book_by_api(base: str, email: str, doctor_id: int, start: dt.datetime) -> None:
    with httpx.Client(base_url=base) as api:
        token = api.post("/api/auth/token", json={"email": email, "password": PASSWORD})
        assert token.status_code == 200, token.text
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        body = {"doctor_id": doctor_id, "start": start.isoformat()}
        booked = api.post("/api/appointments", json=body, headers=headers)
        assert booked.status_code == 201, booked.text


def test_admin_sets_hours_and_previews_leave_before_saving(page, live_server, settings):
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def console(message):
        if message.type == "error" and not message.location["url"].endswith("/favicon.ico"):
            errors.append(message.text)

    page.on("console", console)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    tag = uuid.uuid4().hex[:6]
    world = make_people(settings, tag)
    day = dt.datetime.now(BERLIN).date() + dt.timedelta(days=2)

    page.goto(live_server.url + "/login")
    page.get_by_label("Email").fill(str(world["admin"]))
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/admin/clinics")  # an admin starts at the clinics
    page.get_by_role("link", name="Clinics", exact=True).click()
    assert screenshot(page, "admin-clinics").stat().st_size > 0
    page.get_by_role("link", name=f"Doctors and closures of {world['clinic']}").click()
    assert screenshot(page, "admin-doctors").stat().st_size > 0
    page.get_by_role("link", name=f"Weekly hours and leave of Dr. {tag}").click()
    page.wait_for_url(f"**/admin/doctors/{world['doctor']}/schedule")
    page.wait_for_function("() => window.htmx !== undefined")
    expect(page.get_by_text("No weekly hours yet")).to_be_visible()

    # Add a range on the booking day's weekday, then save the template.
    page.get_by_role("button", name="Add a range").click()
    weekday = page.get_by_label("Weekday row 1", exact=True)
    expect(weekday).to_be_focused()  # keyboard users land in the new row
    weekday.select_option(str(day.weekday()))
    page.get_by_label("From row 1", exact=True).fill("09:00")
    page.get_by_label("To row 1", exact=True).fill("12:00")
    page.get_by_label("Slot minutes row 1", exact=True).fill("30")
    page.get_by_role("button", name="Save weekly hours").click()
    expect(page.get_by_text("Weekly hours saved")).to_be_visible()
    assert page.get_by_label("From row 1", exact=True).input_value() == "09:00"

    # A patient books 10:00 on that day through the JSON API, on the new hours.
    start = dt.datetime.combine(day, dt.time(10), tzinfo=BERLIN)
    book_by_api(live_server.url, str(world["patient"]), int(world["doctor"]), start)

    # Leave from 08:00 to 13:00 that day: the preview lists the booking, nothing is saved.
    page.get_by_label("Start date", exact=True).fill(day.isoformat())
    page.get_by_label("Start time", exact=True).fill("08:00")
    page.get_by_label("End time", exact=True).fill("13:00")
    page.get_by_label("Note").fill("training")
    page.get_by_role("button", name="Preview").click()
    expect(page.get_by_text("Preview: 1 booked appointment in this time")).to_be_visible()
    row = page.locator("table.affected tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text(f"Paula {tag}")
    expect(row).to_contain_text("10:00\u201310:30")
    expect(page.get_by_text("Nothing planned.")).to_be_visible()
    assert screenshot(page, "admin-schedule-preview").stat().st_size > 0
    # Playwright hides the caret for screenshots and leaves style="" on every input;
    # htmx's settle would copy those onto the swapped-in inputs, which the CSP refuses.
    page.evaluate(
        "document.querySelectorAll('[style=\"\"]').forEach(e => e.removeAttribute('style'))"
    )

    page.get_by_label("When saving, cancel the booked appointments").check()
    page.get_by_role("button", name="Save leave").click()
    expect(page.get_by_text("Cancelled the 1 appointment it covered.")).to_be_visible()
    expect(page.locator("ul.upcoming li")).to_contain_text(f"{day:%a %d %b %Y}, 08:00\u201313:00")
    expect(row).to_contain_text("cancelled")

    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    expect(page.get_by_label("From row 1", exact=True)).to_be_visible()
    assert screenshot(page, "admin-schedule-phone").stat().st_size > 0
    assert errors == [], "\n".join(errors)
