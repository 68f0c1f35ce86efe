"""Authentication middleware and route guards.

Every route declares who may use it: `guards=[allow(...)]` with the roles (none named =
any signed-in user), or `opt=PUBLIC`. `tests/integration/test_route_guards.py` fails when
a route declares neither.

Credentials: an API bearer token (`Authorization: Bearer …`) or the browser session
cookie. Cookie-authenticated requests that change something must carry the session's CSRF
token in the `X-CSRF-Token` header (htmx sends it from `<body hx-headers>`) or a
`csrf_token` form field; bearer requests need none, since browsers never attach them on
their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.authentication import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
)

from app.browser_sessions import COOKIE_NAME, BrowserSession, get_session
from app.identity import Principal, load_principal
from app.tokens import verify_access_token

PUBLIC: dict[str, Any] = {"public": True}

Guard = Callable[[ASGIConnection, BaseRouteHandler], None]


def current_user(connection: ASGIConnection) -> Principal | None:
    user = connection.scope.get("user")
    return user if isinstance(user, Principal) else None


def allow(*roles: str) -> Guard:
    """A guard admitting signed-in users with one of `roles` (any role when none given)."""

    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        user = current_user(connection)
        if user is None:
            raise NotAuthorizedException("sign in first")
        if roles and user.role not in roles:
            raise PermissionDeniedException("your role may not do this")

    guard.roles = roles  # type: ignore[attr-defined]  # read by the access-matrix tests
    return guard


class AuthMiddleware(AbstractAuthenticationMiddleware):
    """Sets `scope["user"]` to the Principal (or None) and `scope["auth"]` to the session."""

    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        state = connection.app.state
        authorization = connection.headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            claims = verify_access_token(state.settings.secret_key, authorization[7:].strip())
            if claims is None:
                raise NotAuthorizedException("the access token is invalid or expired")
            return AuthenticationResult(user=await _principal(state, claims.user_id), auth=None)
        session_id = connection.cookies.get(COOKIE_NAME)
        if session_id:
            session = await get_session(state.redis, session_id)
            if session is not None:
                user = await _principal(state, session.user_id)
                return AuthenticationResult(user=user, auth=session)
        return AuthenticationResult(user=None, auth=None)


async def _principal(state: Any, user_id: int) -> Principal | None:
    async with state.sessions() as session:
        return await load_principal(session, user_id)


def browser_session(connection: ASGIConnection) -> BrowserSession | None:
    auth = connection.scope.get("auth")
    return auth if isinstance(auth, BrowserSession) else None
