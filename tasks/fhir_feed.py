"""The SMART Scheduling Links feed job: republish Location, Schedule and Slot NDJSON and
their `$bulk-publish` manifest (app/fhir/feed.py).

Cron every 10 minutes: a portal polling the manifest sees free times at most that old
(booking still checks the slot itself, so a stale free slot answers 409, never a double
booking). Idempotent: each run writes a fresh generation and keeps the one before;
two runs at once only leave one more generation, removed by the next run. ctx carries
`services` (the slot cache and the export store), `sessions` and `settings`.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from app.appointments.rules import BookingRules
from app.fhir import feed
from app.fhir.bundles import base_url

log = logging.getLogger(__name__)

FEED_TIMEOUT_SECONDS = 540  # shorter than the cron period: runs do not pile up
FEED_RETRIES = 2


async def publish_fhir_feed(ctx: dict[str, Any]) -> dict[str, Any]:
    """Build the feed from the availability cache and publish it."""
    services = ctx["services"]
    settings = ctx["settings"]
    now = dt.datetime.now(dt.UTC)
    rules = BookingRules(
        min_notice=dt.timedelta(minutes=settings.booking_min_notice_minutes),
        horizon=dt.timedelta(days=settings.booking_horizon_days),
        max_future_per_doctor=settings.max_future_appointments_per_doctor,
    )
    async with ctx["sessions"]() as session:
        files = await feed.build(
            session, services.slot_cache, rules=rules, now=now, public_origin=settings.public_origin
        )
    manifest = await feed.publish(
        services.exports, files, now=now, base=base_url(settings.public_origin)
    )
    lines = sum(f.body.count(b"\n") for f in files)
    log.info("FHIR feed published: %d files, %d resources", len(files), lines)
    return {"files": len(manifest["output"]), "resources": lines}
