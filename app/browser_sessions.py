"""Server-side browser sessions in Redis, behind an opaque cookie."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

from redis.asyncio import Redis

COOKIE_NAME = "medbook_session"
SESSION_TTL_SECONDS = 12 * 3600
_PREFIX = "session:"


@dataclass(frozen=True, slots=True)
class BrowserSession:
    session_id: str
    user_id: int
    csrf_token: str


async def create_session(redis: Redis, user_id: int) -> BrowserSession:
    """Start a session; the id goes in the cookie, the CSRF token into pages."""
    session = BrowserSession(secrets.token_urlsafe(32), user_id, secrets.token_urlsafe(32))
    payload = json.dumps({"user_id": user_id, "csrf": session.csrf_token})
    await redis.set(_PREFIX + session.session_id, payload, ex=SESSION_TTL_SECONDS)
    return session


async def get_session(redis: Redis, session_id: str) -> BrowserSession | None:
    """The live session with this id (its expiry renewed), or None."""
    raw = await redis.getex(_PREFIX + session_id, ex=SESSION_TTL_SECONDS)
    if raw is None:
        return None
    data = json.loads(raw)
    return BrowserSession(session_id, int(data["user_id"]), str(data["csrf"]))


async def end_session(redis: Redis, session_id: str) -> None:
    await redis.delete(_PREFIX + session_id)
