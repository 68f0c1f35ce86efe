"""SAQ jobs for analytics: rollup refreshes (cron), CSV exports and their expiry.

Each job is idempotent (rollups are upserts of recomputed days; an export that finished is
left alone, one that did not starts over), has an explicit timeout and retries, and a
deterministic key (cron jobs: SAQ keys them by function and schedule; exports by id).
ctx carries `engine` (primary), `analytics_engine` (the read replica when
DATABASE_READ_URL is set, with the long statement timeout), `rollup_engine` (primary, long
timeout), `exports` (the process's export store, Services.exports: one S3 client per
process) and `settings`; see tasks/worker.py.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from saq import Queue

from app.analytics import exports, rollups

log = logging.getLogger(__name__)

EXPORT_TIMEOUT_SECONDS = 3600
EXPORT_RETRIES = 3


async def refresh_rollups(ctx: dict[str, Any]) -> dict[str, Any]:
    """Every few minutes: today in every time zone, plus every day with an appointment
    booked or changed since the previous run."""
    async with ctx["rollup_engine"].begin() as conn:
        result = await rollups.refresh_recent(conn)
    log.info("rollups refreshed for %d days", len(result.days))
    return {"days": [d.isoformat() for d in result.days], "until": result.until.isoformat()}


async def close_days(ctx: dict[str, Any]) -> dict[str, Any]:
    """Nightly (12:30 UTC, when yesterday has ended in every zone): the last two days once
    more, closed; and the bookable future, so template and leave edits show up within a
    day (appointment changes are picked up every few minutes by `refresh_rollups`)."""
    today = dt.datetime.now(dt.UTC).date()
    horizon = ctx["settings"].booking_horizon_days
    chunks = rollups.day_chunks(today - dt.timedelta(days=2), today + dt.timedelta(days=horizon))
    for days in chunks:
        async with ctx["rollup_engine"].begin() as conn:  # one short transaction a week
            await rollups.refresh_days(conn, days)
    return {"from": chunks[0][0].isoformat(), "to": chunks[-1][-1].isoformat()}


async def run_export(ctx: dict[str, Any], *, export_id: str) -> dict[str, Any]:
    """Write one CSV export (see app.analytics.exports.run_export)."""
    view = await exports.run_export(
        ctx["engine"],
        ctx["analytics_engine"],
        ctx["exports"],
        exports.work_dir(ctx["settings"]),
        export_id,
    )
    return {"status": view.status, "rows": view.rows_done}


async def purge_exports(ctx: dict[str, Any]) -> int:
    """Hourly: delete expired export files."""
    return await exports.purge_expired(ctx["engine"], ctx["exports"], dt.datetime.now(dt.UTC))


async def enqueue_export(queue: Queue, export_id: str) -> None:
    """Queue the export's job; the key makes a double submit one job."""
    await queue.enqueue(
        "run_export",
        export_id=export_id,
        key=f"export:{export_id}",
        timeout=EXPORT_TIMEOUT_SECONDS,
        retries=EXPORT_RETRIES,
        retry_delay=5.0,
        retry_backoff=True,
    )
