"""The request's language (app/i18n.py chooses it) and the template side of gettext.

LanguageMiddleware runs after authentication: the signed-in patient's saved language,
else the `medbook_lang` cookie the header's switcher sets, else Accept-Language, else
DEFAULT_LANGUAGE. It puts the choice in `scope["language"]` and makes it the current
language of the request's task, which templates (`{% trans %}`, `_()`), domain errors and
form messages read.
"""

from __future__ import annotations

from typing import Any

from litestar.enums import ScopeType
from litestar.middleware import AbstractMiddleware
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.types import Receive, Scope, Send

from app import i18n
from app.access.identity import Principal
from app.services import Services

COOKIE_NAME = "medbook_lang"
COOKIE_MAX_AGE = 365 * 24 * 3600


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return ""


def _cookie(scope: Scope, name: str) -> str | None:
    for part in _header(scope, b"cookie").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def request_language(scope: Scope, default: str) -> str:
    """The language for this request (the order is app/i18n.py's `negotiate`)."""
    user = scope.get("user")
    saved = user.language if isinstance(user, Principal) else None
    return i18n.negotiate(
        saved or _cookie(scope, COOKIE_NAME),
        _header(scope, b"accept-language"),
        None,
        default,
    )


class LanguageMiddleware(AbstractMiddleware):
    """Sets the request's language (pages, fragments, API errors, websockets)."""

    scopes = {ScopeType.HTTP, ScopeType.WEBSOCKET}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        default = Services.of(scope["app"]).settings.default_language
        language = request_language(scope, default)
        scope["language"] = language  # type: ignore[typeddict-unknown-key]
        with i18n.use_language(language):
            await self.app(scope, receive, send)


def language_of(scope: Any) -> str:
    """The language LanguageMiddleware chose (the source language outside a request)."""
    return str(scope.get("language") or i18n.SOURCE_LANGUAGE)


def register(engine: JinjaTemplateEngine) -> None:
    i18n.install_jinja(engine.engine)
