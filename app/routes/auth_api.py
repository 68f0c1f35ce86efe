"""JSON auth API: registration, tokens, refresh, who am I, passwords."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from sqlalchemy.ext.asyncio import AsyncSession

from app.access import accounts, tokens
from app.routes.auth import login_limits, send_reset_link
from app.routes.inputs import (
    EMAIL_MAX,
    Code,
    Day,
    Email,
    Name,
    NewPassword,
    Password,
    Phone,
    Token,
)
from app.routes.responses import ANY_ROUTE, PUBLIC, READ, RULES, answers
from app.services import Services
from app.settings import Settings
from app.web.guards import AUTH_LIMITED, allow, browser_session, client_addr, current_user

# Request bodies refuse unknown fields: a typo such as `pasword` must not pass silently.


class RegisterBody(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: NewPassword
    full_name: Name
    date_of_birth: Day | None = None
    phone: Phone | None = None


class Registered(msgspec.Struct):
    id: int
    email: str
    role: str
    patient_id: int | None


class Credentials(msgspec.Struct, forbid_unknown_fields=True):
    email: Annotated[str, msgspec.Meta(max_length=EMAIL_MAX)]  # any: a wrong one is a 401
    password: Password
    totp: Code | None = None  # an authenticator or recovery code: staff with a second factor


class RefreshBody(msgspec.Struct, forbid_unknown_fields=True):
    refresh_token: Token


class TokenPair(msgspec.Struct):
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"  # noqa: S105  (the OAuth token type, not a secret)


class Me(msgspec.Struct, omit_defaults=True):
    id: int
    email: str
    role: str
    patient_id: int | None = None
    doctor_id: int | None = None
    clinic_id: int | None = None


class PasswordChange(msgspec.Struct, forbid_unknown_fields=True):
    current_password: Password
    new_password: NewPassword


class ResetRequest(msgspec.Struct, forbid_unknown_fields=True):
    email: Email


class ResetConfirm(msgspec.Struct, forbid_unknown_fields=True):
    token: Token
    new_password: NewPassword


def _settings(request: Request[Any, Any, Any]) -> Settings:
    settings: Settings = Services.of(request.app).settings
    return settings


@post(
    "/api/auth/register",
    opt=AUTH_LIMITED,
    tags=["auth"],
    status_code=201,
    responses=answers(*ANY_ROUTE, 409, 422),
)
async def register(
    request: Request[Any, Any, Any], db_session: AsyncSession, data: RegisterBody
) -> Registered:
    """Patient self-registration."""
    user = await accounts.register_patient(
        db_session,
        email=data.email,
        password=data.password,
        full_name=data.full_name,
        date_of_birth=data.date_of_birth,
        phone=data.phone,
        client_addr=client_addr(request),
    )
    return Registered(user.id, user.email, user.role, user.patient_id)


@post(
    "/api/auth/token",
    opt=AUTH_LIMITED,
    tags=["auth"],
    status_code=200,
    responses=answers(*ANY_ROUTE, 422),
)
async def token(
    request: Request[Any, Any, Any], db_session: AsyncSession, data: Credentials
) -> TokenPair:
    """Exchange email and password (and `totp`, when the account has a second factor) for
    an access token (15 min) and a refresh token."""
    services = Services.of(request.app)
    user_id, role, refresh = await accounts.sign_in_for_tokens(
        db_session,
        services.redis,
        services.engine,
        email=data.email,
        password=data.password,
        limits=login_limits(_settings(request)),
        client_addr=client_addr(request),
        totp_code=data.totp,
    )
    access = tokens.issue_access_token(_settings(request).secret_key, user_id=user_id, role=role)
    return TokenPair(access, refresh, tokens.ACCESS_TTL_SECONDS)


@post("/api/auth/refresh", opt=AUTH_LIMITED, tags=["auth"], status_code=200, responses=PUBLIC)
async def refresh(
    request: Request[Any, Any, Any], db_session: AsyncSession, data: RefreshBody
) -> TokenPair:
    """Spend a refresh token for a new pair; a reused one revokes its whole family (the
    previous token is accepted again for a short grace: docs/security.md)."""
    user_id, role, new_refresh = await tokens.rotate_refresh_token(
        db_session, data.refresh_token, client_addr=client_addr(request)
    )
    access = tokens.issue_access_token(_settings(request).secret_key, user_id=user_id, role=role)
    return TokenPair(access, new_refresh, tokens.ACCESS_TTL_SECONDS)


@post("/api/auth/revoke", opt=AUTH_LIMITED, tags=["auth"], status_code=204, responses=PUBLIC)
async def revoke(
    request: Request[Any, Any, Any], db_session: AsyncSession, data: RefreshBody
) -> None:
    """API logout: end the refresh token's family (audited as `logout`)."""
    await tokens.revoke_refresh_token(
        db_session, data.refresh_token, client_addr=client_addr(request)
    )


@get("/api/auth/me", guards=[allow()], tags=["auth"], responses=READ)
async def me(request: Request[Any, Any, Any]) -> Me:
    """Who the caller is."""
    user = current_user(request)
    assert user is not None
    return Me(user.id, user.email, user.role, user.patient_id, user.doctor_id, user.clinic_id)


@post("/api/auth/password", guards=[allow()], tags=["auth"], status_code=204, responses=RULES)
async def change_password(
    request: Request[Any, Any, Any], db_session: AsyncSession, data: PasswordChange
) -> None:
    """Change one's own password; the user's other sessions and refresh tokens end."""
    user = current_user(request)
    assert user is not None
    await accounts.change_password(
        db_session,
        Services.of(request.app).redis,
        user_id=user.id,
        current_password=data.current_password,
        new_password=data.new_password,
        keep_session=session.session_id if (session := browser_session(request)) else None,
        client_addr=client_addr(request),
    )


@post(
    "/api/auth/password-reset",
    opt=AUTH_LIMITED,
    tags=["auth"],
    status_code=202,
    responses=answers(*ANY_ROUTE, 422),
)
async def password_reset(
    request: Request[Any, Any, Any], db_session: AsyncSession, data: ResetRequest
) -> Response[dict[str, str]]:
    """Send a reset link if the account exists; the answer never says whether it does."""
    await send_reset_link(request, db_session, data.email)
    return Response(
        {"detail": "if this email has an account, a reset link is on its way"}, status_code=202
    )


@post(
    "/api/auth/password-reset/confirm",
    opt=AUTH_LIMITED,
    tags=["auth"],
    status_code=204,
    responses=answers(*ANY_ROUTE, 422),
)
async def password_reset_confirm(
    request: Request[Any, Any, Any], db_session: AsyncSession, data: ResetConfirm
) -> None:
    """Set a new password with a reset token."""
    await accounts.finish_password_reset(
        db_session,
        Services.of(request.app).redis,
        token=data.token,
        new_password=data.new_password,
        client_addr=client_addr(request),
    )


ROUTES = [
    register,
    token,
    refresh,
    revoke,
    me,
    change_password,
    password_reset,
    password_reset_confirm,
]
