"""Route guards called with the route handler itself, not a copy made per guard call.

Litestar's `BaseRouteHandler.authorize_connection` passes each guard `copy(self)`: a
shallow copy of the handler (a few dozen attributes) on every guarded request, so that a
guard cannot change the handler it is given. Ours (`app/web/guards.py`: `allow`) only
read the connection's user and never touch the handler, so the copy buys nothing and was
a visible share of a cached availability answer's CPU (bench/README.md, cpu17e).
`install()` swaps the method for the same loop without the copy; `tests/unit/
test_uncopied_guards.py` fails when Litestar's method changes, so an upgrade is looked at
before this stays in place.
"""

from __future__ import annotations

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

LITESTAR_AUTHORIZE = BaseRouteHandler.authorize_connection


async def authorize_uncopied(self: BaseRouteHandler, connection: ASGIConnection) -> None:
    """Run every guard in scope, in Litestar's order, each given the handler itself."""
    for guard in self.resolve_guards():
        await guard(connection, self)  # type: ignore[misc]


def install() -> None:
    """Call every route's guards without a copy of its handler (idempotent; process-wide)."""
    BaseRouteHandler.authorize_connection = authorize_uncopied  # type: ignore[method-assign]
