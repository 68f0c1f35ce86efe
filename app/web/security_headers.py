"""Security headers on every response, error pages included (a `before_send` hook).

Content-Security-Policy: scripts only from our origin, no inline script or style.
htmx 2 would inject an inline <style> for its indicators; base.html turns that off with
`<meta name="htmx-config" content='{"includeIndicatorStyles": false}'>` and app.css
carries the indicator rules, so `style-src 'self'` holds without 'unsafe-inline'.
"""

from __future__ import annotations

import re

from litestar.types import Message, Scope

from app.services import Services
from app.web.api_docs import SWAGGER_CSS, SWAGGER_SCRIPTS

CSP_BASE = [
    "default-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",  # CSP3: 'self' includes ws(s):// to our own host
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
]
CSP = "; ".join(["script-src 'self'", "style-src 'self'", *CSP_BASE])
# The API documentation (app/web/api_docs.py) may run exactly its vendored Swagger UI and
# its start-up file, and use exactly its stylesheet: full URLs on our own origin.
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")
DOCS_PAGES = frozenset({"/schema", "/schema/swagger"})


def docs_csp(origin: str) -> bytes:
    scripts = " ".join(origin + src for src in SWAGGER_SCRIPTS)
    return "; ".join(
        [f"script-src {scripts}", f"style-src {origin}{SWAGGER_CSS}", *CSP_BASE]
    ).encode()


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
    # the whole list for every `in` and assignment, seven times a response here.
    headers = list(message.get("headers") or ())
    present = {name.lower() for name, _ in headers}
    if scope["path"].rstrip("/") in DOCS_PAGES:
        headers.append((b"content-security-policy", docs_csp(_origin(scope))))
        present.add(b"content-security-policy")
    headers += [header for header in _RAW if header[0] not in present]
    # Pages and answers about people must not sit in shared or browser caches.
    if b"cache-control" not in present and not scope["path"].startswith("/static/"):
        headers.append(_NO_STORE)
    https = Services.of(scope["app"]).settings.public_origin.startswith("https://")
    if https and _HSTS[0] not in present:
        headers.append(_HSTS)
    message["headers"] = headers


def _origin(scope: Scope) -> str:
    """The origin the browser used for this page (scheme and Host header)."""
    host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
    if not _HOST.fullmatch(host):  # nothing a policy could be bent with
        host = "localhost"
    secure = scope.get("scheme") == "https"
    return f"{'https' if secure else 'http'}://{host}"
