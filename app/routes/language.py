"""The page header's language switcher."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, post
from litestar.datastructures import Cookie
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect
from sqlalchemy.ext.asyncio import AsyncSession

from app import i18n
from app.access import accounts
from app.access.identity import Principal
from app.errors import Invalid
from app.routes.auth import safe_next
from app.services import Services
from app.web.csrf import secure_cookies
from app.web.guards import PUBLIC
from app.web.i18n import COOKIE_MAX_AGE, COOKIE_NAME

Form = Body(media_type=RequestEncodingType.URL_ENCODED)


@post("/language", opt=PUBLIC, include_in_schema=False, status_code=303)
async def choose_language(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    data: Annotated[dict[str, str], Form],
) -> Redirect:
    """Remember the chosen language (a cookie; a patient's profile too) and go back."""
    language = i18n.supported(data.get("language"))
    if language is None:
        raise Invalid(i18n.gettext("Choose one of the languages offered."))
    user = request.scope.get("user")
    if isinstance(user, Principal) and user.patient_id is not None:
        redis = Services.of(request.app).redis
        await accounts.save_language(db_session, redis, user_id=user.id, language=language)
    cookie = Cookie(
        key=COOKIE_NAME,
        value=language,
        max_age=COOKIE_MAX_AGE,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(Services.of(request.app).settings.public_origin),
        path="/",
    )
    return Redirect(safe_next(data.get("next")), status_code=303, cookies=[cookie])
