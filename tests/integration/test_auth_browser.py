"""Browser sign-in: registration, login, logout, sessions, CSRF and redirects."""

import dataclasses
import datetime as dt
import re

from litestar.testing import AsyncTestClient
from sqlalchemy import select

from app.access.accounts import link_key
from app.access.browser_sessions import COOKIE_NAME
from app.access.identity import load_principal
from app.analytics import exports
from app.analytics.reports import ReportScope
from app.web.asgi import create_app
from app.web.csrf import insecure_origin_warning
from db.models import AuditEvent, Clinic, Notification, Patient, ScheduleException, User
from tests.integration.auth_helpers import PASSWORD, bearer, browser_login, csrf_from, make_user
from tests.integration.world import at, day_after_tomorrow, make_world


async def test_register_signs_in_and_shows_name_and_role(client, session):
    token = csrf_from((await client.get("/register")).text)
    form = {
        "full_name": "Ann Patient",
        "email": "ann@example.test",
        "password": PASSWORD,
        "date_of_birth": "1990-04-01",
        "phone": "+49 30 1234",
        "csrf_token": token,
    }
    response = await client.post("/register", data=form)
    assert response.status_code == 200  # followed the 303 to /me
    assert "Ann Patient" in response.text and "patient" in response.text
    cookie = next(c for c in client.cookies.jar if c.name == COOKIE_NAME)
    assert cookie.has_nonstandard_attr("HttpOnly") and not cookie.secure
    patient = await session.scalar(select(Patient).where(Patient.email == "ann@example.test"))
    assert patient.full_name == "Ann Patient" and str(patient.date_of_birth) == "1990-04-01"
    actions = (await session.scalars(select(AuditEvent.action))).all()
    assert "account.registered" in actions


async def test_register_errors_keep_what_was_typed(client):
    token = csrf_from((await client.get("/register")).text)
    form = {"full_name": "Ann", "email": "ann@example.test", "password": "short"}
    response = await client.post("/register", data={**form, "csrf_token": token})
    assert response.status_code == 200
    assert "at least 10 characters" in response.text
    assert 'value="ann@example.test"' in response.text and 'value="Ann"' in response.text
    response = await client.post(
        "/register", data={**form, "password": "qwertyuiop", "csrf_token": token}
    )
    assert "common ones" in response.text


async def test_login_logout_and_the_old_cookie_is_dead(client, session):
    await make_user(session, full_name="Ann Patient")
    response = await browser_login(client)
    assert response.status_code == 200 and "Ann Patient" in response.text
    session_id = client.cookies[COOKIE_NAME]
    token = csrf_from((await client.get("/me")).text)
    response = await client.post("/logout", data={"csrf_token": token})
    assert response.status_code == 200 and "Sign in" in response.text
    client.cookies.set(COOKIE_NAME, session_id)  # replaying the old cookie
    response = await client.get("/me", headers={"Accept": "text/html"}, follow_redirects=False)
    assert response.status_code == 302 and response.headers["location"] == "/login?next=%2Fme"
    actions = (await session.scalars(select(AuditEvent.action).order_by(AuditEvent.id))).all()
    assert actions == ["login.succeeded", "logout"]


async def test_each_login_gets_a_new_session_id(client, session):
    await make_user(session)
    await browser_login(client)
    first = client.cookies[COOKIE_NAME]
    await browser_login(client)
    assert client.cookies[COOKIE_NAME] != first


async def test_wrong_password_and_unknown_email_look_the_same(client, session):
    await make_user(session)
    wrong = await browser_login(client, password="not the password at all")
    unknown = await browser_login(client, email="nobody@example.test")
    assert wrong.status_code == unknown.status_code == 200
    assert "The email or password is wrong".lower() in wrong.text.lower()
    assert wrong.text.replace("ann@example.test", "X") == unknown.text.replace(
        "nobody@example.test", "X"
    ).replace(csrf_from(unknown.text), csrf_from(wrong.text))
    events = (await session.scalars(select(AuditEvent).order_by(AuditEvent.id))).all()
    assert [e.action for e in events] == ["login.failed", "login.failed"]
    assert events[0].actor_user_id is not None and events[1].actor_user_id is None


async def test_login_never_redirects_off_site(client, session):
    await make_user(session)
    form = {"email": "ann@example.test", "password": PASSWORD}
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "/me"):
        token = csrf_from((await client.get("/login")).text)  # changes with each session
        response = await client.post(
            "/login", data={**form, "next": target, "csrf_token": token}, follow_redirects=False
        )
        # Nowhere safe to return to: the patient's own start page.
        assert response.headers["location"] == ("/me" if target == "/me" else "/me/appointments")


async def test_csrf_is_required_for_cookie_requests(client, session):
    await make_user(session)
    await browser_login(client)
    token = csrf_from((await client.get("/me")).text)
    # A form post without the token, with a wrong one, or with only a header from elsewhere.
    assert (await client.post("/logout")).status_code == 403
    assert (await client.post("/logout", data={"csrf_token": "forged"})).status_code == 403
    wrong = {"X-CSRF-Token": "forged"}
    assert (await client.post("/logout", headers=wrong)).status_code == 403
    # JSON API calls with the session cookie need it too (htmx sends the header).
    body = {"current_password": PASSWORD, "new_password": "another long secret"}
    assert (await client.post("/api/auth/password", json=body)).status_code == 403
    response = await client.post("/api/auth/password", json=body, headers={"X-CSRF-Token": token})
    assert response.status_code == 204
    # The header alone works (htmx requests).
    response = await client.post("/logout", headers={"X-CSRF-Token": token}, follow_redirects=False)
    assert response.status_code == 303


async def test_login_form_is_protected_against_login_csrf(client, session):
    await make_user(session)
    form = {"email": "ann@example.test", "password": PASSWORD}
    # A cross-site form post arrives without our anonymous CSRF cookie or with a wrong token.
    assert (await client.post("/login", data=form)).status_code == 403
    await client.get("/login")  # now the cookie is set, but the form still needs the token
    assert (await client.post("/login", data={**form, "csrf_token": "x"})).status_code == 403


async def test_a_session_token_does_not_work_for_another_session(client, another_client, session):
    await make_user(session)
    await make_user(session, email="bob@example.test")
    ann, bob = client, another_client
    await browser_login(ann)
    await browser_login(bob, email="bob@example.test")
    bobs_token = csrf_from((await bob.get("/me")).text)
    response = await ann.post("/logout", data={"csrf_token": bobs_token})
    assert response.status_code == 403


async def test_bearer_requests_need_no_csrf_token(client, session, settings):
    user = await make_user(session)
    body = {"current_password": PASSWORD, "new_password": "another long secret"}
    response = await client.post("/api/auth/password", json=body, headers=bearer(settings, user))
    assert response.status_code == 204


async def test_secure_cookie_when_the_site_is_https(settings, db, redis, session):
    await make_user(session)
    https = dataclasses.replace(settings, public_origin="https://medbook.example")
    async with AsyncTestClient(app=create_app(https), base_url="https://testserver") as client:
        response = await browser_login(client)
        assert response.status_code == 200
        set_cookie = ";".join(
            h for h in response.history[0].headers.get_list("set-cookie") if COOKIE_NAME in h
        )
        assert "Secure" in set_cookie and "HttpOnly" in set_cookie
        assert "samesite=lax" in set_cookie.lower()
        assert "max-age=31536000" in response.headers["strict-transport-security"]


async def test_pages_send_anonymous_visitors_to_login_and_api_answers_401(client):
    page = await client.get("/admin/users", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "<h1>Sign in</h1>" in page.text
    api = await client.get("/api/auth/me")
    assert api.status_code == 401 and api.json()["status_code"] == 401
    htmx = await client.get("/admin/users", headers={"HX-Request": "true"})
    assert htmx.status_code == 401 and htmx.headers["HX-Redirect"] == "/login"


async def test_security_headers_on_pages_and_errors(client):
    for response in (await client.get("/"), await client.get("/api/auth/me")):
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["cache-control"] == "no-store"
        for name in ("content-security-policy", "x-frame-options", "cache-control"):
            assert len(response.headers.get_list(name)) == 1, name
    static = await client.get("/static/css/app.css")
    assert static.status_code == 200 and static.headers["x-frame-options"] == "DENY"
    assert "no-store" not in static.headers.get("cache-control", "")
    page = (await client.get("/")).text
    assert '<meta name="htmx-config" content=\'{"includeIndicatorStyles": false}\'>' in page
    assert "<script>" not in page and " style=" not in page


async def test_password_change_ends_other_sessions(client, another_client, session):
    await make_user(session)
    laptop, phone = client, another_client
    await browser_login(laptop)
    await browser_login(phone)
    token = csrf_from((await laptop.get("/account/password")).text)
    form = {"current_password": PASSWORD, "new_password": "brand new secret 42"}
    response = await laptop.post("/account/password", data={**form, "csrf_token": token})
    assert "Your password was changed" in response.text
    assert (await laptop.get("/api/auth/me")).status_code == 200
    assert (await phone.get("/api/auth/me")).status_code == 401
    user = await session.scalar(select(User).where(User.email == "ann@example.test"))
    assert user is not None


async def test_admin_pages_create_staff_and_change_roles(client, session):
    admin = await make_user(session, "admin", "root@example.test")
    clinic = Clinic(name="Spree", timezone="Europe/Berlin")
    session.add(clinic)
    await session.commit()
    await browser_login(client, "root@example.test")
    token = csrf_from((await client.get("/admin/users")).text)
    form = {"role": "front_desk", "email": "desk@example.test", "password": "a long password"}
    refused = await client.post("/admin/users", data={**form, "csrf_token": token})
    assert refused.status_code == 200 and "needs an existing clinic id" in refused.text
    assert 'value="desk@example.test"' in refused.text and "a long password" not in refused.text
    no_csrf = await client.post("/admin/users", data={**form, "clinic_id": str(clinic.id)})
    assert no_csrf.status_code == 403
    created = await client.post(
        "/admin/users", data={**form, "clinic_id": str(clinic.id), "csrf_token": token}
    )
    assert created.status_code == 200 and "desk@example.test" in created.text
    desk = await session.scalar(select(User).where(User.email == "desk@example.test"))
    assert desk is not None and desk.role == "front_desk" and desk.clinic_id == clinic.id
    changed = await client.post(
        f"/admin/users/{desk.id}",
        data={"role": "admin", "csrf_token": token},
        follow_redirects=False,
    )
    assert changed.status_code == 303 and changed.headers["location"] == "/admin/users"
    await session.refresh(desk)
    assert desk.role == "admin" and desk.clinic_id is None
    self_demote = await client.post(
        f"/admin/users/{admin.id}", data={"role": "patient", "csrf_token": token}
    )
    assert "cannot demote or deactivate themselves" in self_demote.text
    await session.refresh(admin)
    assert admin.role == "admin"
    events = (
        await session.execute(
            select(AuditEvent.action, AuditEvent.actor_user_id, AuditEvent.subject_id)
            .where(AuditEvent.action.like("account.%"))
            .order_by(AuditEvent.id)
        )
    ).all()
    assert [tuple(e) for e in events] == [
        ("account.created", admin.id, desk.id),
        ("account.role_changed", admin.id, desk.id),
    ]


async def test_password_reset_pages_end_to_end(client, redis, session):
    """The reset link goes out through the outbox (tests/integration/test_reset_email.py
    delivers it); never through the page."""
    await make_user(session)
    page = await client.get("/password-reset")
    token = csrf_from(page.text)
    for email in ("nobody@example.test", "ann@example.test"):
        sent = await client.post("/password-reset", data={"email": email, "csrf_token": token})
        assert sent.status_code == 200 and "/password-reset/" not in sent.text
    (ref,) = (await session.scalars(select(Notification.ref))).all()  # one account, one link
    reset_path = "/password-reset/" + (await redis.get(link_key(ref))).decode()
    form_page = await client.get(reset_path)
    assert form_page.status_code == 200
    token = csrf_from(form_page.text)
    weak = await client.post(reset_path, data={"new_password": "short", "csrf_token": token})
    assert "at least 10 characters" in weak.text  # the link is not spent by a typo
    done = await client.post(
        reset_path,
        data={"new_password": "a fresh long secret", "csrf_token": token},
        follow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"] == "/login"
    again = await client.post(
        reset_path, data={"new_password": "another fresh secret", "csrf_token": token}
    )
    assert "invalid or has expired" in again.text  # single use
    assert (await browser_login(client, password=PASSWORD)).url.path == "/login"
    signed_in = await browser_login(client, password="a fresh long secret")
    assert signed_in.status_code == 200 and signed_in.url.path == "/me/appointments"
    actions = (await session.scalars(select(AuditEvent.action).order_by(AuditEvent.id))).all()
    assert "password.reset_requested" in actions and "password.reset" in actions


INLINE_SCRIPT = re.compile(r"<script\b(?![^>]*\bsrc=)[^>]*>", re.I)
EVENT_HANDLER = re.compile(r"<[a-z][^>]*\s(on[a-z]+|hx-on[:\w-]*)\s*=", re.I)
STYLE_ATTRIBUTE = re.compile(r"<[a-z][^>]*\sstyle\s*=", re.I)


async def test_no_page_needs_inline_script_or_style(client, session, settings):
    """The CSP forbids inline scripts, handlers and style attributes: GET every page a
    role can open, as that role, and look for any."""
    from tests.integration.test_access_matrix import EXPECTED, PUBLIC

    world = await make_world(session, settings.secret_key, patients=1)
    desk = await load_principal(session, world.users["desk"].id)
    assert desk is not None
    export = await exports.create_export(
        session, desk, ReportScope(day_after_tomorrow(), day_after_tomorrow(), None), None
    )
    start = at(day_after_tomorrow(), 10).isoformat()
    leave_day = day_after_tomorrow() + dt.timedelta(days=7)
    leave = ScheduleException(  # planned leave: the admin's edit page opens it
        clinic_id=world.clinic_id,
        doctor_id=world.doctor_id,
        kind="leave",
        starts_at=at(leave_day, 9),
        ends_at=at(leave_day, 17),
    )
    session.add(leave)
    await session.commit()
    fill = {
        "{doctor_id:int}": str(world.doctor_id),
        "{exception_id:int}": str(leave.id),
        "{patient_id:int}": str(world.patients[0]),
        "{export_id:str}": export.id,
        "{token:str}": "a-token-nobody-has",
    }
    query = {"/doctors/{doctor_id:int}/book": {"start": start}, "/desk/patients": {"q": "pa"}}
    as_role = {"patient": "patient0", "doctor": "doctor", "front_desk": "desk", "admin": "admin"}
    not_pages = ("/api/", "/fhir/", "/health/", "/metrics", "/static/", "/schema", "/documents/")
    problems, seen = [], 0
    for (method, template), rule in EXPECTED.items():
        if method != "GET" or template.startswith(not_pages):
            continue
        path = template
        for name, value in fill.items():
            path = path.replace(name, value)
        callers = [None] if rule == PUBLIC else [as_role[r] for r in rule]
        if template == "/patients/{patient_id:int}/records":
            callers = ["patient0"]  # a doctor needs care or break-glass: test_records.py
        for caller in callers:
            headers = {"Accept": "text/html"} | (world.headers(caller) if caller else {})
            page = await client.get(path, params=query.get(template), headers=headers)
            if page.status_code != 200:
                problems.append(f"{caller} GET {path}: {page.status_code}")
                continue
            seen += 1
            for name, pattern in (
                ("inline script", INLINE_SCRIPT),
                ("event handler", EVENT_HANDLER),
                ("style attribute", STYLE_ATTRIBUTE),
            ):
                if found := pattern.search(page.text):
                    problems.append(f"{caller} GET {path}: {name} {found.group(0)[:80]!r}")
    assert problems == []
    assert seen >= 35  # really every page, each as every role that may open it


def test_plain_http_off_this_machine_is_warned_about():
    for origin in ("https://medbook.example", "http://127.0.0.1:8000", "http://localhost:8000"):
        assert insecure_origin_warning(origin) is None, origin
    warning = insecure_origin_warning("http://clinic.example:8000")
    assert warning is not None and "Secure" in warning and "https://" in warning
