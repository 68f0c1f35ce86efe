"""Housekeeping jobs: a heartbeat the readiness probe can report, and the daily sweep of
stray documents (an upload killed between storing its object and committing its row)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from app.records import records

log = logging.getLogger(__name__)

HEARTBEAT_KEY = "medbook:worker:heartbeat"
HEARTBEAT_TTL_SECONDS = 180


async def heartbeat(ctx: dict[str, Any]) -> str:
    """Record that a worker ran a job just now (cron, every minute; harmless to repeat)."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    await ctx["redis"].set(HEARTBEAT_KEY, now, ex=HEARTBEAT_TTL_SECONDS)
    return now


async def sweep_documents(ctx: dict[str, Any]) -> dict[str, Any]:
    """Daily: delete stored documents that no record names and that are older than an hour
    (younger ones may still be committing), and log records whose document is missing.
    Idempotent: a second run finds nothing left to delete."""
    async with ctx["sessions"]() as session:
        report = await records.sweep_strays(session, ctx["documents"], now=dt.datetime.now(dt.UTC))
    if report.objects_deleted:
        log.warning("deleted %d stray documents", len(report.objects_deleted))
    if report.rows_without_object:
        log.error(
            "records without a stored document (restore them from backup): %s",
            report.rows_without_object,
        )
    return {
        "objects_deleted": report.objects_deleted,
        "rows_without_object": report.rows_without_object,
    }
