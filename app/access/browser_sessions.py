"""Server-side browser sessions in Redis, behind an opaque cookie."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

from redis.asyncio import Redis

COOKIE_NAME = "medbook_session"
SESSION_TTL_SECONDS = 12 * 3600
_PREFIX = "session:"
_USER_PREFIX = "user-sessions:"  # a set of a user's session ids, to end them all at once


@dataclass(frozen=True, slots=True)
class BrowserSession:
    session_id: str
    user_id: int
    csrf_token: str
    display_name: str = ""  # for the page header, so pages need no query to greet the user


async def create_session(redis: Redis, user_id: int, display_name: str = "") -> BrowserSession:
    """Start a session; the id goes in the cookie, the CSRF token into pages."""
    session = BrowserSession(
        secrets.token_urlsafe(32), user_id, secrets.token_urlsafe(32), display_name
    )
    payload = json.dumps({"user_id": user_id, "csrf": session.csrf_token, "name": display_name})
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(_PREFIX + session.session_id, payload, ex=SESSION_TTL_SECONDS)
        pipe.sadd(_USER_PREFIX + str(user_id), session.session_id)
        pipe.expire(_USER_PREFIX + str(user_id), SESSION_TTL_SECONDS)
        await pipe.execute()
    return session


async def get_session(redis: Redis, session_id: str) -> BrowserSession | None:
    """The live session with this id (its expiry renewed), or None."""
    raw = await redis.getex(_PREFIX + session_id, ex=SESSION_TTL_SECONDS)
    if raw is None:
        return None
    data = json.loads(raw)
    return BrowserSession(
        session_id, int(data["user_id"]), str(data["csrf"]), str(data.get("name", ""))
    )


async def end_session(redis: Redis, session_id: str) -> None:
    await redis.delete(_PREFIX + session_id)


async def end_user_sessions(redis: Redis, user_id: int, *, keep: str | None = None) -> int:
    """End every session of a user but `keep` (password change, deactivation); how many
    were still live."""
    key = _USER_PREFIX + str(user_id)
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in await redis.smembers(key)]  # type: ignore[misc]
    doomed = [i for i in ids if i != keep]
    if not doomed:
        return 0
    ended = int(await redis.delete(*(_PREFIX + i for i in doomed)))
    await redis.srem(key, *doomed)  # type: ignore[misc]
    return ended
