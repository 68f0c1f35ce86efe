"""The request's language (app/i18n.py chooses it).

LanguageMiddleware runs right after authentication: the signed-in patient's saved
language, else the `medbook_lang` cookie the header's switcher sets, else Accept-Language,
else DEFAULT_LANGUAGE (which a clinic's page may replace by the clinic's language:
`clinic_default`). It puts the choice in `scope["language"]` and makes it the current
language of the request's task, which templates (`{% trans %}`, `_()`), domain errors,
refusals and form messages read.
"""

from __future__ import annotations

from typing import Any

from litestar.enums import ScopeType
from litestar.middleware import AbstractMiddleware
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.types import Receive, Scope, Send

from app import i18n
from app.access.identity import Principal
from app.fhir.bundles import BASE_PATH as FHIR_BASE_PATH
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


def request_language(scope: Scope, default: str) -> tuple[str, bool]:
    """The language for this request (the order is app/i18n.py's `negotiate`), and
    whether it stands (False: a browser asked only for languages we do not speak, so a
    clinic's page may answer in the clinic's language instead of the default). A client
    that sends no Accept-Language at all (an API client, a script) keeps DEFAULT_LANGUAGE
    everywhere, so its answers do not change language from page to page. The FHIR API
    answers in English by decision (docs/fhir.md, "Languages")."""
    if str(scope.get("path", "")).startswith(FHIR_BASE_PATH):
        return i18n.SOURCE_LANGUAGE, True
    user = scope.get("user")
    saved = user.language if isinstance(user, Principal) else None
    accept = _header(scope, b"accept-language")
    chosen = i18n.preferred(saved or _cookie(scope, COOKIE_NAME), accept)
    language = chosen or i18n.supported(default) or i18n.SOURCE_LANGUAGE
    return language, chosen is not None or not accept.strip()


def scope_language(scope: Any) -> str:
    """The language LanguageMiddleware chose, or for a request refused before it ran (the
    site busy, a dependency down or a token refused while authenticating: no user known)
    the one it would choose from the cookie or Accept-Language."""
    chosen = scope.get("language")
    if isinstance(chosen, str) and chosen in i18n.LANGUAGES:
        return chosen
    return request_language(scope, Services.of(scope["app"]).settings.default_language)[0]


def clinic_default(scope: Any, timezone: str) -> None:
    """On a clinic's page, its language (Berlin: German) when the browser asked only for
    languages we do not speak."""
    if scope.get("language_chosen") is False:
        language = i18n.clinic_language(timezone, language_of(scope))
        scope["language"] = language
        i18n.set_language(language)


class LanguageMiddleware(AbstractMiddleware):
    """Sets the request's language (pages, fragments, API errors, websockets)."""

    scopes = {ScopeType.HTTP, ScopeType.WEBSOCKET}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        default = Services.of(scope["app"]).settings.default_language
        language, chosen = request_language(scope, default)
        scope["language"] = language  # type: ignore[typeddict-unknown-key]
        scope["language_chosen"] = chosen  # type: ignore[typeddict-unknown-key]
        with i18n.use_language(language):
            await self.app(scope, receive, send)


def language_of(scope: Any) -> str:
    """The language LanguageMiddleware chose (the source language outside a request)."""
    return str(scope.get("language") or i18n.SOURCE_LANGUAGE)


def register(engine: JinjaTemplateEngine) -> None:
    i18n.install_jinja(engine.engine)
