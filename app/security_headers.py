"""Security headers on every response, error pages included (a `before_send` hook).

Content-Security-Policy: scripts only from our origin, no inline script or style.
htmx 2 would inject an inline <style> for its indicators; base.html turns that off with
`<meta name="htmx-config" content='{"includeIndicatorStyles": false}'>` and app.css
carries the indicator rules, so `style-src 'self'` holds without 'unsafe-inline'.
"""

from __future__ import annotations

from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",  # CSP3: 'self' includes ws(s):// to our own host
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    # Reset links carry their token in the URL: send no Referer anywhere.
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}


async def add_security_headers(message: Message, scope: Scope) -> None:
    if message["type"] != "http.response.start":
        return
    headers = MutableScopeHeaders.from_message(message)
    for name, value in _HEADERS.items():
        if name not in headers:
            headers[name] = value
    # Pages and answers about people must not sit in shared or browser caches.
    if "cache-control" not in headers and not scope["path"].startswith("/static/"):
        headers["cache-control"] = "no-store"
    if scope["app"].state.settings.public_origin.startswith("https://"):
        headers["strict-transport-security"] = "max-age=31536000; includeSubDomains"
