"""CSRF protection for cookie-authenticated requests.

A signed-in browser's token lives in its server-side session; an anonymous visitor's in a
`medbook_csrf` cookie (double submit), so the login and registration forms are covered
too (login CSRF would sign a victim into the attacker's account). Every unsafe request
must bring the token in the `X-CSRF-Token` header (htmx, from `<body hx-headers>`) or a
`csrf_token` form field. Exempt: bearer-token requests (browsers never attach those by
themselves) and anonymous `/api/` calls, which carry no ambient credential to abuse.

The check runs as middleware, after authentication, on every HTTP route: a handler
cannot forget it. Reading a form here is safe: Litestar caches the parsed body in the
connection state, so the handler gets the same form.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any
from urllib.parse import urlsplit

from litestar.connection import Request
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.exceptions import PermissionDeniedException
from litestar.middleware import AbstractMiddleware
from litestar.types import Message, Receive, Scope, Send

from app.access.browser_sessions import BrowserSession
from app.i18n import gettext
from app.services import Services

COOKIE_NAME = "medbook_csrf"
HEADER_NAME = "x-csrf-token"
FIELD_NAME = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def secure_cookies(public_origin: str) -> bool:
    """Cookies get `Secure` whenever the site is served over https."""
    return public_origin.startswith("https://")


LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def insecure_origin_warning(public_origin: str) -> str | None:
    """What to log at start-up when the site is plain http on a host other than this
    machine: session cookies then go without `Secure` (a `Secure` cookie would never come
    back over http, so nobody could sign in), readable by anyone on the network path.

    Returns:
        The warning, or None for https and for loopback (the demo, tests).
    """
    parts = urlsplit(public_origin)
    if parts.scheme == "https" or (parts.hostname or "").lower() in LOOPBACK_HOSTS:
        return None
    return (
        f"MEDBOOK_PUBLIC_ORIGIN is {public_origin}: session cookies are sent without Secure "
        "over plain http; serve the site over https and set MEDBOOK_PUBLIC_ORIGIN to its "
        "https:// origin"
    )


class CSRFMiddleware(AbstractMiddleware):
    scopes = {ScopeType.HTTP}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request: Request[Any, Any, Any] = Request(scope, receive)
        if _bearer(request):
            # Authenticated by the token alone, cookies unconsulted: nothing to forge, and
            # API clients need no CSRF cookie on every answer.
            await self.app(scope, receive, send)
            return
        session = scope.get("auth")
        new_cookie: str | None = None
        if isinstance(session, BrowserSession):
            expected = session.csrf_token
        elif cookie_token := request.cookies.get(COOKIE_NAME):
            expected = cookie_token
        else:
            expected = new_cookie = secrets.token_urlsafe(32)
        scope["csrf_token"] = expected  # type: ignore[typeddict-unknown-key]
        if request.method not in SAFE_METHODS and await _needs_token(request, session):
            supplied = request.headers.get(HEADER_NAME)
            if not supplied and request.content_type[0] in _FORM_TYPES:
                supplied = (await request.form()).get(FIELD_NAME)
            if new_cookie or not isinstance(supplied, str) or not _same(supplied, expected):
                raise PermissionDeniedException(
                    gettext("the form's security token is missing or out of date; reload the page")
                )
        if new_cookie is None:
            await self.app(scope, receive, send)
            return
        origin = Services.of(scope["app"]).settings.public_origin
        secure = "; Secure" if secure_cookies(origin) else ""
        cookie = f"{COOKIE_NAME}={new_cookie}; Path=/; HttpOnly; SameSite=Lax{secure}"

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableScopeHeaders.from_message(message).add("set-cookie", cookie)
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _bearer(request: Request[Any, Any, Any]) -> bool:
    return request.headers.get("authorization", "").lower().startswith("bearer ")


async def _needs_token(request: Request[Any, Any, Any], session: object) -> bool:
    if isinstance(session, BrowserSession):
        return True
    return not request.url.path.startswith("/api/")


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
