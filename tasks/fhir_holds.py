"""SAQ jobs that release the holds of `Appointment/$hold` (app/fhir/holds.py).

- `expire_fhir_hold` is scheduled for the moment a hold lapses: it deletes the row, so the
  slot is free again (and offered to the waitlist) without any request arriving.
- `sweep_fhir_holds` (cron, every minute) releases every lapsed hold: a worker killed
  before a hold's expiry job ran, or Redis losing it, leaves a hold at most a minute past
  its time. (A new `$hold` of the doctor releases their lapsed ones first anyway.)

Both are idempotent: a release deletes only a hold that is still held and lapsed.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from saq import Queue

from app.fhir import holds

log = logging.getLogger(__name__)


async def enqueue_expiry(queue: Queue, hold_id: int, expires_at: dt.datetime) -> None:
    """Schedule the hold's release for the instant it lapses. Never fails the caller (the
    hold is committed): the sweeper releases it within a minute of its time anyway."""
    try:
        await queue.enqueue(
            "expire_fhir_hold",
            key=f"fhir:hold:expire:{hold_id}",
            hold_id=hold_id,
            scheduled=int(expires_at.timestamp()) + 1,
            timeout=60,
            retries=3,
            retry_delay=1.0,
            retry_backoff=10.0,
            ttl=3600,
        )
    except Exception as exc:
        log.warning("could not schedule the expiry of hold %s: %s", hold_id, exc)


async def expire_fhir_hold(ctx: dict[str, Any], *, hold_id: int) -> int:
    """Release this hold if it has lapsed (nothing if it was booked)."""
    services = ctx["services"]
    async with services.sessions() as session:
        released = await holds.release_lapsed(
            session, services.effects, now=dt.datetime.now(dt.UTC), appointment_id=hold_id
        )
    return len(released)


async def sweep_fhir_holds(ctx: dict[str, Any]) -> int:
    """Release every lapsed hold of `$hold`."""
    services = ctx["services"]
    async with services.sessions() as session:
        released = await holds.release_lapsed(
            session, services.effects, now=dt.datetime.now(dt.UTC)
        )
    return len(released)
