"""Visit types in a real browser: the patient chooses a type, its times follow other
bookings live (buffers included), and the booking takes the type's length."""

from __future__ import annotations

import time

from playwright.sync_api import expect

from e2e.conftest import live_page, mark_document, report_live_time, same_document, wait_for_live
from e2e.test_live import LIVE_WAIT_MS, _in_thread, fresh_world, sign_in, slot
from tests.integration.world import at, day_after_tomorrow


def add_types(settings, doctor_id: int) -> int:
    """A follow-up (30 min) and a check-up (60 min with 30 after); the check-up's id."""
    from db.models import VisitType
    from db.session import create_engine, session_factory

    async def build():
        engine = create_engine(settings, application_name="e2e-setup")
        try:
            async with session_factory(engine)() as session:
                check_up = VisitType(
                    doctor_id=doctor_id, name="Check-up", minutes=60, buffer_after_minutes=30
                )
                session.add_all(
                    [VisitType(doctor_id=doctor_id, name="A follow-up", minutes=30), check_up]
                )
                await session.commit()
                return check_up.id
        finally:
            await engine.dispose()

    return _in_thread(build)


def booked_visit(settings, doctor_id: int):
    from sqlalchemy import text

    from db.session import create_engine

    async def query():
        engine = create_engine(settings, application_name="e2e-check")
        try:
            async with engine.connect() as conn:
                return (
                    await conn.execute(
                        text(
                            "SELECT visit_type_id, starts_at, ends_at FROM appointments "
                            "WHERE doctor_id = :d AND visit_type_id IS NOT NULL"
                        ),
                        {"d": doctor_id},
                    )
                ).one()
        finally:
            await engine.dispose()

    return _in_thread(query)


def test_a_patient_books_a_type_whose_times_follow_bookings_live(
    browser, live_server, settings, record_property
):
    world = fresh_world(settings)
    check_up = add_types(settings, world.doctor_id)
    day = day_after_tomorrow()
    alice = live_page(browser)
    bob = browser.new_context().new_page()
    path = f"/doctors/{world.doctor_id}/slots?date={day.isoformat()}"
    sign_in(alice, live_server, "p0@t.test", path)
    # She chooses the check-up: the page shows its times, starting on the 30-minute grid.
    alice.get_by_label("Kind of visit").select_option(label="Check-up (60 min)")
    alice.get_by_role("button", name="Show times").click()
    alice.wait_for_url(f"**visit_type_id={check_up}*")
    expect(slot(alice, at(day, 10))).to_have_attribute("data-available", "true")
    expect(slot(alice, at(day, 9, 30))).to_have_attribute("data-available", "true")
    wait_for_live(alice)
    mark_document(alice)

    # Bob books a plain 11:00 slot (the API's default): a check-up at 10:00 would end at
    # 11:00 with 30 minutes after it, so 10:00 goes; 09:30 (ends 10:30, buffer to 11:00)
    # stays.
    sign_in(
        bob,
        live_server,
        "p1@t.test",
        f"/doctors/{world.doctor_id}/slots?date={day.isoformat()}&visit_type_id={check_up}",
    )
    response = bob.request.post(
        f"{live_server.url}/api/appointments",
        data={"doctor_id": world.doctor_id, "start": at(day, 11).isoformat()},
        headers=world.headers("patient1"),
    )
    assert response.status == 201, response.text()
    booked = time.monotonic()
    expect(slot(alice, at(day, 10))).to_have_attribute(
        "data-available", "false", timeout=LIVE_WAIT_MS
    )
    report_live_time(record_property, "typed slot taken by a plain booking", booked)
    expect(slot(alice, at(day, 9, 30))).to_have_attribute("data-available", "true")
    assert same_document(alice)

    slot(alice, at(day, 9, 30)).click()
    expect(alice.get_by_role("button", name="Confirm booking")).to_be_visible()
    alice.get_by_role("button", name="Confirm booking").click()
    expect(alice.get_by_role("heading", name="Booked")).to_be_visible()
    visit_type_id, starts_at, ends_at = booked_visit(settings, world.doctor_id)
    assert visit_type_id == check_up
    assert (starts_at, ends_at) == (at(day, 9, 30), at(day, 10, 30))
