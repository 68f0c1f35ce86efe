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

import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import quote, urlsplit

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import (
    NotAuthorizedException,
    PermissionDeniedException,
    WebSocketDisconnect,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractMiddleware
from litestar.middleware.authentication import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
)
from litestar.response import Redirect, Response
from litestar.status_codes import WS_1008_POLICY_VIOLATION, WS_1013_TRY_AGAIN_LATER
from litestar.types import Receive, Scope, Send
from redis.exceptions import RedisError

from app.access import rate_limit
from app.access.browser_sessions import COOKIE_NAME, BrowserSession, get_session
from app.access.identity import Principal, cached_principal
from app.access.tokens import verify_access_token
from app.i18n import gettext, use_language
from app.services import Services
from app.settings import Settings
from app.web.i18n import scope_language

log = logging.getLogger(__name__)

PUBLIC: dict[str, Any] = {"public": True}
# Anonymous endpoints that take a password or make an account: a tight per-address limit.
AUTH_LIMITED: dict[str, Any] = {"public": True, "rate_limit": "auth"}

Guard = Callable[[ASGIConnection, BaseRouteHandler], Awaitable[None]]


def current_user(connection: ASGIConnection) -> Principal | None:
    user = connection.scope.get("user")
    return user if isinstance(user, Principal) else None


def allow(*roles: str) -> Guard:
    """A guard admitting signed-in users with one of `roles` (any role when none given)."""

    # async on purpose: Litestar runs a sync guard in a worker thread, per request.
    async def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        user = current_user(connection)
        if user is None:
            raise NotAuthorizedException(gettext("sign in first"))
        if roles and user.role not in roles:
            raise PermissionDeniedException(gettext("your role may not do this"))

    guard.roles = roles  # type: ignore[attr-defined]  # read by the access-matrix tests
    return guard


class AuthMiddleware(AbstractAuthenticationMiddleware):
    """Sets `scope["user"]` to the Principal (or None) and `scope["auth"]` to the session."""

    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        services = Services.of(connection.app)
        authorization = connection.headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            claims = verify_access_token(services.settings.secret_key, authorization[7:].strip())
            if claims is None:  # before LanguageMiddleware: the language the request asks for
                with use_language(scope_language(connection.scope)):
                    refusal = gettext("the access token is invalid or expired")
                raise NotAuthorizedException(refusal)
            user = await _principal(connection, claims.user_id)
            return AuthenticationResult(user=user, auth=None)
        session_id = connection.cookies.get(COOKIE_NAME)
        if session_id:
            session = await get_session(services.redis, session_id)
            if session is not None:
                user = await _principal(connection, session.user_id)
                return AuthenticationResult(user=user, auth=session)
        return AuthenticationResult(user=None, auth=None)


async def _principal(connection: ASGIConnection, user_id: int) -> Principal | None:
    """Load the Principal and count the request against the user's rate limit at once;
    RateLimitMiddleware reads the count from the scope instead of asking Redis again.

    A route may also name Redis keys it will read (`opt={"prefetch": f}`, `f` taking the
    query parameters): they come back in the same round trip and wait in the scope for
    the handler (`prefetched`). The availability route uses this so that a cache hit costs
    one Redis round trip, not two.
    """
    services = Services.of(connection.app)
    handler = connection.scope.get("route_handler")
    keys_for = handler.opt.get("prefetch") if handler is not None else None
    prefetch = keys_for(connection.query_params) if keys_for is not None else ()
    principal, counted, fetched = await cached_principal(
        services.request_redis,
        services.engine,
        user_id,
        rate_key=_user_rate_key(user_id),
        prefetch=prefetch,
    )
    if principal is not None and counted is not None:
        connection.scope["medbook_user_rate"] = counted  # type: ignore[typeddict-unknown-key]
    if principal is not None and fetched:
        connection.scope["medbook_prefetched"] = fetched  # type: ignore[typeddict-unknown-key]
    return principal


def prefetched(connection: ASGIConnection) -> dict[str, bytes | None]:
    """The Redis values the authentication step fetched for this route (may be empty)."""
    return cast("dict[str, bytes | None]", connection.scope.get("medbook_prefetched") or {})


def _user_rate_key(user_id: int) -> str:
    return f"user:{user_id}"


def browser_session(connection: ASGIConnection) -> BrowserSession | None:
    auth = connection.scope.get("auth")
    return auth if isinstance(auth, BrowserSession) else None


def client_addr(connection: ASGIConnection) -> str | None:
    """The peer address. Behind a proxy, set FORWARDED_ALLOW_IPS to the proxy's address
    so this is the client's, not the proxy's."""
    client = connection.scope.get("client")
    return client[0] if client else None


class RateLimitMiddleware(AbstractMiddleware):
    """Per-user limits for signed-in callers, per-address for anonymous ones (S-6).

    Runs after authentication, on requests and websocket handshakes alike (a handshake
    counts as one request; an over-limit one is refused before it is accepted). Fails
    open when Redis is down: Redis holds nothing that cannot be rebuilt, and an outage
    must slow nobody's booking.
    """

    scopes = {ScopeType.HTTP, ScopeType.WEBSOCKET}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = Services.of(scope["app"])
        settings = services.settings
        user = scope.get("user")
        handler = scope.get("route_handler")
        addr = (scope.get("client") or ("unknown",))[0]
        checks: list[tuple[str, int]] = []
        if handler is not None and handler.opt.get("rate_limit") == "auth":
            checks.append((f"auth:{addr}", settings.rate_limit_auth_per_minute))
        counted = cast("tuple[int, int] | None", scope.get("medbook_user_rate"))
        over: int | None = None  # seconds to wait, when the authentication step's count is over
        if isinstance(user, Principal):
            limit = settings.rate_limit_user_per_minute
            if counted is None:
                checks.append((_user_rate_key(user.id), limit))
            elif limit and counted[0] > limit:  # counted by the authentication step
                over = max(counted[1], 1)
        else:
            checks.append((f"addr:{addr}", settings.rate_limit_anonymous_per_minute))
        try:
            if over is not None:
                raise rate_limit.TooManyAttempts(
                    gettext("too many requests; slow down"), retry_after=over
                )
            for key, limit in checks:
                if (wait := await rate_limit.hit(services.redis, key, limit)) is not None:
                    raise rate_limit.TooManyAttempts(
                        gettext("too many requests; slow down"), retry_after=wait
                    )
        except RedisError as exc:
            log.warning("rate limit skipped, Redis unavailable: %s", exc)
        except rate_limit.TooManyAttempts:
            if scope["type"] == ScopeType.WEBSOCKET:  # no status line to send: refuse it
                raise WebSocketDisconnect(
                    code=WS_1013_TRY_AGAIN_LATER, detail="too many requests; slow down"
                ) from None
            raise
        await self.app(scope, receive, send)


def check_websocket_origin(
    connection: ASGIConnection, settings: Settings, *, signed_in: bool = True
) -> None:
    """Refuse a websocket handshake from another site, or without a signed-in user
    (unless `signed_in` is False: a view open to visitors).

    Browsers send cookies with cross-site websocket handshakes and CSRF tokens do not
    apply, so the Origin header is the only proof the page is ours.

    Raises:
        WebSocketDisconnect: code 1008 (policy violation).
    """
    origin = connection.headers.get("origin", "")
    allowed = {_origin(settings.public_origin)}
    host = connection.headers.get("host")
    if host:  # the origin the browser actually used (tests, port-forwarded demos)
        scheme = "https" if connection.scope.get("scheme") in ("https", "wss") else "http"
        allowed.add(f"{scheme}://{host}".lower())
    if not origin or origin.lower() not in allowed:
        raise WebSocketDisconnect(code=WS_1008_POLICY_VIOLATION, detail="origin not allowed")
    if signed_in and current_user(connection) is None:
        raise WebSocketDisconnect(code=WS_1008_POLICY_VIOLATION, detail="sign in first")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def wants_html(request: Request[Any, Any, Any]) -> bool:
    if request.url.path.startswith("/api/") or request.headers.get("hx-request"):
        return False
    return "text/html" in request.headers.get("accept", "")


def not_signed_in_handler(
    request: Request[Any, Any, Any], exc: NotAuthorizedException
) -> Response[Any]:
    """Pages send an anonymous visitor to the login form; htmx and the API get 401 JSON."""
    if wants_html(request) and request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return Redirect(f"/login?next={quote(target, safe='')}")
    headers = {"HX-Redirect": "/login"} if request.headers.get("hx-request") else None
    return Response({"status_code": 401, "detail": exc.detail}, status_code=401, headers=headers)
