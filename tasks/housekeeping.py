"""Jobs that keep the worker observable: a heartbeat the readiness probe can report."""

from __future__ import annotations

import datetime as dt
from typing import Any

HEARTBEAT_KEY = "medbook:worker:heartbeat"
HEARTBEAT_TTL_SECONDS = 180


async def heartbeat(ctx: dict[str, Any]) -> str:
    """Record that a worker ran a job just now (cron, every minute; harmless to repeat)."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    await ctx["redis"].set(HEARTBEAT_KEY, now, ex=HEARTBEAT_TTL_SECONDS)
    return now
