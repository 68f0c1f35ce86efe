"""Planned leave can be changed and withdrawn (API and admin page): audited, the slot
cache forgets exactly the days touched before and after, and open pages are told."""

import datetime as dt
import re

import pytest
from sqlalchemy import select

from app.access import audit
from app.services import Services
from db.models import Appointment, AuditEvent, ScheduleException
from tests.integration.auth_helpers import browser_login, csrf_from
from tests.integration.test_availability_cache import served, truth
from tests.integration.world import BERLIN, PASSWORD, at, day_after_tomorrow, make_world

HTMX = {"HX-Request": "true"}


# Audit events of changing leave (adding it writes one of its own).
EDITS = AuditEvent.action.in_(
    (audit.SCHEDULE_EXCEPTION_CHANGED, audit.SCHEDULE_EXCEPTION_WITHDRAWN)
)


@pytest.fixture
async def world(session, settings):
    return await make_world(session, settings.secret_key, patients=2)


@pytest.fixture
def touched(client):
    """The (doctor, day) pairs every schedule change invalidates and announces."""
    seen: list[tuple[int, dt.date]] = []
    Services.of(client.app).effects.schedule_publishers.append(lambda pipe, days: seen.extend(days))
    return seen


def whole_days(first: dt.date, last: dt.date) -> dict[str, str]:
    return {
        "starts_at": at(first, 0).isoformat(),
        "ends_at": at(last + dt.timedelta(days=1), 0).isoformat(),
    }


async def add_leave(client, world, first: dt.date, last: dt.date | None = None) -> int:
    answer = await client.post(
        f"/api/doctors/{world.doctor_id}/exceptions",
        json={**whole_days(first, last or first), "note": "conference"},
        headers=world.headers("admin"),
    )
    assert answer.status_code == 201, answer.text
    return int(answer.json()["exception"]["id"])


def leave_path(world, exception_id: int) -> str:
    return f"/api/doctors/{world.doctor_id}/exceptions/{exception_id}"


async def test_moving_leave_reopens_the_old_days_and_closes_the_new_ones(
    client, session, world, engine, touched
):
    first = day_after_tomorrow()
    moved_to = first + dt.timedelta(days=3)
    leave = await add_leave(client, world, first)
    for day in (first, moved_to, first + dt.timedelta(days=1)):
        await served(client, world, day)  # every day cached before the change
    assert not any((await served(client, world, first)).values())
    touched.clear()

    answer = await client.patch(
        leave_path(world, leave),
        json={**whole_days(moved_to, moved_to), "kind": "holiday", "note": ""},
        headers=world.headers("admin"),
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["exception"]["kind"] == "holiday" and body["exception"]["note"] is None
    assert body["exception"]["starts_at"] == at(moved_to, 0).isoformat()
    assert body["affected"] == [] and body["cancelled"] is False

    # Exactly the day it left and the day it took, for this doctor only.
    assert sorted(touched) == [(world.doctor_id, first), (world.doctor_id, moved_to)]
    for day in (first, moved_to, first + dt.timedelta(days=1)):
        assert await served(client, world, day) == await truth(engine, world.doctor_id, day)
    assert all((await served(client, world, first)).values())
    assert not any((await served(client, world, moved_to)).values())

    (event,) = await session.scalars(
        select(AuditEvent).where(AuditEvent.action == audit.SCHEDULE_EXCEPTION_CHANGED)
    )
    assert (event.subject_type, event.subject_id) == ("schedule_exception", leave)
    assert event.actor_user_id == world.users["admin"].id
    assert event.details["kind"] == ["leave", "holiday"]
    assert event.details["note"] == ["conference", None]
    assert event.details["starts_at"] == [
        at(first, 0).astimezone(dt.UTC).isoformat(),
        at(moved_to, 0).astimezone(dt.UTC).isoformat(),
    ]


async def test_withdrawing_leave_reopens_its_slots(client, session, world, engine, touched):
    first = day_after_tomorrow()
    leave = await add_leave(client, world, first, first + dt.timedelta(days=1))
    assert not any((await served(client, world, first)).values())
    touched.clear()

    gone = await client.delete(leave_path(world, leave), headers=world.headers("admin"))
    assert gone.status_code == 204, gone.text
    second = first + dt.timedelta(days=1)
    assert sorted(touched) == [(world.doctor_id, first), (world.doctor_id, second)]
    assert all((await served(client, world, first)).values())
    assert await served(client, world, second) == await truth(engine, world.doctor_id, second)
    assert await session.get(ScheduleException, leave) is None
    (event,) = await session.scalars(
        select(AuditEvent).where(AuditEvent.action == audit.SCHEDULE_EXCEPTION_WITHDRAWN)
    )
    assert event.subject_id == leave
    assert event.details["kind"] == "leave" and event.details["note"] == "conference"
    assert event.details["starts_at"] == at(first, 0).astimezone(dt.UTC).isoformat()

    again = await client.delete(leave_path(world, leave), headers=world.headers("admin"))
    assert again.status_code == 404


async def test_leave_stretched_over_a_booking_reports_it_and_keeps_it(client, session, world):
    day = day_after_tomorrow()
    leave = await add_leave(client, world, day)
    later = day + dt.timedelta(days=1)
    booked = await client.post(
        "/api/appointments",
        json={"doctor_id": world.doctor_id, "start": at(later, 10).isoformat()},
        headers=world.headers("patient0"),
    )
    assert booked.status_code == 201, booked.text
    stretch = {"ends_at": at(later + dt.timedelta(days=1), 0).isoformat()}
    preview = await client.patch(
        leave_path(world, leave), json={**stretch, "preview": True}, headers=world.headers("admin")
    )
    assert preview.status_code == 200
    assert preview.json()["exception"] is None
    assert [a["id"] for a in preview.json()["affected"]] == [booked.json()["id"]]
    stored = await session.get(ScheduleException, leave)
    assert stored.ends_at == at(later, 0)  # the preview saved nothing
    assert await session.scalar(select(AuditEvent).where(EDITS)) is None

    saved = await client.patch(
        leave_path(world, leave), json=stretch, headers=world.headers("admin")
    )
    assert saved.status_code == 200
    assert [a["id"] for a in saved.json()["affected"]] == [booked.json()["id"]]
    assert saved.json()["exception"]["ends_at"] == stretch["ends_at"]
    appointment = await session.get(Appointment, booked.json()["id"], populate_existing=True)
    assert appointment.status == "booked"


async def test_wrong_leave_over_leave_and_bad_changes_are_clear_4xx(client, session, world):
    admin = world.headers("admin")
    day = day_after_tomorrow()
    leave = await add_leave(client, world, day)
    closure = await client.post(
        f"/api/clinics/{world.clinic_id}/exceptions",
        json={**whole_days(day, day), "kind": "closure"},
        headers=admin,
    )
    closure_id = closure.json()["exception"]["id"]
    now = dt.datetime.now(dt.UTC)
    past = ScheduleException(
        clinic_id=world.clinic_id,
        doctor_id=world.doctor_id,
        kind="leave",
        starts_at=now - dt.timedelta(days=3),
        ends_at=now - dt.timedelta(days=2),
    )
    session.add(past)
    await session.commit()
    other_doctor = f"/api/doctors/{world.other_doctor_id}/exceptions/{leave}"
    cases = [
        ("PATCH", leave_path(world, 999999), {"note": "x"}, 404),
        ("PATCH", other_doctor, {"note": "x"}, 404),  # another doctor's path
        ("DELETE", other_doctor, None, 404),
        ("PATCH", leave_path(world, closure_id), {"note": "x"}, 404),  # a clinic closure
        ("DELETE", leave_path(world, closure_id), None, 404),
        ("PATCH", leave_path(world, past.id), {"note": "x"}, 409),  # over: history
        ("DELETE", leave_path(world, past.id), None, 409),
        ("PATCH", leave_path(world, leave), {"ends_at": at(day, 0).isoformat()}, 422),
        ("PATCH", leave_path(world, leave), {"kind": "nap"}, 400),  # not in the schema's enum
        ("PATCH", leave_path(world, leave), {"starts_at": "2030-01-01T10:00:00"}, 422),
        ("PATCH", leave_path(world, leave), {"colour": "red"}, 400),
    ]
    for method, path, body, status in cases:
        answer = await client.request(method, path, json=body, headers=admin)
        assert answer.status_code == status, (method, path, body, answer.text)
        assert answer.json()["detail"]
    for who in ("desk", "doctor", "patient0"):
        answer = await client.delete(leave_path(world, leave), headers=world.headers(who))
        assert answer.status_code == 403
    stored = await session.get(ScheduleException, leave, populate_existing=True)
    assert (stored.kind, stored.note, stored.ends_at) == (
        "leave",
        "conference",
        at(day, 0) + dt.timedelta(days=1),
    )
    assert await session.scalar(select(AuditEvent).where(EDITS)) is None


async def test_the_admin_page_changes_and_withdraws_leave(client, session, world):
    assert (await browser_login(client, "admin@t.test", PASSWORD)).status_code == 200
    day = day_after_tomorrow()
    leave = ScheduleException(
        clinic_id=world.clinic_id,
        doctor_id=world.doctor_id,
        kind="leave",
        starts_at=at(day, 9),
        ends_at=at(day, 12),
        note="dentist",
    )
    session.add(leave)
    await session.commit()
    schedule = f"/admin/doctors/{world.doctor_id}/schedule"
    page = await client.get(schedule)
    base = f"/admin/doctors/{world.doctor_id}/exceptions/{leave.id}"
    assert f'href="{base}"' in page.text and f'action="{base}/withdraw"' in page.text

    form = await client.get(base, headers=HTMX)
    assert form.status_code == 200 and form.text.lstrip().startswith('<section id="exceptions"')
    assert "Change this leave" in form.text and f'action="{base}"' in form.text
    for name, value in [
        ("start_date", day.isoformat()),
        ("start_time", "09:00"),
        ("end_date", day.isoformat()),
        ("end_time", "12:00"),
        ("note", "dentist"),
    ]:
        assert re.search(rf'name="{name}"[^>]*value="{value}"', form.text), name

    token = csrf_from(form.text)
    changed = {
        "start_date": day.isoformat(),
        "start_time": "",
        "end_date": (day + dt.timedelta(days=1)).isoformat(),
        "end_time": "",
        "whole_day": "on",
        "kind": "leave",
        "note": "dentist, then rest",
        "action": "save",
        "csrf_token": token,
    }
    saved = await client.post(base, data=changed, headers=HTMX)
    assert saved.status_code == 200 and "Saved." in saved.text
    assert "Change this leave" not in saved.text  # back to adding leave
    stored = await session.get(ScheduleException, leave.id, populate_existing=True)
    assert (stored.starts_at, stored.ends_at, stored.note) == (
        dt.datetime.combine(day, dt.time(0), BERLIN),
        dt.datetime.combine(day + dt.timedelta(days=2), dt.time(0), BERLIN),
        "dentist, then rest",
    )
    wrong = await client.post(
        base, data={**changed, "end_date": (day - dt.timedelta(days=3)).isoformat()}, headers=HTMX
    )
    assert wrong.status_code == 200 and 'role="alert"' in wrong.text
    assert "Change this leave" in wrong.text  # still editing, with what was typed

    withdrawn = await client.post(f"{base}/withdraw", data={"csrf_token": token}, headers=HTMX)
    assert withdrawn.status_code == 200 and "Leave withdrawn" in withdrawn.text
    assert "Nothing planned." in withdrawn.text
    assert await session.get(ScheduleException, leave.id, populate_existing=True) is None
    actions = list(await session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))
    assert actions[-2:] == [audit.SCHEDULE_EXCEPTION_CHANGED, audit.SCHEDULE_EXCEPTION_WITHDRAWN]
    missing = await client.get(base, headers=HTMX)
    assert missing.status_code == 404
