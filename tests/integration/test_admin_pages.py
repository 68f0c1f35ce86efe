"""Admin pages: clinics, doctors, the weekly template editor, leave with a preview and
clinic closures, through a signed-in browser session with CSRF tokens."""

import datetime as dt
import re

import pytest
from sqlalchemy import func, select

from app.routes.admin_pages import ExceptionForm, exception_window
from db.models import Appointment, Clinic, Doctor, ScheduleException, ScheduleTemplate
from tests.integration.auth_helpers import bearer, browser_login, csrf_from, make_user
from tests.integration.world import BERLIN, at, day_after_tomorrow, make_world

HTMX = {"HX-Request": "true"}


@pytest.fixture
async def admin(client, session):
    """A signed-in admin browser; returns a function giving a page's CSRF token."""
    await make_user(session, "admin", "root@example.test")
    assert (await browser_login(client, "root@example.test")).status_code == 200

    async def token(path: str = "/admin/clinics") -> str:
        return csrf_from((await client.get(path)).text)

    return token


@pytest.fixture
async def world(session, settings):
    return await make_world(session, settings.secret_key, patients=4)


def values(html: str, name: str) -> list[str]:
    """The values of the inputs called `name`, in page order."""
    tags = re.findall(rf'<input[^>]*name="{name}"[^>]*>', html)
    return [re.search(r'value="([^"]*)"', t).group(1) for t in tags]  # type: ignore[union-attr]


def selected_weekdays(html: str) -> list[str]:
    selects = re.findall(r'<select[^>]*name="weekday".*?</select>', html, re.S)
    return [re.search(r'<option value="(\d)" selected>', s).group(1) for s in selects]  # type: ignore[union-attr]


async def test_admin_creates_a_clinic_and_a_doctor_through_the_pages(client, session, admin):
    page = await client.get("/admin/clinics")
    assert page.status_code == 200 and page.headers["vary"] == "HX-Request"
    assert '<option value="Europe/Berlin">' in page.text and 'href="/admin/clinics"' in page.text
    form = {"name": "Mitte", "timezone": "Mars/Olympus", "address": "Invalidenstr. 1"}
    wrong = await client.post("/admin/clinics", data={**form, "csrf_token": await admin()})
    assert wrong.status_code == 200 and "not an IANA time zone" in wrong.text
    assert 'value="Mitte"' in wrong.text and "Invalidenstr. 1</textarea>" in wrong.text
    assert await session.scalar(select(func.count()).select_from(Clinic)) == 0

    form["timezone"] = "Europe/Berlin"
    done = await client.post("/admin/clinics", data={**form, "csrf_token": await admin()})
    assert done.status_code == 200 and "Added Mitte" in done.text
    clinic = await session.scalar(select(Clinic))
    assert (clinic.name, clinic.timezone, clinic.address) == (
        "Mitte",
        "Europe/Berlin",
        form["address"],
    )

    path = f"/admin/doctors?clinic_id={clinic.id}"
    doctor = {"clinic_id": str(clinic.id), "name": "Dr. Rossi", "specialty": "Cardiology"}
    doctor |= {"email": "rossi@example.test", "default_slot_minutes": "500"}
    wrong = await client.post("/admin/doctors", data={**doctor, "csrf_token": await admin(path)})
    assert wrong.status_code == 200 and "between 5 and 240" in wrong.text
    assert 'value="Dr. Rossi"' in wrong.text and 'value="500"' in wrong.text
    doctor["default_slot_minutes"] = "20"
    done = await client.post("/admin/doctors", data={**doctor, "csrf_token": await admin(path)})
    assert done.status_code == 200 and "Added Dr. Rossi" in done.text
    row = await session.scalar(select(Doctor))
    assert (row.clinic_id, row.full_name, row.specialty, row.email, row.default_slot_minutes) == (
        clinic.id,
        "Dr. Rossi",
        "Cardiology",
        "rossi@example.test",
        20,
    )
    listing = await client.get(path)
    assert f'href="/admin/doctors/{row.id}/schedule"' in listing.text


async def test_htmx_gets_the_named_block_only(client, session, admin, world):
    fragment = await client.get(f"/admin/doctors?clinic_id={world.clinic_id}", headers=HTMX)
    assert fragment.status_code == 200 and fragment.headers["vary"] == "HX-Request"
    assert fragment.text.lstrip().startswith('<div id="clinic"') and "<html" not in fragment.text
    assert "Dr. Berlin" in fragment.text and "Dr. NY" not in fragment.text
    schedule = await client.get(f"/admin/doctors/{world.doctor_id}/schedule")
    assert "<html" in schedule.text and 'id="template-editor"' in schedule.text
    body = {"action": "add", "csrf_token": csrf_from(schedule.text)}
    added = await client.post(f"/admin/doctors/{world.doctor_id}/schedule", data=body, headers=HTMX)
    assert added.text.lstrip().startswith('<section id="template-editor"')
    assert "<html" not in added.text and 'id="exceptions"' not in added.text


async def test_the_template_editor_saves_and_the_api_returns_the_same_ranges(
    client, session, settings, admin, world
):
    path = f"/admin/doctors/{world.doctor_id}/schedule"
    page = await client.get(path)
    assert selected_weekdays(page.text) == [str(d) for d in range(7)]  # make_world's week
    assert values(page.text, "start") == ["08:00"] * 7
    token = csrf_from(page.text)
    form = {
        "weekday": ["0", "0", "2", "4", "5"],
        "start": ["13:00", "09:00", "08:00", "", "10:00"],
        "end": ["17:00", "12:00", "12:30", "", "11:00"],
        "slot_minutes": ["20", "30", "15", "30", "30"],
        "valid_from": ["", "", "2026-01-01", "", ""],
        "valid_to": ["", "", "2026-12-31", "", ""],
        "remove": ["4"],  # the Saturday row is ticked for removal; Friday's is blank
        "action": "save",
        "csrf_token": token,
    }
    saved = await client.post(path, data=form)
    assert saved.status_code == 200 and "Weekly hours saved" in saved.text
    api = await client.get(
        f"/api/doctors/{world.doctor_id}/schedule", headers=world.headers("admin")
    )
    never = {"valid_from": None, "valid_to": None}
    year = {"valid_from": "2026-01-01", "valid_to": "2026-12-31"}
    assert api.json() == {
        "doctor_id": world.doctor_id,
        "timezone": "Europe/Berlin",
        "ranges": [
            {"weekday": 0, "start": "09:00", "end": "12:00", "slot_minutes": 30, **never},
            {"weekday": 0, "start": "13:00", "end": "17:00", "slot_minutes": 20, **never},
            {"weekday": 2, "start": "08:00", "end": "12:30", "slot_minutes": 15, **year},
        ],
    }
    # The page shows what is stored, in the API's order.
    assert selected_weekdays(saved.text) == ["0", "0", "2"]
    assert values(saved.text, "start") == ["09:00", "13:00", "08:00"]

    # "Add a range" adds an editable row and saves nothing.
    more = await client.post(path, data={**form, "action": "add"})
    assert "Not saved yet" in more.text and selected_weekdays(more.text) == [
        "0",
        "0",
        "2",
        "4",
        "5",
    ]
    assert values(more.text, "start") == ["13:00", "09:00", "08:00", "", ""]
    assert values(more.text, "slot_minutes")[-1] == "30"  # the doctor's default slot length
    assert "autofocus" in more.text
    count = select(func.count()).select_from(ScheduleTemplate)
    assert await session.scalar(count.where(ScheduleTemplate.doctor_id == world.doctor_id)) == 3


async def test_a_bad_template_shows_the_error_and_keeps_what_was_typed(
    client, session, admin, world
):
    path = f"/admin/doctors/{world.doctor_id}/schedule"
    token = csrf_from((await client.get(path)).text)
    form = {
        "weekday": ["1", "3", "3"],
        "start": ["08:00", "09:00", "11:45"],
        "end": ["12:00", "12:00", "14:00"],
        "slot_minutes": ["30", "15", "15"],
        "valid_from": ["", "", ""],
        "valid_to": ["", "", ""],
        "csrf_token": token,
    }
    overlap = await client.post(path, data=form)
    assert overlap.status_code == 200
    assert re.search(r'role="alert"[^>]*>row 2 and row 3 overlap<', overlap.text)
    assert values(overlap.text, "start") == ["08:00", "09:00", "11:45"]
    assert values(overlap.text, "slot_minutes") == ["30", "15", "15"]
    assert selected_weekdays(overlap.text) == ["1", "3", "3"]
    assert overlap.text.count('<tr class="invalid') == 2  # rows 2 and 3 are marked

    backwards = await client.post(path, data={**form, "end": ["07:00", "10:00", "13:00"]})
    assert "row 1: end must be after start" in backwards.text
    assert values(backwards.text, "end") == ["07:00", "10:00", "13:00"]
    not_time = await client.post(path, data={**form, "start": ["8 o'clock", "09:00", "12:00"]})
    assert "row 1: the start must be a time like 09:00" in not_time.text
    assert 'value="8 o&#39;clock"' in not_time.text

    # Nothing was saved: make_world's seven 08:00-20:00 ranges are still there.
    stored = await session.scalars(
        select(ScheduleTemplate.start_time).where(ScheduleTemplate.doctor_id == world.doctor_id)
    )
    assert list(stored) == [dt.time(8)] * 7


async def book(client, world, start, patient):
    body = {"doctor_id": world.doctor_id, "start": start.isoformat()}
    response = await client.post("/api/appointments", json=body, headers=world.headers(patient))
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.fixture
async def bookings(client, session, world):
    """The doctor's day after tomorrow: 09:00, 10:00 and 11:30 booked, 10:30 cancelled,
    13:00 booked; and a second Berlin doctor booked at 10:00."""
    day = day_after_tomorrow()
    ids = {
        "09:00": await book(client, world, at(day, 9), "patient0"),
        "10:00": await book(client, world, at(day, 10), "patient1"),
        "11:30": await book(client, world, at(day, 11, 30), "patient2"),
        "13:00": await book(client, world, at(day, 13), "patient3"),
        "10:30": await book(client, world, at(day, 10, 30), "patient3"),
    }
    cancel = await client.patch(
        f"/api/appointments/{ids['10:30']}",
        json={"status": "cancelled"},
        headers=world.headers("patient3"),
    )
    assert cancel.status_code == 200, cancel.text
    colleague = Doctor(clinic_id=world.clinic_id, full_name="Dr. Second", specialty="GP")
    session.add(colleague)
    await session.flush()
    session.add(
        Appointment(
            doctor_id=colleague.id,
            patient_id=world.patients[0],
            clinic_id=world.clinic_id,
            starts_at=at(day, 10),
            ends_at=at(day, 10, 30),
        )
    )
    await session.commit()
    return day, ids


def leave(day: dt.date, **changes: str) -> dict[str, str]:
    form = {
        "start_date": day.isoformat(),
        "start_time": "09:30",
        "end_date": "",
        "end_time": "12:00",
        "kind": "leave",
        "note": "conference",
    }
    return form | changes


def preview_rows(html: str) -> list[list[str]]:
    table = re.search(r'<table class="affected">.*?</table>', html, re.S)
    if table is None:
        return []
    rows = re.findall(r"<tr><td>(.*?)</td></tr>", table.group(0))
    return [r.split("</td><td>") for r in rows]


async def test_preview_lists_exactly_the_overlapping_bookings_and_saves_nothing(
    client, session, admin, world, bookings
):
    day, _ = bookings
    path = f"/admin/doctors/{world.doctor_id}/schedule"
    token = csrf_from((await client.get(path)).text)
    preview = await client.post(
        f"/admin/doctors/{world.doctor_id}/exceptions",
        data={**leave(day), "action": "preview", "cancel_affected": "on", "csrf_token": token},
        headers=HTMX,
    )
    assert preview.status_code == 200 and preview.headers["vary"] == "HX-Request"
    assert preview.text.lstrip().startswith('<section id="exceptions"')
    assert "Preview: 2 booked appointments in this time" in preview.text
    when = f"{day:%a %d %b %Y}"
    assert preview_rows(preview.text) == [
        [when, "10:00\u201310:30", "Patient 1", "booked"],
        [when, "11:30\u201312:00", "Patient 2", "booked"],
    ]
    assert "Nothing is saved yet" in preview.text
    assert 'value="09:30"' in preview.text and 'value="conference"' in preview.text  # kept
    assert await session.scalar(select(func.count()).select_from(ScheduleException)) == 0
    statuses = await session.scalars(select(Appointment.status).order_by(Appointment.starts_at))
    assert sorted(statuses) == ["booked"] * 5 + ["cancelled"]

    nothing = await client.post(
        f"/admin/doctors/{world.doctor_id}/exceptions",
        data={**leave(day, start_time="14:00", end_time="15:00"), "csrf_token": token},
    )
    assert "Preview: no booked appointments in this time" in nothing.text


async def test_saving_with_cancel_cancels_the_affected_appointments(
    client, session, admin, world, bookings
):
    day, ids = bookings
    path = f"/admin/doctors/{world.doctor_id}/schedule"
    token = csrf_from((await client.get(path)).text)
    saved = await client.post(
        f"/admin/doctors/{world.doctor_id}/exceptions",
        data={**leave(day), "action": "save", "cancel_affected": "on", "csrf_token": token},
    )
    assert saved.status_code == 200 and "Cancelled the 2 appointments it covered" in saved.text
    assert [r[2:] for r in preview_rows(saved.text)] == [
        ["Patient 1", "cancelled"],
        ["Patient 2", "cancelled"],
    ]
    exception = await session.scalar(select(ScheduleException))
    assert (exception.doctor_id, exception.kind, exception.note) == (
        world.doctor_id,
        "leave",
        "conference",
    )
    assert (exception.starts_at, exception.ends_at) == (at(day, 9, 30), at(day, 12))
    rows = dict((await session.execute(select(Appointment.id, Appointment.status))).all())
    assert rows[ids["10:00"]] == rows[ids["11:30"]] == "cancelled"
    assert rows[ids["09:00"]] == rows[ids["13:00"]] == "booked"
    page = await client.get(path)
    assert f"{day:%a %d %b %Y}, 09:30\u201312:00" in page.text and "conference" in page.text

    # Without the box ticked, leave is saved and the bookings it covers are only reported.
    kept = await client.post(
        f"/admin/doctors/{world.doctor_id}/exceptions",
        data={
            **leave(day, start_time="12:30", end_time="14:00"),
            "action": "save",
            "csrf_token": token,
        },
    )
    assert "1 appointment is still booked in this time" in kept.text
    rows = dict((await session.execute(select(Appointment.id, Appointment.status))).all())
    assert rows[ids["13:00"]] == "booked"


async def test_leave_mistakes_are_shown_with_what_was_typed(client, session, admin, world):
    path = f"/admin/doctors/{world.doctor_id}/schedule"
    token = csrf_from((await client.get(path)).text)
    day = day_after_tomorrow()
    backwards = await client.post(
        f"/admin/doctors/{world.doctor_id}/exceptions",
        data={**leave(day, end_time="08:00"), "action": "save", "csrf_token": token},
    )
    assert backwards.status_code == 200 and "ends_at must be after starts_at" in backwards.text
    assert 'value="08:00"' in backwards.text and 'value="conference"' in backwards.text
    missing = await client.post(
        f"/admin/doctors/{world.doctor_id}/exceptions",
        data={**leave(day, start_time=""), "csrf_token": token},
    )
    assert "the start time is missing" in missing.text
    assert await session.scalar(select(func.count()).select_from(ScheduleException)) == 0


async def test_a_clinic_closure_previews_and_cancels_only_that_clinic(
    client, session, admin, world, bookings
):
    day, _ = bookings
    path = f"/admin/doctors?clinic_id={world.clinic_id}"
    token = csrf_from((await client.get(path)).text)
    whole_day = {"start_date": day.isoformat(), "whole_day": "on", "kind": "holiday"}
    preview = await client.post(
        f"/admin/clinics/{world.clinic_id}/exceptions",
        data={**whole_day, "action": "preview", "csrf_token": token},
        headers=HTMX,
    )
    assert preview.text.lstrip().startswith('<section id="closures"')
    assert [r[1:3] for r in preview_rows(preview.text)] == [
        ["09:00\u201309:30", "Patient 0"],
        ["10:00\u201310:30", "Patient 1"],
        ["10:00\u201310:30", "Patient 0"],  # Dr. Second's
        ["11:30\u201312:00", "Patient 2"],
        ["13:00\u201313:30", "Patient 3"],
    ]
    assert await session.scalar(select(func.count()).select_from(ScheduleException)) == 0
    saved = await client.post(
        f"/admin/clinics/{world.clinic_id}/exceptions",
        data={**whole_day, "action": "save", "cancel_affected": "on", "csrf_token": token},
    )
    assert "Cancelled the 5 appointments it covered" in saved.text
    closure = await session.scalar(select(ScheduleException))
    assert closure.doctor_id is None and closure.clinic_id == world.clinic_id
    assert (closure.starts_at, closure.ends_at) == (at(day, 0), at(day + dt.timedelta(days=1), 0))
    # The doctor's page lists the clinic's closure too.
    schedule = await client.get(f"/admin/doctors/{world.doctor_id}/schedule")
    assert f"{day:%a %d %b %Y}, whole day" in schedule.text and "whole clinic" in schedule.text


def test_exception_windows_are_clinic_local_and_whole_days_follow_dst():
    spring = exception_window(
        ExceptionForm(start_date="2026-03-29", whole_day="on"), "Europe/Berlin"
    )
    assert spring[1] - spring[0] == dt.timedelta(hours=23)  # clocks go forward that night
    assert spring[0] == dt.datetime(2026, 3, 28, 23, tzinfo=dt.UTC)
    span = exception_window(
        ExceptionForm(
            start_date="2026-07-01", start_time="09:00", end_date="2026-07-03", end_time="17:30"
        ),
        "America/New_York",
    )
    assert span == (
        dt.datetime(2026, 7, 1, 13, tzinfo=dt.UTC),
        dt.datetime(2026, 7, 3, 21, 30, tzinfo=dt.UTC),
    )
    assert span[0].astimezone(BERLIN).hour == 15


PAGES = [
    ("GET", "/admin/clinics"),
    ("POST", "/admin/clinics"),
    ("GET", "/admin/doctors"),
    ("POST", "/admin/doctors"),
    ("POST", "/admin/clinics/{clinic}/exceptions"),
    ("GET", "/admin/doctors/{doctor}/schedule"),
    ("POST", "/admin/doctors/{doctor}/schedule"),
    ("POST", "/admin/doctors/{doctor}/exceptions"),
]


async def test_only_admins_may_use_the_pages(client, session, settings, world):
    day = day_after_tomorrow()
    form = {**leave(day), "action": "save", "cancel_affected": "on", "name": "X"}
    for method, template in PAGES:
        path = template.format(clinic=world.clinic_id, doctor=world.doctor_id)
        for role in ("patient0", "doctor", "desk"):
            response = await client.request(method, path, data=form, headers=world.headers(role))
            assert response.status_code == 403, (role, method, path)
        anonymous = await client.request(
            method, path, headers={"Accept": "text/html"}, follow_redirects=False
        )
        if method == "GET":
            assert anonymous.status_code == 302
            assert anonymous.headers["location"].startswith("/login?next=%2Fadmin%2F")
        else:
            assert anonymous.status_code in (401, 403)  # no session: refused, never run
        htmx = await client.request(method, path, headers=HTMX)
        assert htmx.status_code in (401, 403)
    assert await session.scalar(select(func.count()).select_from(ScheduleException)) == 0
    assert await session.scalar(select(func.count()).select_from(Clinic)) == 2

    # A signed-in patient's browser session is refused as well, with a valid CSRF token.
    await make_user(session, "patient", "ann@example.test")
    await browser_login(client, "ann@example.test")
    token = csrf_from((await client.get("/me")).text)
    response = await client.post(
        f"/admin/doctors/{world.doctor_id}/exceptions", data={**form, "csrf_token": token}
    )
    assert response.status_code == 403
    assert (await client.get("/admin/clinics")).status_code == 403
    admin = await make_user(session, "admin", "root@example.test")
    assert (await client.get("/admin/clinics", headers=bearer(settings, admin))).status_code == 200


async def test_a_missing_doctor_or_clinic_is_404(client, admin):
    assert (await client.get("/admin/doctors/987654/schedule")).status_code == 404
    assert (await client.get("/admin/doctors?clinic_id=987654")).status_code == 404
