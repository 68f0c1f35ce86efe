"""Refresh-token grace: a client's parallel or retried refreshes with one token all get a
pair of the same family; a replay after the grace, or after the family moved on, is still
a reuse that revokes the family (docs/security.md, "Sessions, tokens, CSRF")."""

import asyncio
import datetime as dt

from sqlalchemy import func, select, update

from app.access.tokens import REFRESH_GRACE
from db.models import AuditEvent, RefreshToken
from tests.integration.auth_helpers import PASSWORD, make_user

CREDS = {"email": "ann@example.test", "password": PASSWORD}
PAST_GRACE = REFRESH_GRACE + dt.timedelta(seconds=1)


async def _refresh(client, token):
    return await client.post("/api/auth/refresh", json={"refresh_token": token})


async def _age_spent_tokens(session):
    """Move every spent token's spending back past the grace (instead of waiting for it)."""
    await session.execute(update(RefreshToken).values(used_at=RefreshToken.used_at - PAST_GRACE))
    await session.commit()


async def _reuse_events(session) -> int:
    return await session.scalar(
        select(func.count())
        .select_from(AuditEvent)
        .where(AuditEvent.action == "token.refresh_reused")
    )


async def test_parallel_refreshes_with_one_token_all_succeed(client, session):
    await make_user(session)
    first = (await client.post("/api/auth/token", json=CREDS)).json()["refresh_token"]
    # Five requests at once, each in its own database session and transaction.
    answers = await asyncio.gather(*(_refresh(client, first) for _ in range(5)))
    assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
    pairs = [a.json() for a in answers]
    assert len({p["refresh_token"] for p in pairs}) == 5
    for pair in pairs:
        me = await client.get(
            "/api/auth/me", headers={"Authorization": f"Bearer {pair['access_token']}"}
        )
        assert me.status_code == 200
    families = set((await session.scalars(select(RefreshToken.family_id))).all())
    assert len(families) == 1  # every new token belongs to the first one's family
    assert (
        await session.scalar(
            select(func.count())
            .select_from(RefreshToken)
            .where(RefreshToken.revoked_at.is_not(None))
        )
        == 0
    )
    assert await _reuse_events(session) == 0

    # The client keeps whichever answer came last and goes on with it.
    kept = pairs[-1]["refresh_token"]
    onward = await _refresh(client, kept)
    assert onward.status_code == 200

    # Replaying the first token after the grace is still a reuse: the family dies.
    await _age_spent_tokens(session)
    replay = await _refresh(client, first)
    assert replay.status_code == 401 and "already used" in replay.json()["detail"]
    assert (await _refresh(client, onward.json()["refresh_token"])).status_code == 401
    assert await _reuse_events(session) == 1


async def test_a_retry_within_the_grace_gets_a_pair_of_the_same_family(client, session):
    await make_user(session)
    first = (await client.post("/api/auth/token", json=CREDS)).json()["refresh_token"]
    one = await _refresh(client, first)
    retry = await _refresh(client, first)  # the first answer was lost: an honest retry
    assert one.status_code == retry.status_code == 200
    assert one.json()["refresh_token"] != retry.json()["refresh_token"]
    assert (await _refresh(client, retry.json()["refresh_token"])).status_code == 200
    assert await _reuse_events(session) == 0


async def test_within_the_grace_a_token_whose_successor_was_used_is_a_reuse(client, session):
    """Only the immediately previous token has the grace: once the client moved on with its
    successor, the old token is a leak even seconds later."""
    await make_user(session)
    first = (await client.post("/api/auth/token", json=CREDS)).json()["refresh_token"]
    second = (await _refresh(client, first)).json()["refresh_token"]
    third = await _refresh(client, second)
    assert third.status_code == 200
    replay = await _refresh(client, first)
    assert replay.status_code == 401 and "already used" in replay.json()["detail"]
    assert (await _refresh(client, third.json()["refresh_token"])).status_code == 401
    assert await _reuse_events(session) == 1


async def test_a_successor_the_client_did_not_keep_is_spent_by_the_one_it_kept(client, session):
    """Two parallel refreshes fork the family; going on with one branch spends the other,
    so the family never keeps two live branches (a thief's branch would hide there)."""
    await make_user(session)
    first = (await client.post("/api/auth/token", json=CREDS)).json()["refresh_token"]
    a, b = await asyncio.gather(_refresh(client, first), _refresh(client, first))
    assert a.status_code == b.status_code == 200
    kept, dropped = a.json()["refresh_token"], b.json()["refresh_token"]
    assert (await _refresh(client, kept)).status_code == 200
    await _age_spent_tokens(session)
    late = await _refresh(client, dropped)
    assert late.status_code == 401 and "already used" in late.json()["detail"]
    assert await _reuse_events(session) == 1
    live = await session.scalar(
        select(func.count()).select_from(RefreshToken).where(RefreshToken.revoked_at.is_(None))
    )
    assert live == 0
