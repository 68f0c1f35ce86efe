"""The access matrix (docs/security.md): every route by every role, with and without
credentials, against an explicit table of the documented rules, plus the "whose data"
cells of every route that takes an object id or a clinic.

`EXPECTED` is written by hand from docs/security.md; it is deliberately not derived from
the routes' own guards, so loosening a guard fails here. A route the table does not list,
or a listed route the app no longer has, fails `test_the_table_lists_every_route`.
"""

import dataclasses
import re
from pathlib import Path
from zoneinfo import ZoneInfo

from litestar.routes import HTTPRoute, WebSocketRoute
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from app.access import audit
from app.access.identity import load_principal
from app.analytics import exports
from app.analytics.reports import ReportScope
from app.web.asgi import create_app
from db.models import Appointment, Clinic, Doctor
from tests.integration.auth_helpers import bearer, make_user
from tests.integration.world import at, day_after_tomorrow, make_world

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("patient", "doctor", "front_desk", "admin")

# Who may reach each route: PUBLIC (no credentials), ANY (any signed-in user), or the
# roles named. "Whose data" within an admitted role is tested further down.
PUBLIC = "public"
ANY = ("patient", "doctor", "front_desk", "admin")
PATIENT = ("patient",)
DOCTOR = ("doctor",)
ADMIN = ("admin",)
STAFF = ("front_desk", "admin")  # front desk: its own clinic; admin: every clinic
READERS = ("patient", "doctor", "admin")  # medical records: own / care or BG / BG
WS = "ws"  # the websocket: channel x role cells live in test_ws_access.py
# The SMS provider's webhook: its request signature is the only credential, so everyone
# else, signed in or not, is refused with 403 (no role is this pseudo-role).
PROVIDER = ("sms_provider",)

EXPECTED: dict[tuple[str, str], str | tuple[str, ...]] = {
    # operations: probes and the Prometheus scrape (docs: "Operations endpoints")
    ("GET", "/health/live"): PUBLIC,
    ("GET", "/health/ready"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    # public pages and files
    ("GET", "/"): PUBLIC,
    ("GET", "/static/{file_path:path}"): PUBLIC,
    ("GET", "/documents/{key:path}"): PUBLIC,  # the signed URL is the credential
    # the OpenAPI documentation (a written decision: public, docs "OpenAPI schema"); only
    # the Swagger UI we vendor, so no other renderer's page
    ("GET", "/schema"): PUBLIC,
    ("GET", "/schema/{path:str}"): PUBLIC,
    ("GET", "/schema/openapi.json"): PUBLIC,
    ("GET", "/schema/swagger"): PUBLIC,
    # sign-in pages and the auth API
    ("GET", "/login"): PUBLIC,
    ("POST", "/login"): PUBLIC,
    ("POST", "/login/totp"): PUBLIC,
    ("POST", "/login/totp-setup"): PUBLIC,
    ("GET", "/register"): PUBLIC,
    ("POST", "/register"): PUBLIC,
    ("GET", "/password-reset"): PUBLIC,
    ("POST", "/password-reset"): PUBLIC,
    ("GET", "/password-reset/{token:str}"): PUBLIC,
    ("POST", "/password-reset/{token:str}"): PUBLIC,
    ("POST", "/api/auth/register"): PUBLIC,
    ("POST", "/api/auth/token"): PUBLIC,
    ("POST", "/api/auth/refresh"): PUBLIC,
    ("POST", "/api/auth/revoke"): PUBLIC,
    ("POST", "/api/auth/password-reset"): PUBLIC,
    ("POST", "/api/auth/password-reset/confirm"): PUBLIC,
    ("POST", "/language"): PUBLIC,  # the header's language switcher (a patient's is saved)
    ("GET", "/api/auth/me"): ANY,
    ("POST", "/api/auth/password"): ANY,
    ("GET", "/logout"): ANY,
    ("POST", "/logout"): ANY,
    ("GET", "/me"): ANY,
    ("GET", "/account/password"): ANY,
    ("POST", "/account/password"): ANY,
    ("GET", "/account/totp"): ("doctor", "front_desk", "admin"),
    ("POST", "/account/totp"): ("doctor", "front_desk", "admin"),
    ("POST", "/account/totp/remove"): ("doctor", "front_desk", "admin"),
    ("GET", "/me/access-log"): PATIENT,
    # accounts and the audit trail
    ("GET", "/api/users"): ADMIN,
    ("POST", "/api/users"): ADMIN,
    ("PATCH", "/api/users/{user_id:int}"): ADMIN,
    ("GET", "/admin/users"): ADMIN,
    ("POST", "/admin/users"): ADMIN,
    ("POST", "/admin/users/{user_id:int}"): ADMIN,
    ("GET", "/admin/audit"): ADMIN,
    ("GET", "/admin/queries"): ADMIN,
    # clinics, doctors, schedules
    ("GET", "/api/clinics"): ANY,
    ("POST", "/api/clinics"): ADMIN,
    ("POST", "/api/clinics/{clinic_id:int}/exceptions"): ADMIN,
    ("GET", "/api/doctors"): ANY,
    ("POST", "/api/doctors"): ADMIN,
    ("GET", "/api/doctors/{doctor_id:int}/schedule"): ANY,
    ("PUT", "/api/doctors/{doctor_id:int}/schedule"): ADMIN,
    ("POST", "/api/doctors/{doctor_id:int}/exceptions"): ADMIN,
    ("PATCH", "/api/doctors/{doctor_id:int}/exceptions/{exception_id:int}"): ADMIN,
    ("DELETE", "/api/doctors/{doctor_id:int}/exceptions/{exception_id:int}"): ADMIN,
    # reminders a patient answers without signing in: the signed link is the credential;
    # the SMS webhook checks the provider's signature
    ("GET", "/r/{token:str}"): PUBLIC,
    ("POST", "/r/{token:str}"): PUBLIC,
    ("POST", "/api/webhooks/sms"): PROVIDER,
    # visit types: anyone signed in reads (patients only the online ones), admins manage
    ("GET", "/api/doctors/{doctor_id:int}/visit-types"): ANY,
    ("POST", "/api/doctors/{doctor_id:int}/visit-types"): ADMIN,
    ("PATCH", "/api/doctors/{doctor_id:int}/visit-types/{visit_type_id:int}"): ADMIN,
    ("DELETE", "/api/doctors/{doctor_id:int}/visit-types/{visit_type_id:int}"): ADMIN,
    ("GET", "/admin/doctors/{doctor_id:int}/visit-types"): ADMIN,
    ("POST", "/admin/doctors/{doctor_id:int}/visit-types"): ADMIN,
    ("POST", "/admin/doctors/{doctor_id:int}/visit-types/{visit_type_id:int}"): ADMIN,
    ("GET", "/admin/clinics"): ADMIN,
    ("POST", "/admin/clinics"): ADMIN,
    ("POST", "/admin/clinics/{clinic_id:int}/exceptions"): ADMIN,
    ("GET", "/admin/doctors"): ADMIN,
    ("POST", "/admin/doctors"): ADMIN,
    ("GET", "/admin/doctors/{doctor_id:int}/schedule"): ADMIN,
    ("POST", "/admin/doctors/{doctor_id:int}/schedule"): ADMIN,
    ("POST", "/admin/doctors/{doctor_id:int}/exceptions"): ADMIN,
    ("GET", "/admin/doctors/{doctor_id:int}/exceptions/{exception_id:int}"): ADMIN,
    ("POST", "/admin/doctors/{doctor_id:int}/exceptions/{exception_id:int}"): ADMIN,
    ("POST", "/admin/doctors/{doctor_id:int}/exceptions/{exception_id:int}/withdraw"): ADMIN,
    # appointments (API)
    ("GET", "/api/appointments/available-slots"): ANY,
    ("GET", "/api/appointments"): ANY,
    ("POST", "/api/appointments"): ("patient", "front_desk", "admin"),
    ("GET", "/api/appointments/{appointment_id:int}"): ANY,
    ("PATCH", "/api/appointments/{appointment_id:int}"): ANY,
    ("POST", "/api/appointments/bulk-update"): ("doctor", *STAFF),
    ("POST", "/api/appointments/conflicts"): STAFF,
    # the waitlist (API): patients their own entries and offers, the desk its clinic's list
    ("POST", "/api/waitlist"): ("patient", *STAFF),
    ("GET", "/api/waitlist"): ("patient", *STAFF),
    ("DELETE", "/api/waitlist/{entry_id:int}"): ("patient", *STAFF),
    ("GET", "/api/offers"): PATIENT,
    ("POST", "/api/offers/{offer_id:int}/accept"): PATIENT,
    ("POST", "/api/offers/{offer_id:int}/decline"): PATIENT,
    # patient pages
    ("GET", "/doctors"): PUBLIC,  # visitors browse doctors and free times
    ("GET", "/doctors/{doctor_id:int}/slots"): PUBLIC,
    ("GET", "/doctors/{doctor_id:int}/book"): PUBLIC,  # a visitor's panel: "sign in to book"
    ("POST", "/doctors/{doctor_id:int}/book"): PATIENT,
    ("GET", "/me/appointments"): PATIENT,
    ("GET", "/me/profile"): PATIENT,
    ("POST", "/me/profile"): PATIENT,
    ("GET", "/email-verify/{token:str}"): PUBLIC,  # the link is the credential
    ("POST", "/email-verify/{token:str}"): PUBLIC,
    ("POST", "/me/appointments/{appointment_id:int}/cancel"): PATIENT,
    ("POST", "/me/appointments/{appointment_id:int}/reschedule"): PATIENT,
    ("GET", "/me/waitlist/join"): PATIENT,
    ("POST", "/me/waitlist"): PATIENT,
    ("POST", "/me/waitlist/{entry_id:int}/leave"): PATIENT,
    ("POST", "/me/offers/{offer_id:int}/accept"): PATIENT,
    ("POST", "/me/offers/{offer_id:int}/decline"): PATIENT,
    # staff pages
    ("GET", "/desk"): STAFF,
    ("POST", "/desk/appointments/{appointment_id:int}/status"): STAFF,
    ("POST", "/desk/bulk-check-in"): STAFF,
    ("POST", "/desk/conflicts/{action:str}"): STAFF,
    ("GET", "/desk/patients"): STAFF,
    ("POST", "/desk/patients"): STAFF,
    ("POST", "/desk/walk-in"): STAFF,
    ("GET", "/desk/waitlist"): STAFF,
    ("POST", "/desk/waitlist"): STAFF,
    ("POST", "/desk/waitlist/{entry_id:int}/remove"): STAFF,
    ("GET", "/doctor/day"): DOCTOR,
    ("POST", "/doctor/appointments/{appointment_id:int}/status"): DOCTOR,
    # live updates
    ("WS", "/ws/live"): WS,
    # analytics (front desk: own clinic only; admin: any or all)
    ("GET", "/analytics"): STAFF,
    ("GET", "/analytics/exports"): STAFF,
    ("POST", "/analytics/exports"): STAFF,
    ("GET", "/analytics/exports/{export_id:str}"): STAFF,
    ("GET", "/api/analytics/no-shows"): STAFF,
    ("GET", "/api/analytics/popular-slots"): STAFF,
    ("GET", "/api/analytics/utilisation"): STAFF,
    ("GET", "/api/analytics/cancellations"): STAFF,
    ("GET", "/api/analytics/report.csv"): STAFF,
    ("POST", "/api/analytics/exports"): STAFF,
    ("GET", "/api/analytics/exports/{export_id:str}"): STAFF,
    ("GET", "/api/analytics/exports/{export_id:str}/file"): STAFF,
    # notifications
    ("GET", "/api/notifications/undelivered"): ADMIN,
    ("POST", "/api/notifications/{notification_id:int}/retry"): ADMIN,
    ("POST", "/api/notifications/{notification_id:int}/discard"): ADMIN,
    ("GET", "/admin/notifications"): ADMIN,
    ("POST", "/admin/notifications/{notification_id:int}/retry"): ADMIN,
    ("POST", "/admin/notifications/{notification_id:int}/discard"): ADMIN,
    ("GET", "/admin/mailbox"): ADMIN,
    ("GET", "/api/me/notifications"): PATIENT,
    ("PATCH", "/api/me/notifications"): PATIENT,
    ("GET", "/me/notifications"): PATIENT,
    ("POST", "/me/notifications"): PATIENT,
    # medical records (whose: tests/integration/test_records.py, role x relationship)
    ("GET", "/api/patients/{patient_id:int}/records"): READERS,
    ("POST", "/api/patients/{patient_id:int}/records"): DOCTOR,
    ("GET", "/api/patients/{patient_id:int}/records/{record_id:int}"): READERS,
    ("GET", "/patients/{patient_id:int}/records"): READERS,
    ("POST", "/patients/{patient_id:int}/records/upload"): DOCTOR,
    ("GET", "/me/records"): PATIENT,
    # the FHIR R4 API (docs/fhir.md); whose data: tests/integration/test_fhir_access.py
    ("GET", "/fhir/R4/metadata"): PUBLIC,  # FHIR clients read it before signing in
    # the SMART Scheduling Links feed: directory and free times only, like the slot pages
    ("GET", "/fhir/R4/$bulk-publish"): PUBLIC,
    ("GET", "/fhir/R4/$bulk-publish/{generation:str}/{name:str}"): PUBLIC,
    ("GET", "/fhir/R4/Practitioner"): ANY,
    ("GET", "/fhir/R4/Practitioner/{resource_id:str}"): ANY,
    ("GET", "/fhir/R4/PractitionerRole"): ANY,
    ("GET", "/fhir/R4/PractitionerRole/{resource_id:str}"): ANY,
    ("GET", "/fhir/R4/Location"): ANY,
    ("GET", "/fhir/R4/Location/{resource_id:str}"): ANY,
    ("GET", "/fhir/R4/Schedule"): ANY,
    ("GET", "/fhir/R4/Schedule/{resource_id:str}"): ANY,
    ("GET", "/fhir/R4/HealthcareService"): ANY,  # staff-only visit types: staff only
    ("GET", "/fhir/R4/HealthcareService/{resource_id:str}"): ANY,
    ("GET", "/fhir/R4/Slot"): ANY,
    ("GET", "/fhir/R4/Slot/{resource_id:str}"): ANY,
    ("GET", "/fhir/R4/Appointment"): ANY,
    ("GET", "/fhir/R4/Appointment/{resource_id:str}"): ANY,
    ("GET", "/fhir/R4/Patient"): ANY,
    ("GET", "/fhir/R4/Patient/{resource_id:str}"): ANY,
    ("GET", "/fhir/R4/Appointment/$find"): ANY,
    ("POST", "/fhir/R4/Appointment/$book"): ("patient", "front_desk", "admin"),
    ("POST", "/fhir/R4/Appointment/$hold"): ("patient", "front_desk", "admin"),
    ("PATCH", "/fhir/R4/Appointment/{resource_id:str}"): ANY,
}


def routes(app) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, from its real route table."""
    found = set()
    for route in app.routes:
        if isinstance(route, WebSocketRoute):
            found.add(("WS", route.path))
            continue
        assert isinstance(route, HTTPRoute), route
        for handler in route.route_handlers:
            # Litestar's automatic OPTIONS answer has no guard and no data.
            found |= {(m, route.path) for m in handler.http_methods - {"OPTIONS", "HEAD"}}
    return found


def test_the_table_lists_every_route_and_nothing_else(settings):
    served = routes(create_app(settings))
    assert sorted(served - EXPECTED.keys()) == [], "routes missing from EXPECTED (and the doc)"
    assert sorted(EXPECTED.keys() - served) == [], "EXPECTED lists routes the app lacks"


def documented_path(path: str) -> str:
    """`/api/users/{user_id:int}` as the doc writes it: `/api/users/{user_id}`."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def test_the_doc_names_every_route():
    doc = (ROOT / "docs" / "security.md").read_text()
    missing = sorted(
        {documented_path(p) for _, p in EXPECTED if f"`{documented_path(p)}`" not in doc}
    )
    assert missing == [], "docs/security.md's matrix must name these paths"


def concrete(path: str) -> str:
    """Fill path parameters with ids that exist for nobody."""
    if path.startswith("/static/"):
        return "/static/css/app.css"
    path = re.sub(r"\{[^}:]+:int\}", "987654", path)
    return re.sub(r"\{[^}]+\}", "nothing-here", path)


def csrf_from_headers(html: str) -> str:
    match = re.search(r'"X-CSRF-Token": "([^"]+)"', html)
    assert match
    return match.group(1)


async def test_every_route_for_every_role(settings, db, redis, session):
    """Anonymous: 401 unless public. A role the table does not admit: 403 before any body
    is read. An admitted role: never 401/403 for reaching the route (made-up ids and empty
    bodies may get 400/404/422). Nothing answers 5xx."""
    clinic = Clinic(name="C", timezone="Europe/Berlin")
    session.add(clinic)
    await session.flush()
    doctor = Doctor(clinic_id=clinic.id, full_name="Dr. D", specialty="GP")
    session.add(doctor)
    await session.commit()
    users = {
        "patient": await make_user(session, "patient", "p@example.test"),
        "doctor": await make_user(session, "doctor", "d@example.test", doctor_id=doctor.id),
        "front_desk": await make_user(session, "front_desk", "f@example.test", clinic_id=clinic.id),
        "admin": await make_user(session, "admin", "a@example.test"),
    }
    # Rate limits are tested on their own; here they would only add noise.
    unlimited = dataclasses.replace(
        settings,
        rate_limit_auth_per_minute=0,
        rate_limit_user_per_minute=0,
        rate_limit_anonymous_per_minute=0,
    )
    app = create_app(unlimited)
    problems, checked = [], 0
    async with AsyncTestClient(app=app) as client:
        for (method, template), rule in sorted(EXPECTED.items()):
            if rule == WS:
                continue  # handshakes: tests/integration/test_ws_access.py
            path = concrete(template)
            body = {} if method in ("POST", "PUT", "PATCH") else None
            # Anonymous form posts need the anonymous CSRF token, as a browser would have.
            client.cookies.clear()
            csrf = csrf_from_headers((await client.get("/")).text)
            anonymous = await client.request(
                method, path, json=body, headers={"X-CSRF-Token": csrf}
            )
            client.cookies.clear()
            status = anonymous.status_code
            if rule == PROVIDER:
                if status != 403:
                    problems.append(f"anonymous {method} {path}: {status} (rule {rule})")
            elif status >= 500 or (rule == PUBLIC) == (status == 401) or status == 403:
                problems.append(f"anonymous {method} {path}: {status} (rule {rule})")
            for role, user in users.items():
                response = await client.request(
                    method, path, json=body, headers=bearer(settings, user)
                )
                status = response.status_code
                checked += 1
                admitted = rule == PUBLIC or role in rule
                if status >= 500:
                    problems.append(f"{role} {method} {path}: {status} {response.text[:200]}")
                elif admitted and status in (401, 403):
                    problems.append(f"{role} refused by {method} {path}: {status} {response.text}")
                elif not admitted and status != 403:
                    problems.append(f"{role} admitted to {method} {path}: {status}")
    assert problems == [], "\n".join(problems)
    assert checked == 4 * sum(rule != WS for rule in EXPECTED.values())


# --- whose data: another's object answers exactly like one that does not exist ----------

UNKNOWN = 987654


async def world_with_bookings(client, session, settings):
    """Berlin (desk, doctor, patients 0 and 1) and New York (other desk, other doctor,
    patient 2), with one booking each for patient 0 and 1 in Berlin and patient 2 in NY."""
    world = await make_world(session, settings.secret_key, patients=3)
    day = day_after_tomorrow()
    ny = ZoneInfo("America/New_York")

    async def book(who, doctor_id, start, **extra):
        body = {"doctor_id": doctor_id, "start": start.isoformat(), **extra}
        answer = await client.post("/api/appointments", json=body, headers=world.headers(who))
        assert answer.status_code == 201, answer.text
        return answer.json()["id"]

    world.mine = await book("patient0", world.doctor_id, at(day, 9))
    world.theirs = await book("patient1", world.doctor_id, at(day, 10))
    world.ny = await book(
        "other_desk", world.other_doctor_id, at(day, 10, tz=ny), patient_id=world.patients[2]
    )
    world.day = day
    return world


def message(answer, object_id: object) -> str:
    """What an answer says: the JSON `detail`, or the error line of an HTML fragment,
    with the id asked for written as ID."""
    if answer.headers.get("content-type", "").startswith("application/json"):
        said = str(answer.json().get("detail"))
    else:
        found = re.search(r'class="error"[^>]*>(.*?)</p>', answer.text, re.S)
        said = found.group(1) if found else answer.text
    return re.sub(rf"\b{re.escape(str(object_id))}\b", "ID", said)


def like_unknown(answer, unknown, object_id: object, unknown_id: object = UNKNOWN) -> bool:
    """Same status and the same words as for an id nobody has."""
    return answer.status_code == unknown.status_code and message(answer, object_id) == message(
        unknown, unknown_id
    )


async def statuses(session) -> dict[int, str]:
    return dict((await session.execute(select(Appointment.id, Appointment.status))).all())


async def test_appointment_api_whose_data(client, session, settings):
    w = await world_with_bookings(client, session, settings)
    url = "/api/appointments/{}".format
    visible = {
        "patient0": {w.mine},
        "patient1": {w.theirs},
        "doctor": {w.mine, w.theirs},  # their own schedule
        "desk": {w.mine, w.theirs},  # their clinic
        "other_desk": {w.ny},
        "admin": {w.mine, w.theirs, w.ny},
    }
    for who, ids in visible.items():
        listed = await client.get("/api/appointments", headers=w.headers(who))
        assert {a["id"] for a in listed.json()["items"]} == ids, who
        unknown = await client.get(url(UNKNOWN), headers=w.headers(who))
        assert unknown.status_code == 404
        for object_id in (w.mine, w.theirs, w.ny):
            answer = await client.get(url(object_id), headers=w.headers(who))
            if object_id in ids:
                assert answer.status_code == 200, (who, object_id)
            else:
                assert like_unknown(answer, unknown, object_id), (who, object_id, answer.text)
    # Changing another's: 404 like an unknown id, and nothing changes.
    cells = [
        ("patient0", w.theirs, {"status": "cancelled"}),
        ("doctor", w.ny, {"status": "checked_in"}),  # another doctor's appointment
        ("desk", w.ny, {"status": "cancelled"}),  # another clinic's
        ("other_desk", w.mine, {"status": "cancelled"}),
        ("patient0", w.theirs, {"start": at(w.day, 12).isoformat()}),
    ]
    for who, object_id, body in cells:
        unknown = await client.patch(url(UNKNOWN), json=body, headers=w.headers(who))
        answer = await client.patch(url(object_id), json=body, headers=w.headers(who))
        assert answer.status_code == 404 and like_unknown(answer, unknown, object_id), who
    assert set((await statuses(session)).values()) == {"booked"}
    # What a role may never do answers 403, on its own objects too.
    doctor_moves = await client.patch(
        url(w.mine), json={"start": at(w.day, 12).isoformat()}, headers=w.headers("doctor")
    )
    assert doctor_moves.status_code == 403 and "reschedule" in doctor_moves.json()["detail"]
    patient_checks_in = await client.patch(
        url(w.mine), json={"status": "checked_in"}, headers=w.headers("patient0")
    )
    assert patient_checks_in.status_code == 403
    for who, body, words in (
        ("patient0", {"patient_id": w.patients[1]}, "only for themselves"),
        ("desk", {"doctor_id": w.other_doctor_id, "patient_id": w.patients[0]}, "own clinic"),
    ):
        body = {"doctor_id": w.doctor_id, "start": at(w.day, 14).isoformat(), **body}
        refused = await client.post("/api/appointments", json=body, headers=w.headers(who))
        assert refused.status_code == 403 and words in refused.json()["detail"], who
    assert len(await statuses(session)) == 3
    # Bulk: another clinic's id reads exactly like an unknown one.
    bulk = await client.post(
        "/api/appointments/bulk-update",
        json={"appointment_ids": [w.ny, UNKNOWN], "status": "checked_in"},
        headers=w.headers("desk"),
    )
    results = {r["id"]: r["result"] for r in bulk.json()["results"]}
    assert results == {w.ny: "not_found", UNKNOWN: "not_found"}
    assert set((await statuses(session)).values()) == {"booked"}


async def test_page_routes_whose_data(client, session, settings):
    w = await world_with_bookings(client, session, settings)
    hx = {"HX-Request": "true"}

    async def post(who, path, data):
        return await client.post(path, data=data, headers=w.headers(who) | hx)

    # A patient's page actions on another patient's appointment.
    for action, data in (("cancel", {}), ("reschedule", {"start": at(w.day, 12).isoformat()})):
        unknown = await post("patient0", f"/me/appointments/{UNKNOWN}/{action}", data)
        answer = await post("patient0", f"/me/appointments/{w.theirs}/{action}", data)
        assert like_unknown(answer, unknown, w.theirs), (action, answer.text)
        assert f"appointment {w.theirs} not found" in answer.text
    slots = f"/doctors/{w.doctor_id}/slots?reschedule={{}}"
    unknown = await client.get(slots.format(UNKNOWN), headers=w.headers("patient0"))
    answer = await client.get(slots.format(w.theirs), headers=w.headers("patient0"))
    assert answer.status_code == 404 and like_unknown(answer, unknown, w.theirs)
    # The desk's status buttons on another clinic's appointment; the doctor's on another
    # doctor's. htmx swaps only 2xx, so these fragments answer 200 with the message.
    for who, path in (
        ("desk", "/desk/appointments/{}/status"),
        ("doctor", "/doctor/appointments/{}/status"),
    ):
        unknown = await post(who, path.format(UNKNOWN), {"status": "checked_in"})
        answer = await post(who, path.format(w.ny), {"status": "checked_in"})
        assert like_unknown(answer, unknown, w.ny), (who, answer.text)
        assert f"appointment {w.ny} not found" in answer.text
    checked = await post("desk", "/desk/bulk-check-in", {"appointment_ids": [str(w.ny)]})
    assert "Checked in 0. 1 could not be checked in." in checked.text
    assert set((await statuses(session)).values()) == {"booked"}
    walk_in = await post(
        "desk",
        "/desk/walk-in",
        {
            "doctor_id": str(w.other_doctor_id),
            "patient_id": str(w.patients[0]),
            "q": "Patient 0",
            "date": w.day.isoformat(),
            "time": "15:00",
        },
    )
    assert "own clinic" in walk_in.text and len(await statuses(session)) == 3
    # A desk asking for another clinic's board gets its own; an admin gets the one asked.
    board = await client.get(f"/desk?clinic_id={w.other_clinic_id}", headers=w.headers("desk"))
    assert board.status_code == 200 and "Dr. Berlin" in board.text and "Dr. NY" not in board.text
    board = await client.get(f"/desk?clinic_id={w.other_clinic_id}", headers=w.headers("admin"))
    assert board.status_code == 200 and "Dr. NY" in board.text and "Dr. Berlin" not in board.text
    # A patient's records page and API for another patient: 404, like a patient nobody has.
    for path in ("/api/patients/{}/records", "/patients/{}/records"):
        own = await client.get(path.format(w.patients[0]), headers=w.headers("patient0"))
        assert own.status_code == 200, path
        unknown = await client.get(path.format(UNKNOWN), headers=w.headers("patient0"))
        other = await client.get(path.format(w.patients[1]), headers=w.headers("patient0"))
        assert other.status_code == 404 and like_unknown(other, unknown, w.patients[1]), path


async def test_analytics_whose_data(client, session, settings):
    w = await world_with_bookings(client, session, settings)
    # Clinics are a public directory: asking for another's analytics is a plain 403.
    for path in ("/api/analytics/no-shows", "/analytics"):
        own, other = (f"{path}?clinic_id={c}" for c in (w.clinic_id, w.other_clinic_id))
        assert (await client.get(own, headers=w.headers("desk"))).status_code == 200, path
        refused = await client.get(other, headers=w.headers("desk"))
        assert refused.status_code == 403 and "own clinic" in refused.text, path
        assert (await client.get(other, headers=w.headers("admin"))).status_code == 200, path
    # An export is its requester's (admins see all); anyone else's answers like an unknown one.
    desk = await load_principal(session, w.users["desk"].id)
    assert desk is not None
    export = await exports.create_export(
        session, desk, ReportScope(w.day, w.day, w.clinic_id), None
    )
    for path in ("/api/analytics/exports/{}", "/analytics/exports/{}"):
        for who in ("desk", "admin"):
            mine = await client.get(path.format(export.id), headers=w.headers(who))
            assert mine.status_code == 200, (path, who)
        unknown = await client.get(path.format("0" * 32), headers=w.headers("other_desk"))
        other = await client.get(path.format(export.id), headers=w.headers("other_desk"))
        assert other.status_code == 404, path
        assert like_unknown(other, unknown, export.id, "0" * 32), path
    file = "/api/analytics/exports/{}/file"
    unknown = await client.get(file.format("0" * 32), headers=w.headers("other_desk"))
    other = await client.get(file.format(export.id), headers=w.headers("other_desk"))
    assert other.status_code == 404 and like_unknown(other, unknown, export.id, "0" * 32)


async def test_me_is_always_the_caller(client, session, settings):
    ann = await make_user(session, "patient", "ann@example.test")
    admin = await make_user(session, "admin", "root@example.test")
    for user in (ann, admin):
        me = (await client.get("/api/auth/me", headers=bearer(settings, user))).json()
        assert me["id"] == user.id and me["role"] == user.role


async def test_a_patient_sees_only_their_own_access_log(client, session, settings):
    ann = await make_user(session, "patient", "ann@example.test")
    bob = await make_user(session, "patient", "bob@example.test")
    clinic = Clinic(name="C", timezone="Europe/Berlin")
    session.add(clinic)
    await session.flush()
    doctor = Doctor(clinic_id=clinic.id, full_name="Dr. D", specialty="GP")
    session.add(doctor)
    await session.commit()
    doc = await make_user(session, "doctor", "doc@example.test", doctor_id=doctor.id)
    nurse = await make_user(session, "admin", "breakglass@example.test")
    await audit.record(
        session, actor_user_id=doc.id, action=audit.RECORD_READ, patient_id=ann.patient_id
    )
    await audit.record(
        session,
        actor_user_id=nurse.id,
        action=audit.BREAK_GLASS,
        patient_id=bob.patient_id,
        flagged=True,
    )
    await audit.record(session, actor_user_id=ann.id, action=audit.LOGIN_SUCCEEDED)
    await session.commit()
    page = await client.get("/me/access-log", headers=bearer(settings, ann))
    assert page.status_code == 200
    assert "doc@example.test" in page.text
    assert "breakglass@example.test" not in page.text and "login" not in page.text
    page = await client.get("/me/access-log", headers=bearer(settings, bob))
    assert "breakglass@example.test" in page.text and "doc@example.test" not in page.text
    assert (await client.get("/me/access-log", headers=bearer(settings, doc))).status_code == 403


async def test_admin_audit_page_lists_and_filters_events(client, session, settings):
    admin = await make_user(session, "admin", "root@example.test")
    await make_user(session, "patient", "ann@example.test")
    wrong = {"email": "ann@example.test", "password": "not the password"}
    await client.post("/api/auth/token", json=wrong)
    await client.post("/api/auth/token", json={**wrong, "email": "ghost@example.test"})
    page = await client.get("/admin/audit", headers=bearer(settings, admin))
    assert page.status_code == 200 and page.text.count("login.failed") >= 3  # 2 rows + option
    only = await client.get(
        "/admin/audit?action=account.created&actor_user=&patient=&flagged=",
        headers=bearer(settings, admin),
    )
    assert only.status_code == 200 and "<td>login.failed" not in only.text
    rows = await audit.list_events(session, action="login.failed")
    assert {r.details["email"] for r in rows} == {"ann@example.test", "ghost@example.test"}


async def test_admin_creates_staff_and_changes_roles(client, session, settings):
    admin = await make_user(session, "admin", "root@example.test")
    clinic = Clinic(name="C", timezone="Europe/Berlin")
    session.add(clinic)
    await session.commit()
    headers = bearer(settings, admin)
    desk = {"role": "front_desk", "email": "desk@example.test", "password": "a long password"}
    missing = await client.post("/api/users", json=desk, headers=headers)
    assert missing.status_code == 422 and "clinic" in missing.json()["detail"]
    created = await client.post(
        "/api/users", json={**desk, "clinic_id": clinic.id}, headers=headers
    )
    assert created.status_code == 201 and created.json()["clinic_id"] == clinic.id
    user_id = created.json()["id"]
    promoted = await client.patch(f"/api/users/{user_id}", json={"role": "admin"}, headers=headers)
    assert promoted.status_code == 200 and promoted.json()["clinic_id"] is None
    self_demote = await client.patch(
        f"/api/users/{admin.id}", json={"role": "patient"}, headers=headers
    )
    assert self_demote.status_code == 422
    assert (await client.patch("/api/users/987654", json={}, headers=headers)).status_code == 404
    actions = (
        await session.scalars(select(audit.AuditEvent.action).order_by(audit.AuditEvent.id))
    ).all()
    assert actions == ["account.created", "account.role_changed"]


async def test_admin_audit_page_filters_by_actor_patient_and_flag(client, session, settings):
    admin = await make_user(session, "admin", "root@example.test")
    ann = await make_user(session, "patient", "ann@example.test")
    bob = await make_user(session, "patient", "bob@example.test")
    events = [
        (ann.id, audit.LOGIN_SUCCEEDED, None, False, "m-login-ann"),
        (admin.id, audit.RECORD_READ, ann.patient_id, False, "m-read-ann"),
        (admin.id, audit.BREAK_GLASS, bob.patient_id, True, "m-bg-bob"),
    ]
    for actor, action, patient, flagged, mark in events:
        await audit.record(
            session,
            actor_user_id=actor,
            action=action,
            patient_id=patient,
            flagged=flagged,
            details={"mark": mark},
        )
    await session.commit()
    marks = {"m-login-ann", "m-read-ann", "m-bg-bob"}

    async def shown(query: str) -> set[str]:
        page = await client.get(f"/admin/audit?{query}", headers=bearer(settings, admin))
        assert page.status_code == 200, query
        return {m for m in marks if m in page.text}

    assert await shown("") == marks
    assert await shown(f"actor_user={ann.id}") == {"m-login-ann"}
    assert await shown(f"actor_user={admin.id}") == {"m-read-ann", "m-bg-bob"}
    assert await shown(f"patient={ann.patient_id}") == {"m-read-ann"}
    assert await shown(f"patient={bob.patient_id}") == {"m-bg-bob"}
    assert await shown("flagged=true") == {"m-bg-bob"}
    assert await shown(f"patient={ann.patient_id}&flagged=true") == set()
    assert await shown(f"actor_user={admin.id}&action=records.read") == {"m-read-ann"}
    assert await shown("actor_user=&patient=&flagged=&action=") == marks  # empty = any
