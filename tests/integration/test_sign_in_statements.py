"""An API sign-in of the usual account is two statements: the account read by its email,
then its audit event and refresh token written together (issue 17: the ORM's three
transactions were BEGIN, a read, COMMIT, then two of BEGIN, an insert, COMMIT). A failure
and an account with a second factor keep their audit trail (test_auth_api.py,
test_totp.py); these tests check what the one statement writes and that it is the only
write."""

from sqlalchemy import select, update

from app.access import audit
from app.services import Services
from db.models import AuditEvent, RefreshToken, User
from tests.integration.auth_helpers import PASSWORD, make_user
from tests.integration.statements import watch

CREDS = {"email": "ann@example.test", "password": PASSWORD}


async def sign_in_watched(client, body):
    seen = watch(Services.of(client.app).engine)
    try:
        answer = await client.post("/api/auth/token", json=body)
        await seen.settled()
    finally:  # the app outlives the test (conftest.py's SharedApp)
        seen.stop()
    return answer, [q for q, _ in seen if not q.strip().upper().startswith(("BEGIN", "COMMIT"))]


async def test_a_usual_sign_in_is_one_read_and_one_write(client, session):
    user = await make_user(session)
    answer, sent = await sign_in_watched(client, {**CREDS, "email": " Ann@Example.test "})
    assert answer.status_code == 200, answer.text
    assert len(sent) == 2, sent
    assert "FROM users" in sent[0] and "INSERT INTO audit_events" in sent[1]
    events = (await session.scalars(select(AuditEvent).order_by(AuditEvent.id))).all()
    assert [(e.action, e.actor_user_id, e.subject_type, e.subject_id) for e in events] == [
        (audit.LOGIN_SUCCEEDED, user.id, "user", user.id)
    ]
    assert events[0].flagged is False and events[0].details == {}
    tokens = (await session.scalars(select(RefreshToken))).all()
    assert len(tokens) == 1 and tokens[0].user_id == user.id and tokens[0].used_at is None
    # The pair works: the access token authenticates, the refresh token rotates.
    me = await client.get(
        "/api/auth/me", headers={"Authorization": f"Bearer {answer.json()['access_token']}"}
    )
    assert me.status_code == 200 and me.json()["id"] == user.id
    refreshed = await client.post(
        "/api/auth/refresh", json={"refresh_token": answer.json()["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text


async def test_two_sign_ins_start_two_families(client, session):
    await make_user(session)
    for _ in range(2):
        assert (await client.post("/api/auth/token", json=CREDS)).status_code == 200
    tokens = (await session.scalars(select(RefreshToken))).all()
    assert len({t.family_id for t in tokens}) == 2 and len({t.token_hash for t in tokens}) == 2


async def test_a_wrong_password_and_an_unknown_email_write_no_token(client, session):
    user = await make_user(session)
    wrong = await client.post("/api/auth/token", json={**CREDS, "password": "not " + PASSWORD})
    unknown = await client.post("/api/auth/token", json={**CREDS, "email": "nobody@example.test"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["detail"] == unknown.json()["detail"]
    events = (await session.scalars(select(AuditEvent).order_by(AuditEvent.id))).all()
    assert [(e.action, e.actor_user_id) for e in events] == [
        (audit.LOGIN_FAILED, user.id),
        (audit.LOGIN_FAILED, None),
    ]
    assert (await session.scalars(select(RefreshToken))).all() == []


async def test_a_deactivated_account_is_refused_like_a_wrong_password(client, session):
    user = await make_user(session)
    await session.execute(update(User).where(User.id == user.id).values(is_active=False))
    await session.commit()
    answer = await client.post("/api/auth/token", json=CREDS)
    assert answer.status_code == 401
    events = (await session.scalars(select(AuditEvent))).all()
    assert [(e.action, e.actor_user_id) for e in events] == [(audit.LOGIN_FAILED, user.id)]
    assert (await session.scalars(select(RefreshToken))).all() == []


async def test_an_old_hash_takes_the_careful_path_and_is_upgraded(client, session):
    from argon2 import PasswordHasher

    user = await make_user(session)
    # Not the tests' parameters (conftest.py CHEAP_ARGON2: 1 pass, 8 KiB): a rehash is due.
    old = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1).hash(PASSWORD)
    await session.execute(update(User).where(User.id == user.id).values(password_hash=old))
    await session.commit()
    answer = await client.post("/api/auth/token", json=CREDS)
    assert answer.status_code == 200, answer.text
    user_id = user.id
    session.expire_all()
    stored = await session.scalar(select(User.password_hash).where(User.id == user_id))
    assert stored != old and stored.startswith("$argon2id$")
    events = (await session.scalars(select(AuditEvent))).all()
    assert [e.action for e in events] == [audit.LOGIN_SUCCEEDED]
    assert len((await session.scalars(select(RefreshToken))).all()) == 1


async def test_the_longer_of_the_account_and_address_locks_decides(client, session, redis):
    """Both locks are read in one round trip (`rate_limit._lock_remaining`); whichever is
    longer is the Retry-After, and a right password waits it out too."""
    from app.access.rate_limit import _account_key

    await make_user(session)
    await redis.set(f"login:lock:acct:{_account_key(CREDS['email'])}", 1, ex=40)
    await redis.set("login:lock:addr:testclient", 1, ex=400)
    refused = await client.post("/api/auth/token", json=CREDS)
    assert refused.status_code == 429 and 300 < int(refused.headers["Retry-After"]) <= 400
    await redis.delete("login:lock:addr:testclient")
    refused = await client.post("/api/auth/token", json=CREDS)
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 40
    await redis.delete(f"login:lock:acct:{_account_key(CREDS['email'])}")
    assert (await client.post("/api/auth/token", json=CREDS)).status_code == 200
