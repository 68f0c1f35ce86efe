"""Request dependencies resolved one after another instead of in an anyio task group.

Litestar resolves the dependencies of one level that do not depend on each other
concurrently: an anyio task group with a task per dependency, for every request whose
handler takes two or more (booking takes five: the session, effects, actor, rules, now).
Ours are plain functions that return at once (`app/routes/deps.py`, and the session
provider does no I/O), so the concurrency buys nothing and the task group costs tens of
microseconds per request (bench/README.md, "Figures behind the code"). `install()` swaps
`KwargsModel.resolve_dependencies` for a loop over the same batches, in the same order of
levels, with the same cleanup group; an error propagates as the task group's first one
did. `tests/unit/test_sequential_dependencies.py` fails when Litestar's method changes, so
an upgrade is looked at before this stays in place.
"""

from __future__ import annotations

from typing import Any

from litestar._kwargs.cleanup import DependencyCleanupGroup
from litestar._kwargs.dependencies import resolve_dependency
from litestar._kwargs.kwargs_model import KwargsModel
from litestar.connection import ASGIConnection

LITESTAR_RESOLVE = KwargsModel.resolve_dependencies


async def resolve_in_order(
    self: KwargsModel, connection: ASGIConnection, kwargs: dict[str, Any]
) -> DependencyCleanupGroup:
    """Every batch's dependencies, one at a time (a batch's members never need each other)."""
    cleanup_group = DependencyCleanupGroup()
    for batch in self.dependency_batches:
        for dependency in batch:
            await resolve_dependency(dependency, connection, kwargs, cleanup_group)
    return cleanup_group


def install() -> None:
    """Resolve every route's dependencies in order (idempotent; process-wide)."""
    KwargsModel.resolve_dependencies = resolve_in_order  # type: ignore[method-assign]
