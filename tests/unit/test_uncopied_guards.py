"""Guards called with the route handler itself (app/web/uncopied_guards.py): the same
refusals and admissions as Litestar's copies, no copy made, and a guard against a changed
Litestar."""

from __future__ import annotations

import hashlib
import inspect

from litestar import Litestar, get
from litestar.connection import ASGIConnection
from litestar.exceptions import PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.testing import TestClient

from app.web import uncopied_guards

# The source of the Litestar method install() replaces (litestar 2.25.0). When an upgrade
# changes it, read the new one: does authorize_uncopied still run the same guards?
LITESTAR_AUTHORIZE_SHA256 = "38b2c6f9f875778ee7338ddd7c6d2c227d4017d9697ecffbb61aa89d5c30c071"


def test_litestar_method_is_the_one_replaced() -> None:
    source = inspect.getsource(uncopied_guards.LITESTAR_AUTHORIZE)
    assert hashlib.sha256(source.encode()).hexdigest() == LITESTAR_AUTHORIZE_SHA256


def test_guards_run_in_order_on_the_handler_itself() -> None:
    uncopied_guards.install()
    assert BaseRouteHandler.authorize_connection is uncopied_guards.authorize_uncopied
    seen: list[tuple[str, object]] = []

    async def first(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
        seen.append(("first", handler))

    async def second(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
        seen.append(("second", handler))
        if connection.query_params.get("refuse"):
            raise PermissionDeniedException("no")

    @get("/guarded", guards=[first, second], sync_to_thread=False)
    def guarded() -> str:
        return "in"

    with TestClient(Litestar(route_handlers=[guarded], guards=[])) as client:
        answer = client.get("/guarded")
        assert answer.status_code == 200 and answer.text == "in"
        assert [name for name, _ in seen] == ["first", "second"]
        # The handler the route serves with, not a copy of it.
        handler = seen[0][1]
        assert seen[1][1] is handler
        assert client.app.route_handler_method_map["/guarded"]["GET"] is handler
        seen.clear()
        refused = client.get("/guarded", params={"refuse": "1"})
        assert refused.status_code == 403
        assert [name for name, _ in seen] == ["first", "second"]
