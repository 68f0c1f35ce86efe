"""The usual refresh (an unspent token of an active user) is one statement (issue 17: the
ORM's unit of work was seven round trips); every other case still takes the careful path
(tests/integration/test_refresh_grace.py, test_auth_api.py)."""

from sqlalchemy import event, func, select, update

from app.services import Services
from db.models import RefreshToken, User
from tests.integration.auth_helpers import PASSWORD, make_user

CREDS = {"email": "ann@example.test", "password": PASSWORD}


def statements(client):
    """The statements the app runs on its engine while the block runs."""
    seen: list[str] = []

    def before(conn, cursor, statement, *args):
        seen.append(statement)

    engine = Services.of(client.app).engine.sync_engine
    event.listen(engine, "before_cursor_execute", before)
    return seen, lambda: event.remove(engine, "before_cursor_execute", before)


async def test_a_usual_refresh_is_one_statement_and_rotates(client, session):
    await make_user(session)
    first = (await client.post("/api/auth/token", json=CREDS)).json()["refresh_token"]
    seen, stop = statements(client)
    try:
        answer = await client.post("/api/auth/refresh", json={"refresh_token": first})
    finally:
        stop()
    assert answer.status_code == 200, answer.text
    assert len(seen) == 1, seen
    second = answer.json()["refresh_token"]
    rows = (await session.scalars(select(RefreshToken).order_by(RefreshToken.id))).all()
    assert [r.used_at is not None for r in rows] == [True, False]
    assert rows[0].family_id == rows[1].family_id and rows[1].expires_at > rows[0].used_at
    me = await client.get(
        "/api/auth/me", headers={"Authorization": f"Bearer {answer.json()['access_token']}"}
    )
    assert me.status_code == 200
    # The successor rotates the same way.
    again = await client.post("/api/auth/refresh", json={"refresh_token": second})
    assert again.status_code == 200, again.text


async def test_an_expired_token_or_an_inactive_user_is_refused_and_nothing_is_written(
    client, session
):
    user = await make_user(session)
    first = (await client.post("/api/auth/token", json=CREDS)).json()["refresh_token"]
    await session.execute(update(RefreshToken).values(expires_at=func.now()))
    await session.commit()
    expired = await client.post("/api/auth/refresh", json={"refresh_token": first})
    assert expired.status_code == 401
    await session.execute(
        update(RefreshToken).values(expires_at=func.now() + func.make_interval(0, 0, 0, 1))
    )
    await session.execute(update(User).where(User.id == user.id).values(is_active=False))
    await session.commit()
    inactive = await client.post("/api/auth/refresh", json={"refresh_token": first})
    assert inactive.status_code == 401
    rows = (await session.scalars(select(RefreshToken))).all()
    assert len(rows) == 1 and rows[0].used_at is None
