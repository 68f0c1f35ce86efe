"""API tokens: short-lived HS256 access JWTs with minimal claims, and rotating refresh
tokens stored server-side as hashes (review M-4, S-1)."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.access import audit
from app.errors import DomainError
from db.models import RefreshToken, User
from db.session import driver_execute

ALGORITHM = "HS256"
ACCESS_TTL_SECONDS = 15 * 60


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: int
    role: str
    expires_at: int
    token_id: str


def issue_access_token(
    secret: str, *, user_id: int, role: str, ttl_seconds: int = ACCESS_TTL_SECONDS
) -> str:
    """A signed token naming only the subject, role, expiry and a token id (~150 bytes)."""
    claims = {
        "sub": str(user_id),
        "role": role,
        "exp": int(time.time()) + ttl_seconds,
        "jti": secrets.token_urlsafe(8),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_access_token(secret: str, token: str) -> AccessClaims | None:
    """The token's claims when its signature and expiry hold, else None.

    A token whose signature this process has checked before is not checked again: its
    claims are remembered (keyed by the secret and the token's exact text, so a changed
    character or another secret is a new entry) and only its expiry is re-read. Verifying
    an HS256 JWT with PyJWT was the largest single cost of a cached API request
    (bench/README.md), and a client sends the same token with every request for up to 15
    minutes. Only valid tokens are
    remembered, at most `VERIFIED_MAX` (~3 MB), forgotten all at once when full.
    """
    key = (secret, token)
    claims = _verified.get(key)
    if claims is None:
        claims = _verify(secret, token)
        if claims is None:
            return None
        if len(_verified) >= VERIFIED_MAX:
            _verified.clear()
        _verified[key] = claims
    return claims if claims.expires_at > time.time() else None


VERIFIED_MAX = 10_000
_verified: dict[tuple[str, str], AccessClaims] = {}


def _verify(secret: str, token: str) -> AccessClaims | None:
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp", "role"]}
        )
        return AccessClaims(
            int(claims["sub"]), str(claims["role"]), int(claims["exp"]), str(claims.get("jti", ""))
        )
    except (jwt.PyJWTError, ValueError):
        return None


# Refresh tokens: opaque, random, kept server-side as sha256 only, rotated on every use.

REFRESH_TTL = dt.timedelta(days=14)
# A client that refreshes twice at once (two tabs, a retry after a lost answer) presents
# the same token twice; within this grace the second gets a pair too (docs/security.md).
REFRESH_GRACE = dt.timedelta(seconds=20)


class InvalidRefreshToken(DomainError):
    status_code = 401


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def issue_refresh_token(
    session: AsyncSession, user_id: int, *, family_id: str | None = None
) -> str:
    """A new refresh token for the user (a new family unless one is given); caller commits."""
    token = secrets.token_urlsafe(32)
    session.add(
        RefreshToken(
            user_id=user_id,
            family_id=family_id or secrets.token_hex(16),
            token_hash=_digest(token),
            expires_at=dt.datetime.now(dt.UTC) + REFRESH_TTL,
        )
    )
    await session.flush()
    return token


# A sign-in's audit event and its refresh token (a new family) in one statement, its own
# transaction: both or neither (`accounts.sign_in_for_tokens`, the usual account).
_SIGNED_IN_SQL = f"""
WITH signed_in AS (
  INSERT INTO audit_events (actor_user_id, action, subject_type, subject_id, client_addr)
  VALUES ($1, '{audit.LOGIN_SUCCEEDED}', 'user', $1, $2::text::inet)
)
INSERT INTO refresh_tokens (user_id, family_id, token_hash, expires_at)
VALUES ($1, $3, $4, $5)
"""


async def signed_in(engine: AsyncEngine, user_id: int, client_addr: str | None) -> str:
    """Audit a successful sign-in and issue its refresh token (a new family), in one
    statement on a pooled connection; the token.

    Args:
        client_addr: an address PostgreSQL's inet accepts, or None (`audit.inet`).
    """
    token = secrets.token_urlsafe(32)
    expires_at = dt.datetime.now(dt.UTC) + REFRESH_TTL
    await driver_execute(
        engine,
        _SIGNED_IN_SQL,
        user_id,
        client_addr,
        secrets.token_hex(16),
        _digest(token),
        expires_at,
    )
    return token


async def rotate_refresh_token(
    session: AsyncSession,
    token: str,
    *,
    client_addr: str | None = None,
    grace: dt.timedelta = REFRESH_GRACE,
) -> tuple[int, str, str]:
    """Spend a refresh token and issue its successor. Commits.

    Presenting a token that was already spent means two parties hold it (it leaked): the
    whole family is revoked, the attempt audited, and the caller refused. One exception,
    for a client's parallel or retried refreshes: the immediately previous token (spent
    less than `grace` ago, and nothing of its family spent since) is exchanged again for a
    new token of the same family. Rotations within one family run one at a time (its rows
    are locked), so parallel requests cannot both see a token unspent, nor race the check.

    Returns:
        (user id, role, new refresh token).

    Raises:
        InvalidRefreshToken: unknown, expired, revoked or reused token, or inactive user.
    """
    now = dt.datetime.now(dt.UTC)
    digest = _digest(token)
    if not session.in_transaction():
        rotated = await _rotate_in_one_statement(session, digest, now)
        if rotated is not None:
            return rotated
    family_id = await session.scalar(
        select(RefreshToken.family_id).where(RefreshToken.token_hash == digest)
    )
    if family_id is None:
        raise InvalidRefreshToken("the refresh token is not valid")
    family = (
        await session.scalars(
            select(RefreshToken)
            .where(RefreshToken.family_id == family_id)
            .order_by(RefreshToken.id)  # one lock order for every request: no deadlock
            .with_for_update()
        )
    ).all()
    stored = next((t for t in family if t.token_hash == digest), None)
    if stored is None:  # deleted (expired, swept) between the two statements
        raise InvalidRefreshToken("the refresh token is not valid")
    if stored.revoked_at is not None:
        raise InvalidRefreshToken("the refresh token was revoked; sign in again")
    if stored.used_at is not None:
        spent_at = stored.used_at
        moved_on = any(t.used_at is not None and t.used_at > spent_at for t in family)
        if moved_on or now - spent_at > grace:
            await _reused(session, stored, now, client_addr)
            raise InvalidRefreshToken("the refresh token was already used; sign in again")
    else:
        stored.used_at = now
        # Successors handed out within the grace that the client did not keep: spent, so
        # whoever presents one later (after the grace) is treated as a reuse.
        for other in family:
            if other.used_at is None and other.revoked_at is None:
                other.used_at = now
    role, active = (
        await session.execute(select(User.role, User.is_active).where(User.id == stored.user_id))
    ).one()
    if stored.expires_at <= now or not active:
        raise InvalidRefreshToken("the refresh token has expired; sign in again")
    new_token = await issue_refresh_token(session, stored.user_id, family_id=family_id)
    await session.commit()
    return stored.user_id, role, new_token


# The usual rotation (an unspent, unrevoked, unexpired token of an active user) as one
# statement: the family locked in id order (as `rotate_refresh_token` locks it, so neither
# can deadlock the other), the presented token and the family's other unspent ones spent,
# the successor inserted. Rows only when it rotated; otherwise nothing was written.
_ROTATE_SQL = text(
    """
WITH family AS (
  SELECT r.id, r.user_id, r.family_id, r.token_hash, r.used_at, r.revoked_at, r.expires_at
    FROM refresh_tokens r
   WHERE r.family_id = (SELECT family_id FROM refresh_tokens WHERE token_hash = :digest)
   ORDER BY r.id
     FOR UPDATE
), stored AS (
  SELECT f.user_id, f.family_id, u.role
    FROM family f JOIN users u ON u.id = f.user_id
   WHERE f.token_hash = :digest AND f.used_at IS NULL AND f.revoked_at IS NULL
     AND f.expires_at > :now AND u.is_active
), spent AS (
  UPDATE refresh_tokens r SET used_at = :now
    FROM family f
   WHERE r.id = f.id AND f.used_at IS NULL AND f.revoked_at IS NULL
     AND EXISTS (SELECT FROM stored)
), issued AS (
  INSERT INTO refresh_tokens (user_id, family_id, token_hash, expires_at)
  SELECT user_id, family_id, :new_digest, :expires_at FROM stored
)
SELECT user_id, role FROM stored
"""
)


async def _rotate_in_one_statement(
    session: AsyncSession, digest: str, now: dt.datetime
) -> tuple[int, str, str] | None:
    """The usual rotation in one round trip on an autocommit connection (the statement is
    its own transaction; the ORM's unit of work was BEGIN, three reads, two writes and
    COMMIT). None: not the usual case (unknown, spent, revoked, expired, inactive user),
    nothing written, the session ended for `rotate_refresh_token`'s own transaction."""
    await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    new_token = secrets.token_urlsafe(32)
    row = (
        await session.execute(
            _ROTATE_SQL,
            {
                "digest": digest,
                "now": now,
                "new_digest": _digest(new_token),
                "expires_at": now + REFRESH_TTL,
            },
        )
    ).one_or_none()
    await session.commit()  # gives the autocommit connection back
    return None if row is None else (row.user_id, row.role, new_token)


async def _reused(
    session: AsyncSession, stored: RefreshToken, now: dt.datetime, client_addr: str | None
) -> None:
    await revoke_family(session, stored.family_id, now)
    await audit.record(
        session,
        actor_user_id=stored.user_id,
        action=audit.TOKEN_REFRESH_REUSED,
        subject_type="refresh_token_family",
        client_addr=client_addr,
        flagged=True,
        details={"family_id": stored.family_id},
    )
    await session.commit()


async def revoke_family(session: AsyncSession, family_id: str, now: dt.datetime) -> int:
    """Revoke the family's live tokens; how many were live."""
    result: Any = await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return int(result.rowcount or 0)


async def revoke_refresh_token(
    session: AsyncSession, token: str, *, client_addr: str | None = None
) -> None:
    """End the family this token belongs to (API logout), audited as `logout` like the
    browser's. Commits; unknown or already revoked tokens are ignored."""
    row = (
        await session.execute(
            select(RefreshToken.family_id, RefreshToken.user_id).where(
                RefreshToken.token_hash == _digest(token)
            )
        )
    ).one_or_none()
    if row is not None:
        family, user_id = row
        if not await revoke_family(session, family, dt.datetime.now(dt.UTC)):
            return  # already ended: a repeated logout is not a new event
        await audit.record(
            session,
            actor_user_id=user_id,
            action=audit.LOGOUT,
            subject_type="refresh_token_family",
            client_addr=client_addr,
            details={"via": "api", "family_id": family},
        )
        await session.commit()


async def revoke_user_tokens(session: AsyncSession, user_id: int) -> int:
    """Revoke every live refresh token of a user (password change, deactivation); no commit.

    Returns:
        How many token families were still live.
    """
    families = await session.scalars(
        update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=dt.datetime.now(dt.UTC))
        .returning(RefreshToken.family_id)
    )
    return len(set(families))
