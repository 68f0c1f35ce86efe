"""Dependencies resolved in order (app/web/sequential_dependencies.py): the same answers,
errors and cleanups as Litestar's task groups, in the request's own task, and a guard
against a changed Litestar."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import AsyncIterator

from litestar import Litestar, get
from litestar._kwargs.kwargs_model import KwargsModel
from litestar.di import Provide
from litestar.exceptions import PermissionDeniedException
from litestar.testing import TestClient

from app.web import sequential_dependencies

# The source of the Litestar method install() replaces (litestar 2.25.0). When an upgrade
# changes it, read the new one: does the loop in resolve_in_order still do what it does?
LITESTAR_RESOLVE_SHA256 = "f5e60119abf69eff695b2287a6e46a44688f06a70157c4292243fa09080e44fa"


def test_litestar_method_is_the_one_replaced() -> None:
    source = inspect.getsource(sequential_dependencies.LITESTAR_RESOLVE)
    assert hashlib.sha256(source.encode()).hexdigest() == LITESTAR_RESOLVE_SHA256


def _app(events: list[str], tasks: list[object]) -> Litestar:
    async def session() -> AsyncIterator[str]:
        tasks.append(asyncio.current_task())
        events.append("session opened")
        yield "session"
        events.append("session closed")

    async def actor() -> str:  # resolved beside `session`: in a task group, each in a task
        tasks.append(asyncio.current_task())
        return "actor"

    def refused() -> str:
        raise PermissionDeniedException("no")

    def later(session: str, actor: str) -> str:  # the next level: needs both
        return f"{session}+{actor}"

    @get("/ok")
    async def ok(session: str, actor: str, later: str) -> dict[str, str]:
        tasks.append(asyncio.current_task())
        return {"session": session, "actor": actor, "later": later}

    @get("/refused", sync_to_thread=False)
    def refuse(session: str, actor: str, refused: str) -> str:
        return refused

    return Litestar(
        route_handlers=[ok, refuse],
        dependencies={
            "session": Provide(session),
            "actor": Provide(actor),
            "refused": Provide(refused, sync_to_thread=False),
            "later": Provide(later, sync_to_thread=False),
        },
    )


def test_in_order_same_answers_errors_and_cleanups() -> None:
    sequential_dependencies.install()
    assert KwargsModel.resolve_dependencies is sequential_dependencies.resolve_in_order
    events: list[str] = []
    tasks: list[object] = []
    with TestClient(_app(events, tasks)) as client:
        answer = client.get("/ok")
        assert answer.status_code == 200
        assert answer.json() == {"session": "session", "actor": "actor", "later": "session+actor"}
        assert events == ["session opened", "session closed"]
        # Both dependencies and the handler ran in the request's own task: no task group.
        assert len(tasks) == 3 and tasks[0] is tasks[1] is tasks[2]
        # A failing dependency answers its own status, as in a task group. (Litestar's
        # method, too, drops the cleanup group on an error: a generator opened beside a
        # failing dependency is not closed by either. None of medbook's is a generator.)
        assert client.get("/refused").status_code == 403
