"""The staff second factor: enrolment, the code step at sign-in (pages and API), recovery
codes, replay, throttling, and an admin requiring or removing it."""

import asyncio
import dataclasses
import re
import time

import pyotp
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from app.access import totp
from app.access.browser_sessions import COOKIE_NAME
from app.errors import Forbidden
from app.web.asgi import create_app
from db.models import AuditEvent, User
from tests.integration.auth_helpers import PASSWORD, bearer, browser_login, csrf_from, make_user

EMAIL = "desk@example.test"
CREDS = {"email": EMAIL, "password": PASSWORD}


def codes_from(secret: str) -> tuple[str, str]:
    """The codes of this 30-s step and the next. The server accepts a step either side of
    its own, so both stay valid even if a step boundary passes while the test runs."""
    otp = pyotp.TOTP(secret)
    step = otp.timecode(time.time())
    return otp.generate_otp(step), otp.generate_otp(step + 1)


def secret_on(html: str) -> str:
    match = re.search(r'class="totp-secret">([A-Z2-7]+)<', html)
    assert match, "the page shows no TOTP secret"
    return match.group(1)


def recovery_codes_on(html: str) -> list[str]:
    return re.findall(r"<li><code>([a-z2-9]{5}-[a-z2-9]{5})</code></li>", html)


async def enrolled_staff(session, redis) -> tuple[User, list[str], str]:
    """A staff user enrolled through the domain: (user, recovery codes, the next code)."""
    user = await make_user(session, "admin", EMAIL)
    now, following = codes_from(await totp.candidate_secret(redis, user.id))
    codes = await totp.confirm_enrolment(session, redis, user=user, code=now)
    return user, codes, following


async def actions(session) -> list[str]:
    return list((await session.scalars(select(AuditEvent.action).order_by(AuditEvent.id))).all())


async def test_enrolment_page_then_sign_in_asks_for_the_code(client, session):
    await make_user(session, "admin", EMAIL)
    await browser_login(client, EMAIL)
    page = await client.get("/account/totp")
    assert page.status_code == 200
    secret = secret_on(page.text)
    assert f"otpauth://totp/medbook:{EMAIL.replace('@', '%40')}?secret={secret}" in page.text
    token = csrf_from(page.text)
    wrong = await client.post("/account/totp", data={"code": "000000", "csrf_token": token})
    assert "does not match" in wrong.text and secret_on(wrong.text) == secret  # same secret
    now, following = codes_from(secret)
    done = await client.post("/account/totp", data={"code": now, "csrf_token": token})
    codes = recovery_codes_on(done.text)
    assert len(codes) == 10 and len(set(codes)) == 10
    user = await session.scalar(select(User).where(User.email == EMAIL))
    await session.refresh(user)
    assert user.totp_secret == secret and len(user.totp_recovery_hashes) == 10
    assert not set(codes) & set(user.totp_recovery_hashes)  # stored hashed only
    assert "Recovery codes left: 10" in (await client.get("/account/totp")).text
    twice = await client.post("/account/totp", data={"code": following, "csrf_token": token})
    assert "already on" in twice.text

    client.cookies.clear()
    first = await browser_login(client, EMAIL)
    assert first.url.path == "/login" and "Authentication code" in first.text
    assert COOKIE_NAME not in client.cookies  # a right password alone is no session
    step = csrf_from(first.text)
    pending = re.search(r'name="pending" value="([^"]+)"', first.text).group(1)
    form = {"pending": pending, "next": "/me", "csrf_token": step}
    bad = await client.post("/login/totp", data={**form, "code": "123 456"})
    assert "the authentication code is wrong" in bad.text and COOKIE_NAME not in client.cookies
    replay = await client.post("/login/totp", data={**form, "code": now})
    assert "already used" in replay.text  # the enrolment's code cannot sign in as well
    signed_in = await client.post("/login/totp", data={**form, "code": following})
    assert signed_in.status_code == 200 and signed_in.url.path == "/me"
    assert (await client.get("/api/auth/me")).json()["email"] == EMAIL
    client.cookies.clear()
    form["csrf_token"] = csrf_from((await client.get("/login")).text)
    again = await client.post("/login/totp", data={**form, "code": following})
    assert "sign-in expired" in again.text  # the pending sign-in was spent too
    recorded = await actions(session)
    assert "totp.enrolled" in recorded and recorded[-1] == "login.succeeded"


async def test_the_token_api_needs_the_code_and_refuses_its_replay(client, session, redis):
    _, _, following = await enrolled_staff(session, redis)
    missing = await client.post("/api/auth/token", json=CREDS)
    assert missing.status_code == 401
    assert "code" in missing.json()["detail"] and "`totp`" in missing.json()["detail"]
    wrong_password = await client.post(
        "/api/auth/token", json={**CREDS, "password": "not the password", "totp": following}
    )
    assert wrong_password.json()["detail"] == "the email or password is wrong"
    ok = await client.post("/api/auth/token", json={**CREDS, "totp": following})
    assert ok.status_code == 200 and ok.json()["access_token"]
    replay = await client.post("/api/auth/token", json={**CREDS, "totp": following})
    assert replay.status_code == 401 and "already used" in replay.json()["detail"]


async def test_one_code_sent_twice_at_once_signs_in_once(client, session, redis):
    _, _, following = await enrolled_staff(session, redis)
    body = {**CREDS, "totp": following}
    answers = await asyncio.gather(*(client.post("/api/auth/token", json=body) for _ in range(3)))
    assert sorted(a.status_code for a in answers) == [200, 401, 401]


async def test_recovery_codes_work_once_and_are_audited(client, session, redis):
    user, codes, _ = await enrolled_staff(session, redis)
    spaced = codes[0].upper().replace("-", " ")  # typed loosely, still the code
    ok = await client.post("/api/auth/token", json={**CREDS, "totp": spaced})
    assert ok.status_code == 200
    again = await client.post("/api/auth/token", json={**CREDS, "totp": codes[0]})
    assert again.status_code == 401
    await session.refresh(user)
    assert len(user.totp_recovery_hashes) == 9
    used = await session.scalar(
        select(AuditEvent).where(AuditEvent.action == "totp.recovery_code_used")
    )
    assert used is not None and used.flagged and used.details == {"remaining": 9}


async def test_wrong_codes_are_throttled_per_user(settings, db, redis, session):
    user, _, following = await enrolled_staff(session, redis)
    strict = dataclasses.replace(settings, login_max_failures=3)
    async with AsyncTestClient(app=create_app(strict)) as client:
        for _ in range(3):
            wrong = await client.post("/api/auth/token", json={**CREDS, "totp": "999999"})
            assert wrong.status_code == 401
        locked = await client.post("/api/auth/token", json={**CREDS, "totp": following})
        assert locked.status_code == 429 and int(locked.headers["Retry-After"]) >= 1
    failed = (
        await session.scalars(select(AuditEvent).where(AuditEvent.action == "login.failed"))
    ).all()
    assert len(failed) == 3 and all(e.details["factor"] == "totp" for e in failed)
    assert all(e.subject_id == user.id for e in failed)


async def test_removing_ones_own_second_factor_needs_a_code(client, session, redis):
    _, codes, following = await enrolled_staff(session, redis)
    pair = await client.post("/api/auth/token", json={**CREDS, "totp": following})
    headers = {"Authorization": f"Bearer {pair.json()['access_token']}"}
    page = await client.get("/account/totp", headers=headers)
    assert "Switch it off" in page.text
    wrong = await client.post("/account/totp/remove", data={"code": "111111"}, headers=headers)
    assert "the authentication code is wrong" in wrong.text
    removed = await client.post("/account/totp/remove", data={"code": codes[1]}, headers=headers)
    assert "Your second factor is off" in removed.text
    assert (await client.post("/api/auth/token", json=CREDS)).status_code == 200
    assert "totp.removed" in await actions(session)


async def test_an_admin_requires_a_second_factor_and_removes_one(client, session, redis, settings):
    admin = await make_user(session, "admin", "root@example.test")
    desk = await make_user(session, "admin", EMAIL)
    as_admin = bearer(settings, admin)
    required = await client.patch(
        f"/api/users/{desk.id}", json={"totp_required": True}, headers=as_admin
    )
    assert required.status_code == 200 and required.json()["totp_required"] is True
    refused = await client.post("/api/auth/token", json=CREDS)
    assert refused.status_code == 401 and "set up a second factor" in refused.json()["detail"]

    # The browser sign-in leads through the set-up and ends signed in.
    setup = await browser_login(client, EMAIL)
    assert "requires a second factor" in setup.text and COOKIE_NAME not in client.cookies
    secret = secret_on(setup.text)
    pending = re.search(r'name="pending" value="([^"]+)"', setup.text).group(1)
    form = {"pending": pending, "next": "/", "csrf_token": csrf_from(setup.text)}
    wrong = await client.post("/login/totp-setup", data={**form, "code": "000000"})
    assert "does not match" in wrong.text and secret_on(wrong.text) == secret
    now, following = codes_from(secret)
    done = await client.post("/login/totp-setup", data={**form, "code": now})
    assert len(recovery_codes_on(done.text)) == 10
    assert (await client.get("/api/auth/me")).json()["email"] == EMAIL

    # Required: the user cannot switch it off; an admin can remove it (a lost phone).
    token = csrf_from((await client.get("/account/totp")).text)
    kept = await client.post("/account/totp/remove", data={"code": following, "csrf_token": token})
    assert "cannot be switched off" in kept.text
    patient = await make_user(session, "patient", "pat@example.test")
    not_staff = await client.patch(
        f"/api/users/{patient.id}", json={"totp_required": True}, headers=as_admin
    )
    assert not_staff.status_code == 422
    cleared = await client.patch(
        f"/api/users/{desk.id}",
        json={"remove_totp": True, "totp_required": False},
        headers=as_admin,
    )
    assert cleared.status_code == 200 and cleared.json()["totp_enabled"] is False
    client.cookies.clear()  # an API client, not the signed-in browser
    assert (await client.post("/api/auth/token", json=CREDS)).status_code == 200
    recorded = await actions(session)
    for action in ("totp.required", "totp.enrolled", "totp.removed"):
        assert action in recorded, action
    removal = await session.scalar(select(AuditEvent).where(AuditEvent.action == "totp.removed"))
    assert removal.actor_user_id == admin.id and removal.subject_id == desk.id


async def test_patients_have_no_second_factor(session, redis):
    patient = await make_user(session, "patient", "pat@example.test")
    now, _ = codes_from(await totp.candidate_secret(redis, patient.id))
    with pytest.raises(Forbidden):
        await totp.confirm_enrolment(session, redis, user=patient, code=now)
