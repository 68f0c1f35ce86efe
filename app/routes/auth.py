"""Sign-in pages: login (password, then a staff member's code), registration, logout,
password change and reset, the second factor's set-up."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Request, get, post
from litestar.datastructures import Cookie
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Template
from sqlalchemy.ext.asyncio import AsyncSession

from app.access import accounts, audit, totp
from app.access.browser_sessions import (
    COOKIE_NAME,
    SESSION_TTL_SECONDS,
    create_session,
    end_session,
)
from app.access.rate_limit import LoginLimits, TooManyAttempts
from app.errors import DomainError, Invalid
from app.services import Services, ask_for_dispatch
from app.settings import Settings
from app.web.csrf import secure_cookies
from app.web.guards import AUTH_LIMITED, PUBLIC, allow, browser_session, client_addr, current_user
from db.models import User

STAFF = [allow("doctor", "front_desk", "admin")]

Form = Body(media_type=RequestEncodingType.URL_ENCODED)


def _settings(request: Request[Any, Any, Any]) -> Settings:
    settings: Settings = Services.of(request.app).settings
    return settings


def login_limits(settings: Settings) -> LoginLimits:
    return LoginLimits(settings.login_max_failures, settings.login_lock_max_seconds)


# Where each role starts its day when the sign-in had no page to return to.
START_PAGES = {
    "patient": "/me/appointments",
    "front_desk": "/desk",
    "doctor": "/doctor/day",
    "admin": "/admin/clinics",
}


def landing(role: str, target: str | None) -> str:
    """The page after signing in: the one asked for, else the role's own start."""
    target = safe_next(target)
    return START_PAGES.get(role, "/") if target == "/" else target


async def dispatch_soon(request: Request[Any, Any, Any]) -> None:
    """Ask the worker to send what is due now (a reset link should not wait for the
    minute's cron); a lost ask only means the cron sends it within a minute."""
    await ask_for_dispatch(Services.of(request.app).queue)


def safe_next(target: str | None) -> str:
    """Only our own paths: `//evil.example` and `https://…` would send the user away."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def _session_cookie(
    request: Request[Any, Any, Any], db_session: AsyncSession, user: User
) -> Cookie:
    old = browser_session(request)
    if old is not None:  # a new id at every login: no session fixation
        await end_session(Services.of(request.app).redis, old.session_id)
    name = await accounts.display_name(db_session, user.id)
    session = await create_session(Services.of(request.app).redis, user.id, name)
    return Cookie(
        key=COOKIE_NAME,
        value=session.session_id,
        max_age=SESSION_TTL_SECONDS,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(_settings(request).public_origin),
        path="/",
    )


async def _sign_in(
    request: Request[Any, Any, Any], db_session: AsyncSession, user: User, target: str
) -> Redirect:
    cookie = await _session_cookie(request, db_session, user)
    return Redirect(landing(user.role, target), status_code=303, cookies=[cookie])


def _too_many(template: str, context: dict[str, Any], exc: TooManyAttempts) -> Template:
    retry = str(exc.extra["retry_after"])
    context = {**context, "error": exc.detail}
    return Template(template, context=context, status_code=429, headers={"Retry-After": retry})


async def _second_step(
    request: Request[Any, Any, Any], exc: accounts.SecondFactorRequired, target: str
) -> Template:
    """The page after a right password: ask for the code, or set the second factor up."""
    redis = Services.of(request.app).redis
    enrol = isinstance(exc, accounts.EnrolmentRequired)
    pending = await totp.start_pending(redis, exc.user_id, enrol=enrol)
    context: dict[str, Any] = {"pending": pending, "next": safe_next(target)}
    if not enrol:
        return Template("auth/login_code.html", context=context)
    secret = await totp.candidate_secret(redis, exc.user_id)
    return Template(
        "auth/totp.html",
        context={
            **context,
            "action": "/login/totp-setup",
            "secret": secret,
            "uri": totp.provisioning_uri(secret, exc.email),
            "must": True,
        },
    )


@dataclass
class LoginForm:
    email: str = ""
    password: str = ""
    next: str = "/"


@get("/login", opt=PUBLIC, include_in_schema=False)
async def login_page(next: str = "/") -> Template:
    """The login form."""
    return Template("auth/login.html", context={"email": "", "next": safe_next(next)})


@post("/login", opt=AUTH_LIMITED, include_in_schema=False)
async def login(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    data: Annotated[LoginForm, Form],
) -> Template | Redirect:
    """Check the credentials; start a session or show the form again with what was typed."""
    try:
        user = await accounts.authenticate(
            db_session,
            Services.of(request.app).redis,
            email=data.email,
            password=data.password,
            limits=login_limits(_settings(request)),
            client_addr=client_addr(request),
        )
    except TooManyAttempts as exc:
        context = {"email": data.email, "next": safe_next(data.next)}
        return _too_many("auth/login.html", context, exc)
    except accounts.SecondFactorRequired as exc:
        return await _second_step(request, exc, data.next)
    except accounts.BadCredentials as exc:
        context = {"email": data.email, "next": safe_next(data.next), "error": exc.detail}
        return Template("auth/login.html", context=context)
    return await _sign_in(request, db_session, user, data.next)


@dataclass
class CodeForm:
    pending: str = ""
    code: str = ""
    next: str = "/"


def _expired(exc: DomainError, target: str) -> Template:
    context = {"email": "", "next": safe_next(target), "error": exc.detail}
    return Template("auth/login.html", context=context)


@post("/login/totp", opt=AUTH_LIMITED, include_in_schema=False)
async def login_code(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    data: Annotated[CodeForm, Form],
) -> Template | Redirect:
    """The second step: the authentication (or a recovery) code; then the session."""
    context = {"pending": data.pending, "next": safe_next(data.next)}
    try:
        user = await accounts.finish_sign_in(
            db_session,
            Services.of(request.app).redis,
            pending=data.pending,
            code=data.code,
            limits=login_limits(_settings(request)),
            client_addr=client_addr(request),
        )
    except TooManyAttempts as exc:
        return _too_many("auth/login_code.html", context, exc)
    except totp.WrongCode as exc:
        return Template("auth/login_code.html", context={**context, "error": exc.detail})
    except Invalid as exc:
        return _expired(exc, data.next)
    return await _sign_in(request, db_session, user, data.next)


@post("/login/totp-setup", opt=AUTH_LIMITED, include_in_schema=False)
async def login_totp_setup(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    data: Annotated[CodeForm, Form],
) -> Template:
    """The second step when an admin requires a second factor not yet set up: confirm the
    offered secret with a code; signed in, the recovery codes are shown once."""
    redis = Services.of(request.app).redis
    try:
        user, codes = await accounts.enrol_and_sign_in(
            db_session,
            redis,
            pending=data.pending,
            code=data.code,
            client_addr=client_addr(request),
        )
    except Invalid as exc:
        step = await totp.pending(redis, data.pending)
        if step is None:
            return _expired(exc, data.next)
        secret = await totp.candidate_secret(redis, step.user_id)
        email = (await db_session.get_one(User, step.user_id)).email
        context = {
            "pending": data.pending,
            "next": safe_next(data.next),
            "action": "/login/totp-setup",
            "secret": secret,
            "uri": totp.provisioning_uri(secret, email),
            "must": True,
            "error": exc.detail,
        }
        return Template("auth/totp.html", context=context)
    cookie = await _session_cookie(request, db_session, user)
    context = {"codes": codes, "next": landing(user.role, data.next)}
    return Template("auth/totp.html", context=context, cookies=[cookie])


@dataclass
class RegisterForm:
    email: str = ""
    password: str = ""
    full_name: str = ""
    date_of_birth: str = ""
    phone: str = ""


@get("/register", opt=PUBLIC, include_in_schema=False)
async def register_page() -> Template:
    """The patient registration form."""
    return Template("auth/register.html", context={"form": RegisterForm()})


@post("/register", opt=AUTH_LIMITED, include_in_schema=False)
async def register(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    data: Annotated[RegisterForm, Form],
) -> Template | Redirect:
    """Create a patient account and sign it in."""
    try:
        born = dt.date.fromisoformat(data.date_of_birth) if data.date_of_birth else None
    except ValueError:
        return Template(
            "auth/register.html",
            context={"form": data, "error": "date of birth must be a date (YYYY-MM-DD)"},
        )
    try:
        user = await accounts.register_patient(
            db_session,
            email=data.email,
            password=data.password,
            full_name=data.full_name,
            date_of_birth=born,
            phone=data.phone,
            client_addr=client_addr(request),
        )
    except DomainError as exc:
        return Template("auth/register.html", context={"form": data, "error": exc.detail})
    return await _sign_in(request, db_session, user, "/me")


@get("/logout", guards=[allow()], include_in_schema=False)
async def logout_page() -> Template:
    """Asks to confirm: signing out changes state, so it is a POST with a CSRF token."""
    return Template("auth/logout.html")


@post("/logout", guards=[allow()], include_in_schema=False)
async def logout(request: Request[Any, Any, Any], db_session: AsyncSession) -> Redirect:
    """End the browser session."""
    session = browser_session(request)
    if session is not None:
        await end_session(Services.of(request.app).redis, session.session_id)
    user = current_user(request)
    await audit.record(
        db_session,
        actor_user_id=user.id if user else None,
        action=audit.LOGOUT,
        client_addr=client_addr(request),
    )
    await db_session.commit()
    response = Redirect("/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/")
    return response


@get("/me", guards=[allow()], include_in_schema=False)
async def me_page(request: Request[Any, Any, Any], db_session: AsyncSession) -> Template:
    """The signed-in user's account page."""
    user = current_user(request)
    assert user is not None
    name = await accounts.display_name(db_session, user.id)
    return Template("auth/me.html", context={"me": user, "name": name})


@dataclass
class PasswordForm:
    current_password: str = ""
    new_password: str = ""


@get("/account/password", guards=[allow()], include_in_schema=False)
async def password_page() -> Template:
    """The change-password form."""
    return Template("auth/password.html")


async def _own_account(request: Request[Any, Any, Any], db_session: AsyncSession) -> User:
    principal = current_user(request)
    assert principal is not None  # the route is guarded
    return await db_session.get_one(User, principal.id)


async def _totp_page(
    request: Request[Any, Any, Any], db_session: AsyncSession, **context: Any
) -> Template:
    user = await _own_account(request, db_session)
    context |= {"enrolled": user.totp_secret is not None, "required": user.totp_required}
    if user.totp_secret is None:
        secret = await totp.candidate_secret(Services.of(request.app).redis, user.id)
        context |= {"secret": secret, "uri": totp.provisioning_uri(secret, user.email)}
    else:
        context["remaining"] = len(user.totp_recovery_hashes)
    return Template("auth/totp.html", context={"action": "/account/totp", **context})


@get("/account/totp", guards=STAFF, include_in_schema=False)
async def totp_page(request: Request[Any, Any, Any], db_session: AsyncSession) -> Template:
    """The second factor: its set-up (secret and otpauth URI), or its state and removal."""
    return await _totp_page(request, db_session)


@dataclass
class TotpForm:
    code: str = ""


@post("/account/totp", guards=STAFF, include_in_schema=False)
async def totp_enrol(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    data: Annotated[TotpForm, Form],
) -> Template:
    """Confirm the offered secret with a code; the recovery codes are shown once."""
    user = await _own_account(request, db_session)
    try:
        codes = await totp.confirm_enrolment(
            db_session,
            Services.of(request.app).redis,
            user=user,
            code=data.code,
            client_addr=client_addr(request),
        )
    except DomainError as exc:
        return await _totp_page(request, db_session, error=exc.detail)
    return Template("auth/totp.html", context={"codes": codes, "next": "/me"})


@post("/account/totp/remove", guards=STAFF, include_in_schema=False)
async def totp_remove(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    data: Annotated[TotpForm, Form],
) -> Template:
    """Switch one's second factor off, proven with a current code."""
    user = await _own_account(request, db_session)
    try:
        await totp.remove_own(
            db_session,
            Services.of(request.app).redis,
            user=user,
            code=data.code,
            limits=login_limits(_settings(request)),
            client_addr=client_addr(request),
        )
    except TooManyAttempts as exc:
        page = await _totp_page(request, db_session)
        return _too_many("auth/totp.html", page.context, exc)
    except DomainError as exc:
        return await _totp_page(request, db_session, error=exc.detail)
    return await _totp_page(request, db_session, removed=True)


@post("/account/password", guards=[allow()], include_in_schema=False)
async def change_password(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    data: Annotated[PasswordForm, Form],
) -> Template:
    """Change one's own password; other sessions end."""
    user = current_user(request)
    session = browser_session(request)
    assert user is not None
    try:
        await accounts.change_password(
            db_session,
            Services.of(request.app).redis,
            user_id=user.id,
            current_password=data.current_password,
            new_password=data.new_password,
            keep_session=session.session_id if session else None,
            client_addr=client_addr(request),
        )
    except DomainError as exc:
        return Template("auth/password.html", context={"error": exc.detail})
    return Template("auth/password.html", context={"done": True})


@dataclass
class ResetRequestForm:
    email: str = ""


@get("/password-reset", opt=PUBLIC, include_in_schema=False)
async def reset_request_page() -> Template:
    """Ask for a reset link."""
    return Template("auth/reset_request.html")


async def send_reset_link(
    request: Request[Any, Any, Any], db_session: AsyncSession, email: str
) -> None:
    """Make a reset token; its link goes out by email through the outbox (the dev
    mailbox in embedded mode), never to the page or the log."""
    token = await accounts.start_password_reset(
        db_session, Services.of(request.app).redis, email=email, client_addr=client_addr(request)
    )
    if token is not None:
        await dispatch_soon(request)


@post("/password-reset", opt=AUTH_LIMITED, include_in_schema=False)
async def reset_request(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    data: Annotated[ResetRequestForm, Form],
) -> Template:
    """The same answer whether or not the email has an account."""
    await send_reset_link(request, db_session, data.email)
    return Template("auth/reset_request.html", context={"sent": True})


@dataclass
class ResetForm:
    new_password: str = ""


@get("/password-reset/{token:str}", opt=PUBLIC, include_in_schema=False)
async def reset_page(token: str) -> Template:
    """Choose a new password with a reset link."""
    return Template("auth/reset.html", context={"token": token})


@post("/password-reset/{token:str}", opt=AUTH_LIMITED, include_in_schema=False)
async def reset(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    token: str,
    data: Annotated[ResetForm, Form],
) -> Template | Redirect:
    """Set the new password; then sign in with it."""
    try:
        await accounts.finish_password_reset(
            db_session,
            Services.of(request.app).redis,
            token=token,
            new_password=data.new_password,
            client_addr=client_addr(request),
        )
    except DomainError as exc:
        return Template("auth/reset.html", context={"token": token, "error": exc.detail})
    return Redirect("/login", status_code=303)


PAGES = [
    login_page,
    login,
    login_code,
    login_totp_setup,
    register_page,
    register,
    logout_page,
    logout,
    me_page,
    password_page,
    change_password,
    totp_page,
    totp_enrol,
    totp_remove,
    reset_request_page,
    reset_request,
    reset_page,
    reset,
]
