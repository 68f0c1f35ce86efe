"""API access tokens: short-lived HS256 JWTs with minimal claims (review M-4, S-1)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import jwt

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
    """The token's claims when its signature and expiry hold, else None."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp", "role"]}
        )
        return AccessClaims(
            int(claims["sub"]), str(claims["role"]), int(claims["exp"]), str(claims.get("jti", ""))
        )
    except (jwt.PyJWTError, ValueError):
        return None
