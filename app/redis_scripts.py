"""Lua scripts run by their SHA (EVALSHA), on whichever Redis client is passed in (redis-py's
or `app.pipelined_redis.PipelinedRedis`)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from redis.exceptions import NoScriptError

from app.pipelined_redis import Commands


class Script:
    """A Lua script sent by its SHA; loaded into a server that does not know it yet
    (after a restart or a flush) and sent again.

    One EVALSHA through `execute_command`: redis-py's own script objects add an import,
    a deprecation wrapper and argument copies to every call, on the route every API
    request takes."""

    def __init__(self, body: str) -> None:
        self.body = body
        self.sha = hashlib.sha1(body.encode(), usedforsecurity=False).hexdigest()

    async def __call__(
        self, redis: Commands, keys: Sequence[str], args: Iterable[bytes | str | int | float] = ()
    ) -> Any:
        try:
            return await redis.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await redis.execute_command("SCRIPT", "LOAD", self.body)
            return await redis.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
