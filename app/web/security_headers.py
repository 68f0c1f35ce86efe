"""Security headers on every response, error pages included (a `before_send` hook).

Content-Security-Policy: scripts only from our origin, no inline script or style.
htmx 2 would inject an inline <style> for its indicators; base.html turns that off with
`<meta name="htmx-config" content='{"includeIndicatorStyles": false}'>` and app.css
carries the indicator rules, so `style-src 'self'` holds without 'unsafe-inline'.
"""

from __future__ import annotations

from litestar.types import Message, Scope

from app.services import Services

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


_RAW = [(name.encode(), value.encode()) for name, value in _HEADERS.items()]
_NO_STORE = (b"cache-control", b"no-store")
_HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")


async def add_security_headers(message: Message, scope: Scope) -> None:
    if message["type"] != "http.response.start":
        return
    # The raw header list, read once: Litestar's MutableScopeHeaders decodes and scans
    # the whole list for every `in` and assignment (~60 us a response for these seven).
    headers = list(message.get("headers") or ())
    present = {name.lower() for name, _ in headers}
    headers += [header for header in _RAW if header[0] not in present]
    # Pages and answers about people must not sit in shared or browser caches.
    if b"cache-control" not in present and not scope["path"].startswith("/static/"):
        headers.append(_NO_STORE)
    https = Services.of(scope["app"]).settings.public_origin.startswith("https://")
    if https and _HSTS[0] not in present:
        headers.append(_HSTS)
    message["headers"] = headers
