"""Lua scripts run by their SHA (EVALSHA), on whichever Redis client is passed in."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


class Script:
    """A Lua script registered once per process; redis-py loads it into a server that
    does not know it yet (after a restart or a flush) and retries."""

    def __init__(self, body: str) -> None:
        self.body = body
        self._script: AsyncScript | None = None

    async def __call__(
        self, redis: Redis, keys: Sequence[str], args: Iterable[str | int | float] = ()
    ) -> Any:
        if self._script is None:
            self._script = redis.register_script(self.body)
        return await self._script(keys=list(keys), args=list(args), client=redis)
