"""Notifications on the web: the undelivered (dead-letter) page, the dev mailbox, each
patient's choice of email, SMS or none."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from litestar import Request, get, patch, post
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Template
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import DomainError
from app.notifications import outbox, preferences
from app.notifications.breaker import PROVIDERS, BreakerState, read_state
from app.routes.inputs import Id, NotifyBy, OptionalId, Phone
from app.routes.responses import BY_ID_RULES, READ, RULES
from app.services import Services, ask_for_dispatch
from app.settings import Settings
from app.web.guards import allow, client_addr, current_user
from db.models import DevMessage

log = logging.getLogger(__name__)

ADMIN = [allow("admin")]
PATIENT = [allow("patient")]
PAGE_SIZE = 100
PREFERENCES_PAGE = "notifications/preferences.html"
# `outbox.retry_dead` or `outbox.discard_dead`.
DeadLetterAction = Callable[..., Awaitable[None]]


def _actor_id(request: Request[Any, Any, Any]) -> int:
    user = current_user(request)
    assert user is not None  # the route is guarded
    return user.id


def _patient_id(request: Request[Any, Any, Any]) -> int:
    user = current_user(request)
    assert user is not None and user.patient_id is not None  # patients only
    return user.patient_id


# --- dead letters --------------------------------------------------------------------------


class UndeliveredOut(msgspec.Struct):
    """A message about an appointment (`appointment_*`) or an account (`user_id`: a reset
    or verification link); the other side is null."""

    id: int
    kind: str
    channel: str
    due_at: dt.datetime
    attempts: int
    last_error: str | None
    appointment_id: int | None
    appointment_starts_at: dt.datetime | None
    user_id: int | None


@get("/api/notifications/undelivered", guards=ADMIN, tags=["notifications"], responses=READ)
async def undelivered_api(
    db_session: AsyncSession, before: OptionalId = None
) -> list[UndeliveredOut]:
    """Messages that could not be delivered after every attempt (dead letters)."""
    rows = await outbox.list_undelivered(db_session, before_id=before, limit=PAGE_SIZE)
    return [
        UndeliveredOut(
            r.id,
            r.kind,
            r.channel,
            r.due_at,
            r.attempts,
            r.last_error,
            r.appointment_id,
            r.starts_at,
            r.user_id,
        )
        for r in rows
    ]


async def _act(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    notification_id: Id,
    action: DeadLetterAction,
    *,
    dispatch: bool = False,
) -> None:
    """Retry or discard a dead letter as the signed-in admin; `dispatch`: then ask for a
    dispatch, so a retried message goes out at once."""
    await action(
        db_session,
        notification_id,
        actor_user_id=_actor_id(request),
        client_addr=client_addr(request),
    )
    if dispatch:
        await ask_for_dispatch(Services.of(request.app).queue)


@post(
    "/api/notifications/{notification_id:int}/retry",
    guards=ADMIN,
    tags=["notifications"],
    responses=BY_ID_RULES,
)
async def retry_api(
    request: Request[Any, Any, Any], db_session: AsyncSession, notification_id: Id
) -> dict[str, Any]:
    """Send an undelivered message again, with fresh attempts."""
    await _act(request, db_session, notification_id, outbox.retry_dead, dispatch=True)
    return {"id": notification_id, "status": "pending"}


@post(
    "/api/notifications/{notification_id:int}/discard",
    guards=ADMIN,
    tags=["notifications"],
    responses=BY_ID_RULES,
)
async def discard_api(
    request: Request[Any, Any, Any], db_session: AsyncSession, notification_id: Id
) -> dict[str, Any]:
    """Give up on an undelivered message."""
    await _act(request, db_session, notification_id, outbox.discard_dead)
    return {"id": notification_id, "status": "void"}


@get("/admin/notifications", guards=ADMIN, include_in_schema=False)
async def undelivered_page(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    settings: Settings,
    now: dt.datetime,
    before: str = "",
    done: str = "",
) -> Template:
    """Each provider's circuit breaker, and the undelivered messages, newest first, each
    with retry and discard."""
    before_id = int(before) if before.isdigit() else None
    rows = await outbox.list_undelivered(db_session, before_id=before_id, limit=PAGE_SIZE)
    configured = {"email": bool(settings.smtp_host), "sms": bool(settings.sms_api_url)}
    breakers: list[BreakerState] | None = None
    try:
        breakers = [
            await read_state(Services.of(request.app).redis, name, now.timestamp())
            for name in PROVIDERS
        ]
    except RedisError as exc:  # the page still lists what is undelivered
        log.warning("breaker state unavailable: %s", exc)
    return Template(
        "notifications/undelivered.html",
        context={
            "rows": rows,
            "more": len(rows) == PAGE_SIZE,
            "done": done,
            "breakers": breakers,
            "configured": configured,
            "settings": settings,
        },
    )


async def _act_from_page(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    notification_id: Id,
    action: DeadLetterAction,
    done: str,
    *,
    dispatch: bool = False,
) -> Redirect:
    """`_act`, then back to the page, which says what was done (or that the row is gone)."""
    try:
        await _act(request, db_session, notification_id, action, dispatch=dispatch)
    except DomainError:
        return Redirect("/admin/notifications?done=gone", status_code=303)
    return Redirect(f"/admin/notifications?done={done}-{notification_id}", status_code=303)


@post("/admin/notifications/{notification_id:int}/retry", guards=ADMIN, include_in_schema=False)
async def retry_page(
    request: Request[Any, Any, Any], db_session: AsyncSession, notification_id: Id
) -> Redirect:
    """Retry from the page, then show it again."""
    return await _act_from_page(
        request, db_session, notification_id, outbox.retry_dead, "retried", dispatch=True
    )


@post("/admin/notifications/{notification_id:int}/discard", guards=ADMIN, include_in_schema=False)
async def discard_page(
    request: Request[Any, Any, Any], db_session: AsyncSession, notification_id: Id
) -> Redirect:
    """Discard from the page, then show it again."""
    return await _act_from_page(
        request, db_session, notification_id, outbox.discard_dead, "discarded"
    )


# --- the dev mailbox -----------------------------------------------------------------------


@get("/admin/mailbox", guards=ADMIN, include_in_schema=False)
async def mailbox_page(request: Request[Any, Any, Any], db_session: AsyncSession) -> Template:
    """What would have been sent (embedded mode has no real email or SMS provider)."""
    messages = (
        await db_session.scalars(
            select(DevMessage)
            .order_by(DevMessage.created_at.desc(), DevMessage.id.desc())
            .limit(50)
        )
    ).all()
    settings = Services.of(request.app).settings
    return Template(
        "notifications/mailbox.html",
        context={
            "messages": messages,
            "in_use": settings.notify_dev_mailbox,
            "smtp": bool(settings.smtp_host),
            "sms": bool(settings.sms_api_url),
        },
    )


# --- the patient's choice ------------------------------------------------------------------


class PreferenceOut(msgspec.Struct):
    notify_by: str
    email: str | None
    phone: str | None


class PreferenceIn(msgspec.Struct, forbid_unknown_fields=True):
    notify_by: NotifyBy
    phone: Phone | None = None  # "" removes the number


def _out(p: preferences.Preference) -> PreferenceOut:
    return PreferenceOut(p.notify_by, p.email, p.phone)


async def _set_my_preference(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    notify_by: str,
    phone: str | None,
    now: dt.datetime,
) -> preferences.Preference:
    """The signed-in patient chooses for themselves (and is the audited actor)."""
    return await preferences.set_preference(
        db_session,
        _patient_id(request),
        notify_by=notify_by,
        phone=phone,
        actor_user_id=_actor_id(request),
        now=now,
    )


@get("/api/me/notifications", guards=PATIENT, tags=["notifications"], responses=READ)
async def preference_api(
    request: Request[Any, Any, Any], db_session: AsyncSession
) -> PreferenceOut:
    """How I get confirmations and reminders: `email`, `sms` or `none`."""
    return _out(await preferences.get_preference(db_session, _patient_id(request)))


@patch("/api/me/notifications", guards=PATIENT, tags=["notifications"], responses=RULES)
async def set_preference_api(
    request: Request[Any, Any, Any], db_session: AsyncSession, data: PreferenceIn, now: dt.datetime
) -> PreferenceOut:
    """Choose email, SMS (optionally with a new mobile number) or none."""
    return _out(await _set_my_preference(request, db_session, data.notify_by, data.phone, now))


@get("/me/notifications", guards=PATIENT, include_in_schema=False)
async def preference_page(request: Request[Any, Any, Any], db_session: AsyncSession) -> Template:
    """The patient's choice of email, SMS or none, as a form."""
    preference = await preferences.get_preference(db_session, _patient_id(request))
    return Template(PREFERENCES_PAGE, context={"preference": preference})


@dataclass
class PreferenceForm:
    notify_by: str = ""
    phone: str = ""


@post("/me/notifications", guards=PATIENT, include_in_schema=False)
async def save_preference_page(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    data: Annotated[PreferenceForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    now: dt.datetime,
) -> Template:
    """Save the choice; errors keep what was typed."""
    try:
        preference = await _set_my_preference(request, db_session, data.notify_by, data.phone, now)
    except DomainError as exc:
        await db_session.rollback()
        current = await preferences.get_preference(db_session, _patient_id(request))
        typed = preferences.Preference(data.notify_by, current.email, data.phone or None)
        return Template(PREFERENCES_PAGE, context={"preference": typed, "error": exc.detail})
    return Template(PREFERENCES_PAGE, context={"preference": preference, "saved": True})


NOTIFICATION_ROUTES = [
    undelivered_api,
    retry_api,
    discard_api,
    undelivered_page,
    retry_page,
    discard_page,
    mailbox_page,
    preference_api,
    set_preference_api,
    preference_page,
    save_preference_page,
]
