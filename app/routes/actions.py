"""What the handlers that change something share: `Command` (the request's session, its
after-commit effects, who acts and when, as one dependency) and `form_post` (the route of a
page's form post)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from litestar import post
from litestar.handlers import HTTPRouteHandler
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.identity import Principal
from app.live.effects import Effects
from app.web.guards import allow

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Command:
    """Who changes something, in which session, and when: what every domain command takes
    first (`app.appointments.commands`, the waitlist's, leave's)."""

    session: AsyncSession
    effects: Effects
    actor: Principal
    now: dt.datetime

    def run(
        self,
        command: Callable[Concatenate[AsyncSession, Effects, Principal, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Awaitable[T]:
        """`command(session, effects, actor, *args, **kwargs)`."""
        return command(self.session, self.effects, self.actor, *args, **kwargs)


def provide_command(
    db_session: AsyncSession, effects: Effects, actor: Principal, now: dt.datetime
) -> Command:
    return Command(db_session, effects, actor, now)


def form_post(path: str, *roles: str, **options: Any) -> HTTPRouteHandler:
    """The route of a page's form post for `roles`: it answers 200 with the fragment to swap
    in, an error included (htmx swaps only 2xx answers), and is no part of the API schema."""
    return post(path, guards=[allow(*roles)], include_in_schema=False, status_code=200, **options)
