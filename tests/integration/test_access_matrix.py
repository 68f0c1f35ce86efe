"""The access matrix (docs/security.md): every route by every role, with and without
credentials, plus the "whose data" cells of the account and audit routes.

Role cells are derived from the routes themselves, so a new route is covered the day it
is added: anonymous callers get 401 unless the route is public; a role the guard does not
name gets 403 before any body is read; an admitted role never gets 401/403 for reaching
the route (it may get 400/404/422 for the made-up ids and empty bodies sent here), and
nothing answers 5xx.
"""

import dataclasses
import re

from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from app import audit
from app.asgi import create_app
from app.guards import allow
from db.models import Clinic, Doctor
from tests.integration.auth_helpers import bearer, make_user

ROLES = ("patient", "doctor", "front_desk", "admin")
SKIP_PREFIXES = ("/schema", "/static")
_ALLOW_CODE = allow().__code__


def role_guard(handler) -> tuple[str, ...] | None:
    """The roles the handler admits ((): any signed-in user), or None for public routes."""
    for guard in handler.resolve_guards():
        guard = getattr(guard, "func", guard)  # Litestar wraps guards in AsyncCallable
        if getattr(guard, "__code__", None) is _ALLOW_CODE:
            return guard.roles
    assert handler.opt.get("public") is True, f"{handler} has neither allow() nor PUBLIC"
    return None


def csrf_from_headers(html: str) -> str:
    match = re.search(r'"X-CSRF-Token": "([^"]+)"', html)
    assert match
    return match.group(1)


def concrete(path: str) -> str:
    """Fill path parameters with ids that exist for nobody."""
    path = re.sub(r"\{[^}:]+:int\}", "987654", path)
    return re.sub(r"\{[^}]+\}", "nothing-here", path)


def cells(app):
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or route.path.startswith(SKIP_PREFIXES):
            continue
        for handler in route.route_handlers:
            methods = sorted(handler.http_methods - {"OPTIONS", "HEAD"})
            if methods:  # Litestar's automatic OPTIONS answer has no guard and no data
                roles = role_guard(handler)
                for method in methods:
                    yield method, concrete(route.path), roles


async def test_every_route_for_every_role(settings, db, redis, session):
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
        for method, path, roles in cells(app):
            body = {} if method in ("POST", "PUT", "PATCH") else None
            # Anonymous form posts need the anonymous CSRF token, as a browser would have.
            client.cookies.clear()
            csrf = csrf_from_headers((await client.get("/")).text)
            anonymous = await client.request(
                method, path, json=body, headers={"X-CSRF-Token": csrf}
            )
            client.cookies.clear()
            if roles is not None and anonymous.status_code != 401:
                problems.append(f"anonymous {method} {path}: {anonymous.status_code}")
            if roles is None and anonymous.status_code in (401, 403):
                problems.append(f"public {method} {path} refused: {anonymous.status_code}")
            if anonymous.status_code >= 500:
                problems.append(f"anonymous {method} {path}: {anonymous.status_code}")
            for role, user in users.items():
                response = await client.request(
                    method, path, json=body, headers=bearer(settings, user)
                )
                status = response.status_code
                checked += 1
                admitted = roles is None or not roles or role in roles
                if status >= 500:
                    problems.append(f"{role} {method} {path}: {status} {response.text[:200]}")
                elif admitted and status in (401, 403) and roles is not None:
                    problems.append(f"{role} refused by {method} {path}: {status} {response.text}")
                elif not admitted and status != 403:
                    problems.append(f"{role} admitted to {method} {path}: {status}")
    assert problems == [], "\n".join(problems)
    assert checked > 4 * 30  # the matrix really ran over the app's routes


async def test_role_guards_match_the_documented_matrix(settings):
    """The guard of each account/audit route is the one docs/security.md promises."""
    expected = {
        ("GET", "/api/auth/me"): (),
        ("POST", "/api/auth/password"): (),
        ("GET", "/api/users"): ("admin",),
        ("POST", "/api/users"): ("admin",),
        ("PATCH", "/api/users/987654"): ("admin",),
        ("GET", "/admin/users"): ("admin",),
        ("POST", "/admin/users"): ("admin",),
        ("GET", "/admin/audit"): ("admin",),
        ("GET", "/me/access-log"): ("patient",),
        ("GET", "/me"): (),
        ("POST", "/logout"): (),
        ("POST", "/api/auth/register"): None,
        ("POST", "/api/auth/token"): None,
        ("POST", "/api/auth/refresh"): None,
        ("POST", "/login"): None,
        ("POST", "/register"): None,
    }
    found = {(m, p): r for m, p, r in cells(create_app(settings))}
    assert {k: found.get(k, "missing") for k in expected} == expected


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
