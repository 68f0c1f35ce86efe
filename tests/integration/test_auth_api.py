"""The JSON auth API: registration, tokens, refresh rotation, throttling, bad input."""

import dataclasses
import datetime as dt
import time

import jwt
import pytest
from argon2 import PasswordHasher
from litestar.testing import AsyncTestClient
from sqlalchemy import select, update

from app.access import accounts, rate_limit
from app.access.tokens import REFRESH_GRACE, issue_access_token
from app.web.asgi import create_app
from db.models import AuditEvent, RefreshToken, User
from tests.integration.auth_helpers import PASSWORD, bearer, make_user

CREDS = {"email": "ann@example.test", "password": PASSWORD}
GRACE_AGO = REFRESH_GRACE + dt.timedelta(seconds=1)  # a spent token's age just past the grace


async def test_register_then_token_then_me(client):
    body = {"email": "ann@example.test", "password": PASSWORD, "full_name": "Ann"}
    response = await client.post("/api/auth/register", json={**body, "date_of_birth": "1990-01-02"})
    assert response.status_code == 201
    registered = response.json()
    assert registered["role"] == "patient" and registered["patient_id"]
    again = await client.post("/api/auth/register", json=body)
    assert again.status_code == 409 and again.json()["detail"] == "this email is already registered"

    pair = (await client.post("/api/auth/token", json=CREDS)).json()
    assert pair["token_type"] == "bearer" and 0 < pair["expires_in"] <= 900
    me = await client.get(
        "/api/auth/me", headers={"Authorization": f"Bearer {pair['access_token']}"}
    )
    assert me.json() == {
        "id": registered["id"],
        "email": "ann@example.test",
        "role": "patient",
        "patient_id": registered["patient_id"],
    }


async def test_bad_input_is_a_4xx_that_says_what_is_wrong(client):
    cases = [
        (b"{not json", "application/json", 400),
        (b'{"email": 5, "password": "x", "full_name": "A"}', "application/json", 400),
        (b'{"email": "a@b.c", "password": "0123456789abc"}', "application/json", 400),
        (
            b'{"email": "a@b.c", "password": "0123456789abc", "full_name": "A", "role": "admin"}',
            "application/json",
            400,
        ),
        (
            b'{"email": "a@b.c", "password": "0123456789abc", "full_name": "A", '
            b'"date_of_birth": "yesterday"}',
            "application/json",
            400,
        ),
        # The schema's rules (length, an e-mail's shape): 400, like any other schema break.
        (b'{"email": "a@b.c", "password": "password", "full_name": "A"}', "application/json", 400),
        (
            b'{"email": "no-at-sign", "password": "0123456789abc", "full_name": "A"}',
            "application/json",
            400,
        ),
        (
            b'{"email": "a@b.c", "password": "0123456789abc", "full_name": " "}',
            "application/json",
            400,
        ),
        # A rule the schema cannot hold (the list of common passwords): 422.
        (
            b'{"email": "a@b.c", "password": "qwertyuiop", "full_name": "A"}',
            "application/json",
            422,
        ),
    ]
    for raw, content_type, status in cases:
        response = await client.post(
            "/api/auth/register", content=raw, headers={"Content-Type": content_type}
        )
        assert response.status_code == status, (raw, response.text)
        assert response.json()["detail"]
    unknown = await client.post(
        "/api/auth/register",
        json={"email": "a@b.c", "password": "0123456789abc", "full_name": "A", "role": "admin"},
    )
    assert "role" in unknown.text
    huge = await client.post(
        "/api/auth/token",
        content=b'{"email": "' + b"a" * 2_000_000 + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert huge.status_code == 413


async def test_expired_tampered_and_foreign_tokens_are_refused(client, session, settings):
    user = await make_user(session)
    good = issue_access_token(settings.secret_key, user_id=user.id, role=user.role)
    expired = issue_access_token(
        settings.secret_key, user_id=user.id, role=user.role, ttl_seconds=-5
    )
    foreign = issue_access_token("x" * 40, user_id=user.id, role="admin")
    head, payload, sig = good.split(".")
    tampered = f"{head}.{payload}.{sig[:-4]}AAAA"
    assert (
        await client.get("/api/auth/me", headers={"Authorization": f"Bearer {good}"})
    ).status_code == 200
    for token in (expired, foreign, tampered, "garbage"):
        response = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, token


async def test_refresh_rotates_and_reuse_revokes_the_family(client, session):
    await make_user(session)
    first = (await client.post("/api/auth/token", json=CREDS)).json()
    second = await client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    second = second.json()
    assert second["refresh_token"] != first["refresh_token"]
    auth = {"Authorization": f"Bearer {second['access_token']}"}
    assert (await client.get("/api/auth/me", headers=auth)).status_code == 200

    # The first token leaked and is replayed after the grace: refused, and the legitimate
    # holder's newer token dies with it, so the thief's copy is worth nothing either.
    await session.execute(update(RefreshToken).values(used_at=RefreshToken.used_at - GRACE_AGO))
    await session.commit()
    replay = await client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert replay.status_code == 401 and "already used" in replay.json()["detail"]
    newer = await client.post("/api/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert newer.status_code == 401
    rows = (await session.scalars(select(RefreshToken))).all()
    assert len(rows) == 2 and all(r.revoked_at is not None for r in rows)
    assert all(len(r.token_hash) == 64 and r.token_hash != first["refresh_token"] for r in rows)
    event = await session.scalar(
        select(AuditEvent).where(AuditEvent.action == "token.refresh_reused")
    )
    assert event is not None and event.flagged


async def test_revoked_and_unknown_refresh_tokens_are_refused(client, session):
    await make_user(session)
    pair = (await client.post("/api/auth/token", json=CREDS)).json()
    assert (
        await client.post("/api/auth/revoke", json={"refresh_token": pair["refresh_token"]})
    ).status_code == 204
    response = await client.post("/api/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert response.status_code == 401
    response = await client.post("/api/auth/refresh", json={"refresh_token": "made-up"})
    assert response.status_code == 401


async def test_api_logout_is_audited_like_the_browser_logout(client, session):
    user = await make_user(session)
    pair = (await client.post("/api/auth/token", json=CREDS)).json()
    body = {"refresh_token": pair["refresh_token"]}
    assert (await client.post("/api/auth/revoke", json=body)).status_code == 204
    assert (await client.post("/api/auth/revoke", json=body)).status_code == 204  # no new event
    assert (
        await client.post("/api/auth/revoke", json={"refresh_token": "made-up"})
    ).status_code == 204
    events = (await session.scalars(select(AuditEvent).where(AuditEvent.action == "logout"))).all()
    assert [(e.actor_user_id, e.details["via"]) for e in events] == [(user.id, "api")]
    family = await session.scalar(select(RefreshToken.family_id))
    assert events[0].details["family_id"] == family


async def test_access_token_carries_minimal_claims_and_lives_at_most_15_minutes(
    client, session, settings
):
    user = await make_user(session)
    pair = (await client.post("/api/auth/token", json=CREDS)).json()
    after = int(time.time())
    token = pair["access_token"]
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, settings.secret_key, algorithms=["HS256"])
    assert {"sub", "role", "exp", "jti"} <= set(claims) <= {"sub", "role", "exp", "jti", "iat"}
    assert claims["sub"] == str(user.id) and claims["role"] == "patient" and claims["jti"]
    assert after < claims["exp"] <= after + 15 * 60
    if "iat" in claims:
        assert claims["exp"] - claims["iat"] <= 15 * 60
    assert "ann@example.test" not in jwt.api_jws.base64url_decode(token.split(".")[1]).decode()


async def test_many_accounts_failing_from_one_address_slow_that_address(
    settings, db, redis, session
):
    """A guesser trying one password on many accounts never trips any account's lock;
    the address counter (ADDRESS_FACTOR x the account threshold) must stop it."""
    await make_user(session)
    strict = dataclasses.replace(settings, login_max_failures=2, rate_limit_auth_per_minute=0)
    threshold = 2 * rate_limit.ADDRESS_FACTOR
    async with AsyncTestClient(app=create_app(strict)) as client:
        for i in range(threshold):  # one failure per account: below each account's threshold
            wrong = {"email": f"victim{i}@example.test", "password": "Summer2024!x"}
            answer = await client.post("/api/auth/token", json=wrong)
            assert answer.status_code == 401, i
        fresh = await client.post(
            "/api/auth/token", json={"email": "victim-new@example.test", "password": "guess guess"}
        )
        assert fresh.status_code == 429 and int(fresh.headers["Retry-After"]) >= 1
        right = await client.post("/api/auth/token", json=CREDS)  # even a real login waits
        assert right.status_code == 429 and int(right.headers["Retry-After"]) >= 1
        browser = await client.get("/login")
        assert browser.status_code == 200  # the pages stay readable; only attempts wait
    locked = (
        await session.scalars(select(AuditEvent).where(AuditEvent.action == "login.locked"))
    ).all()
    assert len(locked) == 1 and locked[0].flagged
    # Each account saw one failure only: it was the address that was locked.
    assert await redis.ttl("login:lock:addr:testclient") > 0
    assert not await redis.keys("login:lock:acct:*")


async def test_login_never_tells_whether_an_email_exists(
    client, session, production_argon2, monkeypatch
):
    """A wrong password for a known email and any password for an unknown one get the same
    answer and cost the same work: one argon2 verification at production's parameters (an
    unknown email is checked against a dummy hash made with them), so neither the answer
    nor its time tells whether the account exists. The verifications are counted, not
    timed: a timing comparison passes or fails with the machine's load."""
    await make_user(session)
    verified: list[str] = []
    real_verify = PasswordHasher.verify

    def counted(self: PasswordHasher, password_hash: str, password: str) -> bool:
        verified.append(password_hash)  # on the hashing thread; list.append is atomic
        return real_verify(self, password_hash, password)

    monkeypatch.setattr(PasswordHasher, "verify", counted)
    answers, hashes = {}, {}
    for kind, email in (("known", CREDS["email"]), ("unknown", "nobody@example.test")):
        for _ in range(2):  # the second unknown email reuses the dummy hash made by the first
            verified.clear()
            response = await client.post(
                "/api/auth/token", json={"email": email, "password": "wrong password!"}
            )
            answers[kind] = (response.status_code, response.json())
            assert len(verified) == 1, (kind, verified)
            hashes[kind] = verified[0]
    assert (
        answers["known"]
        == answers["unknown"]
        == (401, {"status_code": 401, "detail": "the email or password is wrong"})
    )
    cost = f"m={production_argon2.argon2_memory_kib},t={production_argon2.argon2_time_cost},"
    cost += f"p={production_argon2.argon2_lanes}$"
    assert hashes["known"] != hashes["unknown"]  # the unknown email's is the dummy
    assert cost in hashes["known"] and cost in hashes["unknown"], hashes


async def test_repeated_failures_lock_the_account_with_retry_after(settings, db, redis, session):
    await make_user(session)
    strict = dataclasses.replace(settings, login_max_failures=3)
    async with AsyncTestClient(app=create_app(strict)) as client:
        for _ in range(2):
            wrong = await client.post(
                "/api/auth/token", json={**CREDS, "password": "nope nope nope"}
            )
            assert wrong.status_code == 401
        third = await client.post("/api/auth/token", json={**CREDS, "password": "nope nope nope"})
        assert third.status_code == 401  # this failure sets the lock
        locked = await client.post("/api/auth/token", json=CREDS)  # even the right password
        assert locked.status_code == 429 and int(locked.headers["Retry-After"]) >= 1
        other = await client.post(
            "/api/auth/token", json={"email": "someone@example.test", "password": "whatever12"}
        )
        assert other.status_code == 401  # other accounts from this address still get through
    actions = (await session.scalars(select(AuditEvent.action))).all()
    assert "login.locked" in actions


async def test_anonymous_auth_endpoints_are_rate_limited_per_address(settings, db, redis):
    tight = dataclasses.replace(settings, rate_limit_auth_per_minute=3)
    async with AsyncTestClient(app=create_app(tight)) as client:
        codes = [
            (await client.post("/api/auth/refresh", json={"refresh_token": "x"})).status_code
            for _ in range(4)
        ]
        assert codes == [401, 401, 401, 429]
        limited = await client.post("/api/auth/register", json={})
        assert limited.status_code == 429 and 1 <= int(limited.headers["Retry-After"]) <= 60


async def test_signed_in_users_are_rate_limited_per_user(settings, db, redis, session):
    ann = await make_user(session)
    bob = await make_user(session, email="bob@example.test")
    tight = dataclasses.replace(settings, rate_limit_user_per_minute=5)
    async with AsyncTestClient(app=create_app(tight)) as client:
        headers = bearer(settings, ann)
        answers = [await client.get("/api/auth/me", headers=headers) for _ in range(6)]
        assert [a.status_code for a in answers] == [200] * 5 + [429]
        assert 1 <= int(answers[-1].headers["Retry-After"]) <= 60
        assert answers[-1].json()["detail"] == "too many requests; slow down"
        assert (await client.get("/api/auth/me", headers=bearer(settings, bob))).status_code == 200


@pytest.mark.parametrize(
    "old",
    [
        PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1),  # weaker
        PasswordHasher(),  # argon2-cffi's defaults, what medbook used before
    ],
)
async def test_login_rehashes_passwords_made_with_other_parameters(
    client, session, old, production_argon2
):
    before = old.hash(PASSWORD)
    user = await accounts.create_user(
        session, role="patient", email="ann@example.test", password="", password_hash=before
    )
    assert (await client.post("/api/auth/token", json=CREDS)).status_code == 200
    await session.refresh(user)
    assert user.password_hash != before
    assert user.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert (await client.post("/api/auth/token", json=CREDS)).status_code == 200


async def test_password_change_revokes_refresh_tokens(client, session, settings):
    user = await make_user(session)
    pair = (await client.post("/api/auth/token", json=CREDS)).json()
    body = {"current_password": "wrong wrong wrong", "new_password": "another long secret"}
    response = await client.post("/api/auth/password", json=body, headers=bearer(settings, user))
    assert response.status_code == 401
    body["current_password"] = PASSWORD
    response = await client.post("/api/auth/password", json=body, headers=bearer(settings, user))
    assert response.status_code == 204
    response = await client.post("/api/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert response.status_code == 401
    new = {"email": CREDS["email"], "password": "another long secret"}
    assert (await client.post("/api/auth/token", json=new)).status_code == 200


async def test_password_reset_is_single_use_and_does_not_enumerate(client, session, redis):
    await make_user(session)
    for email in ("ann@example.test", "nobody@example.test"):
        response = await client.post("/api/auth/password-reset", json={"email": email})
        assert response.status_code == 202
    token = await accounts.start_password_reset(session, redis, email="ann@example.test")
    assert token and await redis.get("password-reset:" + token) is None  # stored hashed
    confirm = {"token": token, "new_password": "1234567890"}
    weak = await client.post("/api/auth/password-reset/confirm", json=confirm)
    assert weak.status_code == 422  # refused before the token is spent
    confirm["new_password"] = "a fresh long secret"
    ok = await client.post("/api/auth/password-reset/confirm", json=confirm)
    assert ok.status_code == 204
    again = await client.post("/api/auth/password-reset/confirm", json=confirm)
    assert again.status_code == 422
    new = {"email": CREDS["email"], "password": "a fresh long secret"}
    assert (await client.post("/api/auth/token", json=new)).status_code == 200


async def test_deactivated_users_lose_access_at_once(client, session, settings, redis):
    admin = await make_user(session, role="admin", email="root@example.test")
    user = await make_user(session)
    pair = (await client.post("/api/auth/token", json=CREDS)).json()
    auth = {"Authorization": f"Bearer {pair['access_token']}"}
    assert (await client.get("/api/auth/me", headers=auth)).status_code == 200
    response = await client.patch(
        f"/api/users/{user.id}", json={"is_active": False}, headers=bearer(settings, admin)
    )
    assert response.status_code == 200 and response.json()["is_active"] is False
    assert (await client.get("/api/auth/me", headers=auth)).status_code == 401
    refresh = await client.post("/api/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert refresh.status_code == 401
    login = await client.post("/api/auth/token", json=CREDS)
    assert login.status_code == 401 and login.json()["detail"] == "the email or password is wrong"
    assert (await session.get(User, user.id)) is not None


async def test_giving_a_doctor_a_second_login_is_a_conflict_not_a_500(client, session, settings):
    """Found by the fuzz run: making an account the login of a doctor who already has one
    broke uq_users_doctor_id in an early flush (a 500). It is a 409, and nothing changes."""
    from tests.integration.world import make_world

    world = await make_world(session, settings.secret_key, patients=1)
    desk = world.users["desk"]
    answer = await client.patch(
        f"/api/users/{desk.id}",
        json={"role": "doctor", "doctor_id": world.doctor_id},
        headers=world.headers("admin"),
    )
    assert answer.status_code == 409, answer.text
    assert answer.json()["detail"] == "that doctor already has a login"
    row = await session.get(User, desk.id, populate_existing=True)
    assert (row.role, row.doctor_id, row.clinic_id) == ("front_desk", None, world.clinic_id)
