"""Request-scoped dependencies shared by the API and page handlers."""

from __future__ import annotations

import datetime as dt

from litestar import Request
from litestar.exceptions import NotAuthorizedException
from litestar.types import Scope
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.identity import Principal
from app.appointments.rules import BookingRules
from app.i18n import gettext
from app.live.effects import Effects
from app.scheduling.slots import SlotCache
from app.services import Services
from app.settings import Settings


def provide_services(scope: Scope) -> Services:
    return Services.of(scope["app"])


def provide_settings(scope: Scope) -> Settings:
    return Services.of(scope["app"]).settings


def provide_effects(scope: Scope) -> Effects:
    return Services.of(scope["app"]).effects


def provide_slot_cache(scope: Scope) -> SlotCache:
    return Services.of(scope["app"]).slot_cache


def provide_rules(scope: Scope) -> BookingRules:
    return booking_rules(Services.of(scope["app"]).settings)


def booking_rules(settings: Settings) -> BookingRules:
    return BookingRules.from_settings(settings)


async def provide_read_session(db_session: AsyncSession) -> AsyncSession:
    """The request's session on an autocommit connection, for handlers that only read.

    Each statement is then its own transaction; under READ COMMITTED each statement of a
    transaction sees its own snapshot anyway, so a reader sees what it would have seen,
    without the BEGIN and ROLLBACK round trips around its queries (about 40 % of the
    server CPU of a one-query read, bench/README.md). Not for handlers that write, lock
    rows (`FOR UPDATE`) or `SET LOCAL`: those need the transaction."""
    await db_session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    return db_session


def provide_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def provide_actor(request: Request) -> Principal:
    """The signed-in user; routes using it are guarded, so None means a guard is missing."""
    user = request.scope.get("user")
    if not isinstance(user, Principal):
        raise NotAuthorizedException(gettext("sign in first"))
    return user
