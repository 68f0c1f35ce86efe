"""Password reset and change end every other way in: the account's other reset links, its
browser sessions and its refresh-token families; and the staff password policy."""

import pytest
from sqlalchemy import select

from app.access import accounts
from app.access.passwords import password_problem
from db.models import AuditEvent, User
from tests.integration.auth_helpers import PASSWORD, bearer, browser_login, make_user
from tests.integration.test_cli import medbook

CREDS = {"email": "ann@example.test", "password": PASSWORD}
EXPIRED = "this reset link is invalid or has expired; ask for a new one"


async def test_a_completed_reset_voids_earlier_links_and_signs_out_everywhere(
    client, another_client, redis, session
):
    user = await make_user(session)
    laptop, api = client, another_client
    await browser_login(laptop)
    assert (await laptop.get("/api/auth/me")).status_code == 200
    pair = (await api.post("/api/auth/token", json=CREDS)).json()
    earlier = await accounts.start_password_reset(session, redis, email=CREDS["email"])
    later = await accounts.start_password_reset(session, redis, email=CREDS["email"])
    assert earlier and later and earlier != later

    body = {"token": later, "new_password": "a fresh long secret"}
    assert (await api.post("/api/auth/password-reset/confirm", json=body)).status_code == 204
    voided = await api.post(
        "/api/auth/password-reset/confirm",
        json={"token": earlier, "new_password": "yet another long secret"},
    )
    assert voided.status_code == 422 and voided.json()["detail"] == EXPIRED

    assert (await laptop.get("/api/auth/me")).status_code == 401
    refreshed = await api.post("/api/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert refreshed.status_code == 401
    access = {"Authorization": f"Bearer {pair['access_token']}"}
    assert (await api.get("/api/auth/me", headers=access)).status_code == 200  # 15 min max
    new = {"email": CREDS["email"], "password": "a fresh long secret"}
    assert (await api.post("/api/auth/token", json=new)).status_code == 200
    revoked = await session.scalar(
        select(AuditEvent).where(AuditEvent.action == "sessions.revoked")
    )
    assert revoked is not None and revoked.subject_id == user.id
    assert revoked.details == {
        "reason": "password.reset",
        "browser_sessions": 1,
        "token_families": 1,
    }
    done = await session.scalar(select(AuditEvent).where(AuditEvent.action == "password.reset"))
    assert done is not None and done.subject_id == user.id


async def test_the_reset_page_refuses_a_voided_link_clearly(client, redis, session):
    await make_user(session)
    earlier = await accounts.start_password_reset(session, redis, email=CREDS["email"])
    later = await accounts.start_password_reset(session, redis, email=CREDS["email"])
    await accounts.finish_password_reset(
        session, redis, token=later, new_password="a fresh long secret"
    )
    page = await client.get(f"/password-reset/{earlier}")
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    answer = await client.post(
        f"/password-reset/{earlier}",
        data={"new_password": "another fresh secret", "csrf_token": token},
    )
    assert "invalid or has expired" in answer.text
    assert (await browser_login(client, password="another fresh secret")).url.path == "/login"


async def test_a_password_change_voids_outstanding_reset_links(client, session, redis, settings):
    user = await make_user(session)
    link = await accounts.start_password_reset(session, redis, email=CREDS["email"])
    change = {"current_password": PASSWORD, "new_password": "brand new long secret"}
    changed = await client.post("/api/auth/password", json=change, headers=bearer(settings, user))
    assert changed.status_code == 204
    late = await client.post(
        "/api/auth/password-reset/confirm",
        json={"token": link, "new_password": "a thief's new secret"},
    )
    assert late.status_code == 422 and late.json()["detail"] == EXPIRED
    event = await session.scalar(select(AuditEvent).where(AuditEvent.action == "sessions.revoked"))
    assert event is not None and event.details["reason"] == "password.changed"


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("short pass1", "at least 12 characters"),  # 11: a patient's policy would take it
        ("password1234", "common one with digits or symbols added"),
        ("Sunshine-2026!", "common one with digits or symbols added"),
        ("DrMeier-2026-spring", "must not contain the name part of the email"),
        ("correct horse battery", None),
    ],
)
def test_staff_password_policy(password, problem):
    for role in ("doctor", "front_desk", "admin"):
        found = password_problem(password, role=role, email="drmeier@clinic.test")
        assert (found is None) if problem is None else (problem in found), (role, found)


def test_patients_keep_the_ten_character_policy():
    assert password_problem("ann-passwd", role="patient", email="ann@example.test") is None
    assert "at least 10" in password_problem("ann-pass", role="patient", email="ann@x.test")


async def test_staff_policy_on_the_admin_pages_and_api(client, session, settings):
    admin = await make_user(session, "admin", "root@example.test")
    headers = bearer(settings, admin)
    weak = {"role": "admin", "email": "second@example.test", "password": "eleven char"}
    refused = await client.post("/api/users", json=weak, headers=headers)
    assert refused.status_code == 400  # the schema's staff length
    assert refused.json()["extra"] == [
        {"message": "Expected `str` of length >= 12", "key": "password", "source": "body"}
    ]
    named = {**weak, "password": "Second-admin-2026!"}
    refused = await client.post("/api/users", json=named, headers=headers)
    assert refused.status_code == 422 and "name part of the email" in refused.json()["detail"]
    created = await client.post(
        "/api/users", json={**weak, "password": "a long staff secret"}, headers=headers
    )
    assert created.status_code == 201
    await browser_login(client, "root@example.test")
    page = await client.get("/admin/users")
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    form = {"role": "admin", "email": "third@example.test", "password": "eleven char"}
    answer = await client.post("/admin/users", data={**form, "csrf_token": token})
    assert "at least 12 characters" in answer.text
    assert await session.scalar(select(User).where(User.email == "third@example.test")) is None


async def test_staff_policy_on_reset_and_change(client, session, redis, settings):
    desk = await make_user(session, "admin", "desk@example.test")
    link = await accounts.start_password_reset(session, redis, email="desk@example.test")
    short = await client.post(
        "/api/auth/password-reset/confirm", json={"token": link, "new_password": "eleven char"}
    )
    assert short.status_code == 422 and "at least 12" in short.json()["detail"]
    named = await client.post(
        "/api/auth/password-reset/confirm",
        json={"token": link, "new_password": "the-desk-password-2026"},
    )
    assert named.status_code == 422 and "name part" in named.json()["detail"]
    good = await client.post(
        "/api/auth/password-reset/confirm",
        json={"token": link, "new_password": "a long fresh secret"},
    )
    assert good.status_code == 204  # the refusals did not spend the link
    change = {"current_password": "a long fresh secret", "new_password": "eleven char"}
    refused = await client.post("/api/auth/password", json=change, headers=bearer(settings, desk))
    assert refused.status_code == 422 and "at least 12" in refused.json()["detail"]


def test_medbook_users_create_applies_the_staff_policy(db):
    args = ["users", "create", "--role", "admin", "--email", "boss@example.test", "--password"]
    weak = medbook(*args, "eleven char")
    assert weak.returncode != 0 and "at least 12 characters" in weak.stderr
    named = medbook(*args, "the boss is back 2026")
    assert named.returncode != 0 and "name part of the email" in named.stderr
    ok = medbook(*args, "a long staff secret")
    assert ok.returncode == 0, ok.stderr
