"""Input that once answered 500 (issue #22, "Never a 500"): each gets a clear 4xx, or for
an htmx form its error message, and changes nothing."""

from __future__ import annotations

import json
from zoneinfo import available_timezones

import pytest
import websockets
from sqlalchemy import func, select

from app.routes.inputs import DEPTH_DETAIL, NUL_DETAIL
from app.web.outages import REFUSED_VALUE_DETAIL
from db.models import Appointment, Clinic, Doctor
from tests.integration.auth_helpers import csrf_from
from tests.integration.world import at, day_after_tomorrow, make_world

HUGE = 99999999999999999999  # beyond PostgreSQL's bigint (2^63 - 1)
FAR_DAYS = ("0001-01-01", "9999-12-31")


@pytest.fixture
async def world(session, settings, redis):
    return await make_world(session, settings.secret_key, patients=2)


async def appointments(session) -> int:
    return await session.scalar(select(func.count()).select_from(Appointment))


# --- integers beyond int64, in a path, a query or a body ---------------------------------

BIG_INTS = [
    # (who, method, path, JSON body)
    ("admin", "GET", f"/api/appointments/{HUGE}", None),
    ("admin", "PATCH", f"/api/appointments/{HUGE}", {"status": "cancelled"}),
    ("admin", "GET", f"/api/appointments?doctor_id={HUGE}", None),
    ("admin", "GET", f"/api/appointments?patient_id={HUGE}", None),
    ("admin", "GET", f"/api/appointments?clinic_id={HUGE}", None),
    ("admin", "GET", f"/api/appointments/available-slots?doctor_id={HUGE}&date=2030-01-01", None),
    ("admin", "POST", "/api/appointments", {"doctor_id": HUGE, "start": "2030-01-01T09:00Z"}),
    (
        "admin",
        "POST",
        "/api/appointments/bulk-update",
        {"appointment_ids": [HUGE], "status": "cancelled"},
    ),
    ("admin", "GET", f"/api/doctors?clinic_id={HUGE}", None),
    ("admin", "GET", f"/api/doctors/{HUGE}/schedule", None),
    ("admin", "PUT", f"/api/doctors/{HUGE}/schedule", {"ranges": []}),
    ("admin", "POST", "/api/doctors", {"clinic_id": HUGE, "name": "N", "specialty": "GP"}),
    (
        "admin",
        "POST",
        f"/api/clinics/{HUGE}/exceptions",
        {"starts_at": "2030-01-01T00:00Z", "ends_at": "2030-01-02T00:00Z"},
    ),
    (
        "admin",
        "POST",
        f"/api/doctors/{HUGE}/exceptions",
        {"starts_at": "2030-01-01T00:00Z", "ends_at": "2030-01-02T00:00Z"},
    ),
    ("admin", "PATCH", f"/api/doctors/1/exceptions/{HUGE}", {"note": "x"}),
    ("admin", "DELETE", f"/api/doctors/{HUGE}/exceptions/1", None),
    ("admin", "GET", f"/admin/doctors/1/exceptions/{HUGE}", None),
    ("admin", "GET", f"/api/patients/{HUGE}/records", None),
    ("admin", "GET", f"/api/patients/1/records/{HUGE}", None),
    ("admin", "PATCH", f"/api/users/{HUGE}", {}),
    (
        "admin",
        "POST",
        "/api/users",
        {"role": "doctor", "email": "x@t.test", "password": "a long password", "doctor_id": HUGE},
    ),
    ("admin", "POST", f"/api/notifications/{HUGE}/retry", None),
    ("admin", "GET", f"/api/notifications/undelivered?before={HUGE}", None),
    ("admin", "GET", f"/api/analytics/no-shows?clinic_id={HUGE}", None),
    (
        "admin",
        "POST",
        "/api/analytics/exports",
        {"from": "2030-01-01", "to": "2030-01-02", "clinic_id": HUGE},
    ),
    ("desk", "GET", f"/desk?clinic_id={HUGE}", None),
    ("patient0", "GET", f"/doctors/{HUGE}/slots", None),
    ("patient0", "GET", f"/doctors/1/slots?reschedule={HUGE}", None),
    ("patient0", "POST", f"/me/appointments/{HUGE}/cancel", None),
    ("doctor", "POST", f"/doctor/appointments/{HUGE}/status", None),
]


@pytest.mark.parametrize(("who", "method", "path", "body"), BIG_INTS)
async def test_an_integer_beyond_int64_is_a_400(client, world, who, method, path, body):
    answer = await client.request(method, path, json=body, headers=world.headers(who))
    assert answer.status_code == 400, answer.text
    assert "9223372036854775807" in answer.text  # says the bound it broke


async def test_a_value_the_database_refuses_is_a_400_not_a_500(client, world):
    """The last line: a value no route bounds (this page reads its cursor as text)."""
    answer = await client.get(f"/admin/notifications?before={HUGE}", headers=world.headers("admin"))
    assert answer.status_code == 400 and answer.json()["detail"] == REFUSED_VALUE_DETAIL


# --- dates at the ends of the calendar -------------------------------------------------


def far_day_requests(world, day: str):
    doctor = world.doctor_id
    start = f"{day}T09:00:00+00:00"
    return [
        ("patient0", "GET", f"/api/appointments/available-slots?doctor_id={doctor}&date={day}"),
        ("patient0", "GET", f"/api/appointments?doctor_id={doctor}&date={day}"),
        ("patient0", "POST", "/api/appointments", {"doctor_id": doctor, "start": start}),
        ("admin", "GET", f"/api/analytics/no-shows?from={day}"),
        ("admin", "GET", f"/api/analytics/utilisation?to={day}"),
        ("admin", "POST", "/api/analytics/exports", {"from": day, "to": day}),
        ("desk", "GET", f"/desk?date={day}"),
        ("doctor", "GET", f"/doctor/day?date={day}"),
        ("patient0", "GET", f"/doctors/{doctor}/slots?date={day}"),
        (
            "admin",
            "POST",
            f"/api/doctors/{doctor}/exceptions",
            {"starts_at": start, "ends_at": start},
        ),
        ("admin", "PATCH", f"/api/doctors/{doctor}/exceptions/1", {"starts_at": start}),
    ]


@pytest.mark.parametrize("day", FAR_DAYS)
@pytest.mark.parametrize("whole_day", ["on", ""])
async def test_leave_on_a_far_day_from_the_admin_page_says_the_range(client, world, day, whole_day):
    form = {"start_date": day, "end_date": day, "start_time": "09:00", "end_time": "10:00"}
    answer = await client.post(
        f"/admin/doctors/{world.doctor_id}/exceptions",
        data={**form, "whole_day": whole_day, "kind": "leave", "action": "preview"},
        headers=world.headers("admin") | {"HX-Request": "true"},
    )
    assert answer.status_code == 200, answer.text
    assert "between 1900-01-01 and 2999-12-31" in answer.text


@pytest.mark.parametrize("day", FAR_DAYS)
async def test_a_day_outside_the_calendar_is_a_422_naming_the_range(client, world, session, day):
    for who, method, path, *body in far_day_requests(world, day):
        answer = await client.request(
            method, path, json=body[0] if body else None, headers=world.headers(who)
        )
        assert answer.status_code == 422, (path, answer.text)
        assert "between 1900-01-01 and 2999-12-31" in answer.json()["detail"], path
    assert await appointments(session) == 0


@pytest.mark.parametrize("day", FAR_DAYS)
async def test_rescheduling_to_a_far_day_is_a_422(client, world, session, day):
    booked = await client.post(
        "/api/appointments",
        json={"doctor_id": world.doctor_id, "start": at(day_after_tomorrow(), 9).isoformat()},
        headers=world.headers("patient0"),
    )
    assert booked.status_code == 201, booked.text
    moved = await client.patch(
        f"/api/appointments/{booked.json()['id']}",
        json={"start": f"{day}T09:00:00+00:00"},
        headers=world.headers("patient0"),
    )
    assert moved.status_code == 422 and "between 1900-01-01" in moved.json()["detail"]
    page = await client.post(
        f"/me/appointments/{booked.json()['id']}/reschedule",
        data={"start": f"{day}T09:00:00+00:00"},
        headers=world.headers("patient0") | {"HX-Request": "true"},
    )
    assert page.status_code == 200 and "between 1900-01-01" in page.text


@pytest.mark.parametrize("day", FAR_DAYS)
async def test_a_walk_in_on_a_far_day_says_what_to_enter(client, world, session, day):
    answer = await walk_in(client, world, date=day)
    assert answer.status_code == 200 and "a time like 10:30" in answer.text
    assert await appointments(session) == 0


async def walk_in(client, world, **fields):
    form = {
        "doctor_id": str(world.doctor_id),
        "patient_id": str(world.patients[0]),
        "q": "Patient 0",  # the search that shows that patient selected
        "date": day_after_tomorrow().isoformat(),
        "time": "10:30",
        **fields,
    }
    return await client.post(
        "/desk/walk-in", data=form, headers=world.headers("desk") | {"HX-Request": "true"}
    )


async def test_a_walk_in_at_25_00_says_what_to_enter(client, world, session):
    for time in ("25:00", "10:60", "9:5", "10:30:00"):
        answer = await walk_in(client, world, time=time)
        assert answer.status_code == 200 and "a time like 10:30" in answer.text, time
    assert await appointments(session) == 0
    assert "Booked at 10:30" in (await walk_in(client, world)).text  # the form itself works


# --- NUL characters --------------------------------------------------------------------


async def test_a_nul_in_any_json_string_is_a_400(client, world, session):
    requests = [
        (None, "POST", "/api/auth/token", {"email": "a\x00@t.test", "password": "x"}),
        (
            None,
            "POST",
            "/api/auth/register",
            {"email": "n@t.test", "password": "a long password 1", "full_name": "Ann\x00"},
        ),
        ("admin", "POST", "/api/clinics", {"name": "C\x00", "timezone": "Europe/Berlin"}),
        (
            "admin",
            "POST",
            "/api/doctors",
            {"clinic_id": world.clinic_id, "name": "D\x00", "specialty": "GP"},
        ),
        (
            "patient0",
            "POST",
            "/api/appointments",
            {
                "doctor_id": world.doctor_id,
                "start": at(day_after_tomorrow(), 9).isoformat(),
                "reason": "pain\x00",
            },
        ),
    ]
    for who, method, path, body in requests:
        headers = world.headers(who) if who else {}
        answer = await client.request(method, path, json=body, headers=headers)
        assert answer.status_code == 400, (path, answer.text)
        assert answer.json()["detail"] == NUL_DETAIL, path
    assert await appointments(session) == 0
    assert await session.scalar(select(func.count()).select_from(Clinic)) == 2
    assert await session.scalar(select(func.count()).select_from(Doctor)) == 2


async def test_an_escaped_backslash_before_u0000_is_ordinary_text(client, world):
    body = {"name": "C:\\u0000 branch", "timezone": "Europe/Berlin"}
    made = await client.post("/api/clinics", json=body, headers=world.headers("admin"))
    assert made.status_code == 201 and made.json()["name"] == "C:\\u0000 branch"


async def test_a_nul_in_a_search_filter_or_path_is_a_400(client, world):
    for who, path in (
        ("patient0", "/api/doctors?name=a%00b"),
        ("patient0", "/api/doctors?specialty=%00"),
        ("desk", "/desk/patients?q=An%00"),
        (None, "/password-reset/abc%00def"),
    ):
        answer = await client.get(path, headers=world.headers(who) if who else {})
        assert answer.status_code == 400 and answer.json()["detail"] == NUL_DETAIL, path


async def test_a_nul_in_the_login_and_registration_forms_is_a_400(client, world):
    for path, form in (
        ("/login", {"email": "p0@t.test\x00", "password": "x"}),
        (
            "/register",
            {"email": "new@t.test", "password": "a long password 1", "full_name": "A\x00"},
        ),
    ):
        token = csrf_from((await client.get(path)).text)
        answer = await client.post(path, data={**form, "csrf_token": token})
        assert answer.status_code == 400 and answer.json()["detail"] == NUL_DETAIL, path


# --- a clinic's time zone ----------------------------------------------------------------

# Zones the fuzzer does not send (test_fuzz_api.FUZZED_ZONES stands for the list there).
UNFUZZED_ZONES = ("Asia/Calcutta", "Etc/GMT-14", "America/Argentina/ComodRivadavia", "NZ-CHAT")
NOT_ZONES = ("Mars/Olympus", "europe/berlin", "Europe/Berlin ", "", "UTC+1", "Europe")


async def test_a_clinic_s_time_zone_is_any_zone_the_machine_knows_and_nothing_else(
    client, world, session
):
    """The API lists and takes exactly the machine's IANA zones: every one is in its
    schema, one the fuzzer never sends is accepted, a name that is no zone is a 400."""
    schema = client.app.openapi_schema.to_schema()["components"]["schemas"]["ClinicIn"]
    assert schema["properties"]["timezone"]["enum"] == sorted(available_timezones())
    admin = world.headers("admin")
    for zone in UNFUZZED_ZONES:
        made = await client.post(
            "/api/clinics", json={"name": zone, "timezone": zone}, headers=admin
        )
        assert made.status_code == 201 and made.json()["timezone"] == zone, made.text
    for zone in NOT_ZONES:
        refused = await client.post(
            "/api/clinics", json={"name": "Nowhere", "timezone": zone}, headers=admin
        )
        assert refused.status_code == 400, (zone, refused.text)
        assert [e["key"] for e in refused.json()["extra"]] == ["timezone"], (zone, refused.text)
    clinics = await session.scalar(select(func.count()).select_from(Clinic))
    assert clinics == 2 + len(UNFUZZED_ZONES)


# --- JSON nested 1,000 levels deep -----------------------------------------------------


async def test_json_nested_a_thousand_levels_is_a_400(client, world, session):
    deep = "[" * 1000 + "]" * 1000
    for who, path, text in (
        ("patient0", "/api/appointments", f'{{"doctor_id": 1, "start": {deep}}}'),
        (None, "/api/auth/token", deep),
    ):
        headers = (world.headers(who) if who else {}) | {"Content-Type": "application/json"}
        answer = await client.post(path, content=text, headers=headers)
        assert answer.status_code == 400 and answer.json()["detail"] == DEPTH_DETAIL, path
    # Brackets inside strings are text, not nesting.
    reason = "[" * 1000
    body = {"doctor_id": world.doctor_id, "start": at(day_after_tomorrow(), 9).isoformat()}
    booked = await client.post(
        "/api/appointments",
        json={**body, "reason": reason[:500]},
        headers=world.headers("patient0"),
    )
    assert booked.status_code == 201, booked.text
    assert json.loads(booked.text)["reason"] == reason[:500]


# --- the named 500s of exports and the websocket ---------------------------------------


async def test_an_export_for_a_clinic_that_does_not_exist_is_a_404(client, world):
    body = {"from": "2030-01-01", "to": "2030-01-02", "clinic_id": 987654}
    answer = await client.post("/api/analytics/exports", json=body, headers=world.headers("admin"))
    assert answer.status_code == 404 and answer.json()["detail"] == "clinic 987654 does not exist"


async def test_a_websocket_for_an_unknown_doctor_or_clinic_is_refused_before_accepting(
    world, live_server
):
    day = day_after_tomorrow().isoformat()
    base = live_server.url.replace("http://", "ws://") + "/ws/live?"
    for who, query in (
        ("patient0", f"view=slots&doctor_id=987654&date={day}"),
        ("patient0", f"view=slots&doctor_id={HUGE}&date={day}"),
        ("patient0", f"view=slots&doctor_id={world.doctor_id}&date=9999-12-31&days=14"),
        ("admin", f"view=board&clinic_id=987654&date={day}"),
    ):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(
                base + query,
                origin=live_server.url,
                additional_headers=world.headers(who),
                open_timeout=10,
            )
        assert refused.value.response.status_code == 403, query  # closed with 1008 unaccepted
    known = await websockets.connect(
        base + f"view=slots&doctor_id={world.doctor_id}&date={day}",
        origin=live_server.url,
        additional_headers=world.headers("patient0"),
        open_timeout=10,
    )
    await known.close()
