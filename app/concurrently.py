"""Awaiting several things at once, all or none.

`asyncio.gather` raises the first failure at once and leaves the other awaitables running:
a request that answers 503 because one report timed out would still have its other
queries in flight on the request's session while the session is closed under them
("another operation is in progress", raised after the answer started). `concurrently`
cancels the others and waits for them to end before it raises the first failure, so
nothing the request started outlives it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar, overload

A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")


@overload
async def concurrently(a: Coroutine[Any, Any, A], b: Coroutine[Any, Any, B], /) -> tuple[A, B]: ...


@overload
async def concurrently(
    a: Coroutine[Any, Any, A], b: Coroutine[Any, Any, B], c: Coroutine[Any, Any, C], /
) -> tuple[A, B, C]: ...


@overload
async def concurrently(*aws: Coroutine[Any, Any, A]) -> tuple[A, ...]: ...


async def concurrently(*aws: Coroutine[Any, Any, Any]) -> tuple[Any, ...]:
    """The results of `aws` run at once, in order; on a failure the others are cancelled
    and awaited, then the first failure is raised as itself (not as an ExceptionGroup, so
    the web layer's outage and domain-error handlers still recognise it)."""
    tasks: list[asyncio.Task[Any]] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(aw) for aw in aws]
    except BaseExceptionGroup as grouped:
        raise grouped.exceptions[0]  # noqa: B904 (its own cause and traceback kept)
    return tuple(task.result() for task in tasks)
