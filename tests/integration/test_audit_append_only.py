"""audit_events is append-only in PostgreSQL itself (migration 0009): the app's own role
may insert and read, never update, delete or truncate; only a session that sets
`medbook.allow_audit_truncate = on` (the test harness) may empty it."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.access import audit

# The tests connect with the app's own DATABASE_URL, so these run as the app's role.
REFUSED = [
    "UPDATE audit_events SET action = 'rewritten'",
    "UPDATE audit_events SET flagged = false WHERE false",  # even one touching no row
    "DELETE FROM audit_events",
    "DELETE FROM audit_events WHERE id = -1",
    "TRUNCATE audit_events",
    "TRUNCATE users CASCADE",  # reaches audit_events through its foreign key
]


@pytest.fixture
async def one_event(session):
    await audit.record(session, actor_user_id=None, action=audit.LOGIN_FAILED, details={"n": 1})
    await session.commit()


@pytest.mark.parametrize("statement", REFUSED)
async def test_the_apps_role_cannot_change_or_remove_audit_events(db, one_event, statement):
    async with db.connect() as conn:
        with pytest.raises(DBAPIError, match="audit_events is append-only"):
            await conn.execute(text(statement))
        await conn.rollback()
        assert (await conn.execute(text("SELECT action FROM audit_events"))).scalars().all() == [
            audit.LOGIN_FAILED
        ]


async def test_inserting_still_works_and_only_the_harness_setting_allows_truncate(db, one_event):
    async with db.begin() as conn:
        await conn.execute(text("SET LOCAL medbook.allow_audit_truncate = off"))
        with pytest.raises(DBAPIError, match="append-only: TRUNCATE"):
            await conn.execute(text("TRUNCATE audit_events"))
    async with db.begin() as conn:
        await conn.execute(text("INSERT INTO audit_events (action) VALUES ('logout')"))
        await conn.execute(text("SET LOCAL medbook.allow_audit_truncate = on"))
        await conn.execute(text("TRUNCATE audit_events"))
        assert (await conn.execute(text("SELECT count(*) FROM audit_events"))).scalar() == 0
    async with db.connect() as conn:  # SET LOCAL ended with its transaction
        with pytest.raises(DBAPIError, match="append-only"):
            await conn.execute(text("TRUNCATE audit_events"))
