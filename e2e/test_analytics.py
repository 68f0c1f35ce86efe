"""The analytics dashboard and an export in a real browser, under the CSP."""

import asyncio
import datetime as dt
import random
import uuid
from concurrent.futures import ThreadPoolExecutor
from zoneinfo import ZoneInfo

from e2e.conftest import mark_document, same_document, screenshot

PASSWORD = "an analytics e2e password"


def in_thread(coro):
    """Playwright's sync API keeps an event loop in this thread: run ours in another."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _world(email: str) -> tuple[int, dt.date, dt.date]:
    """A clinic with a doctor, ten days of appointments and their rollups; an admin."""
    from app.access.passwords import hash_password
    from app.analytics import rollups
    from app.settings import get_settings
    from db.models import Appointment, Clinic, Doctor, Patient, ScheduleTemplate, User
    from db.session import create_engine, session_factory

    engine = create_engine(get_settings(), application_name="medbook-e2e")
    tz = ZoneInfo("Europe/Berlin")
    last = dt.datetime.now(tz).date() - dt.timedelta(days=1)
    days = [last - dt.timedelta(days=i) for i in range(10)]
    rng = random.Random(4)
    try:
        async with session_factory(engine)() as session:
            clinic = Clinic(name=f"E2E Clinic {uuid.uuid4().hex[:4]}", timezone="Europe/Berlin")
            session.add(clinic)
            await session.flush()
            doctor = Doctor(clinic_id=clinic.id, full_name="Dr. Chart", specialty="GP")
            patient = Patient(full_name="Pat Chart")
            session.add_all([doctor, patient])
            await session.flush()
            for weekday in range(7):
                session.add(
                    ScheduleTemplate(
                        doctor_id=doctor.id, weekday=weekday, start_time=dt.time(8),
                        end_time=dt.time(16), slot_minutes=30,
                    )
                )  # fmt: skip
            for day in days:
                for slot in rng.sample(range(16), 6):
                    start = dt.datetime.combine(day, dt.time(8), tzinfo=tz) + dt.timedelta(
                        minutes=30 * slot
                    )
                    session.add(
                        Appointment(
                            doctor_id=doctor.id, patient_id=patient.id, clinic_id=clinic.id,
                            starts_at=start, ends_at=start + dt.timedelta(minutes=30),
                            status=rng.choice(["completed", "completed", "no_show", "cancelled"]),
                            created_at=start - dt.timedelta(days=rng.randint(1, 20)),
                        )
                    )  # fmt: skip
            session.add(User(email=email, password_hash=hash_password(PASSWORD), role="admin"))
            await session.commit()
            clinic_id = clinic.id
        async with engine.begin() as conn:
            # The test's set-up, not its subject: not bound by a request's statement
            # timeout (a loaded CI machine took over its 5 s here).
            await conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
            await rollups.refresh_days(conn, days)
    finally:
        await engine.dispose()
    return clinic_id, days[-1], last


def test_dashboard_charts_filters_and_an_export(page, live_server):
    errors, csp = [], []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: csp.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    email = f"analytics-{uuid.uuid4().hex[:8]}@example.test"
    clinic_id, first, last = in_thread(_world(email))

    page.goto(live_server.url + "/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/admin/clinics")  # an admin starts at the clinics

    page.goto(f"{live_server.url}/analytics?from={first}&to={last}&clinic_id={clinic_id}")
    charts = page.get_by_role("img")
    assert charts.count() == 5
    assert page.locator("svg.heatmap rect.heat").count() > 0
    assert "Dr. Chart" in page.locator("#report").inner_text()
    no_show_kpi = page.locator(".kpis dd").first.inner_text()
    assert no_show_kpi.endswith("%")

    # Regroup: htmx swaps the report only and keeps the URL shareable.
    page.wait_for_function("() => window.htmx !== undefined")
    mark_document(page)
    page.get_by_label("No-shows by", exact=True).select_option("hour")
    page.get_by_role("button", name="Show").click()
    page.wait_for_selector("#h-noshow:has-text('No-shows by hour')")
    assert "group_by=hour" in page.url
    assert same_document(page)  # htmx swapped the report; the page was not reloaded
    assert page.get_by_role("img").count() == 4  # by hour is now the main no-show chart
    screenshot(page, "analytics-dashboard")

    page.goto(live_server.url + "/analytics/exports")
    page.get_by_label("From").fill(str(first))
    page.get_by_label("To").fill(str(last))
    page.get_by_label("Clinic", exact=True).select_option(str(clinic_id))
    page.get_by_role("button", name="Export").click()
    progress = page.locator("#new-export .export")
    progress.wait_for()
    assert "Waiting for a worker" in progress.inner_text()
    # The live server's worker runs the job; the fragment polls itself every second.
    link = page.get_by_role("link", name="Download")
    link.wait_for(timeout=30_000)  # a deadline, not a speed check (a loaded machine)
    with page.expect_download() as download:
        link.click()
    content = download.value.path().read_text()
    assert content.splitlines()[0].startswith("id,clinic_id,doctor_id,patient_id,starts_at")
    assert len(content.splitlines()) == 1 + 60
    assert errors == [] and csp == []
