"""What every page template can ask for: the CSRF token and the signed-in user."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from litestar.plugins.jinja import JinjaTemplateEngine

from app import i18n
from app.access.browser_sessions import BrowserSession
from app.access.identity import Principal


def _scope(context: Mapping[str, Any]) -> Mapping[str, Any]:
    request = context.get("request")
    return request.scope if request is not None else {}


def csrf_token(context: Mapping[str, Any]) -> str:
    """The token forms carry in `csrf_token` and htmx sends as X-CSRF-Token."""
    return str(_scope(context).get("csrf_token", ""))


def signed_in_user(context: Mapping[str, Any]) -> Principal | None:
    user = _scope(context).get("user")
    return user if isinstance(user, Principal) else None


def signed_in_name(context: Mapping[str, Any]) -> str:
    session = _scope(context).get("auth")
    return session.display_name if isinstance(session, BrowserSession) else ""


def register(engine: JinjaTemplateEngine) -> None:
    """TemplateConfig(engine_callback=...) hook; also gettext and the date filters."""
    # Templates change with a deploy, not while running (as mail.py's): without this,
    # Jinja stats each template's file on every get_template, a page's every include
    # and every live fragment's render (6.9 against 1.3 us a look-up; bench/README.md).
    engine.engine.auto_reload = False
    i18n.install_jinja(engine.engine)
    for fn in (csrf_token, signed_in_user, signed_in_name):
        engine.register_template_callable(fn.__name__, fn)
