"""SAQ jobs that run the waitlist (app/waitlist/offers.py): refills, expiries, the sweeper.

- `refill_waitlist` offers a doctor-day's free slots to the waitlist. Enqueued after every
  commit that may free a slot (a cancellation, a move, a released hold, a schedule change:
  app/services.py), and by the sweeper.
- `expire_offer` is scheduled for the moment an offer lapses: it releases the hold, and the
  release asks for the next refill, so the slot reaches the next entry within seconds
  without any request arriving.
- `sweep_waitlist` (cron, every minute) releases every lapsed hold and refills the
  doctor-days of recent cancellations: a worker killed between an offer and its expiry,
  or Redis losing the scheduled job, leaves a hold at most a minute past its time, and a
  process lost between a cancellation's commit and its enqueue delays that slot's offer
  by at most a minute.

Every job is idempotent: a refill takes turns per doctor and the database refuses a
second hold on a slot; a release changes only what is still open and lapsed.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from typing import Any

from saq import Queue

from app.appointments.rules import BookingRules
from app.waitlist import offers
from app.waitlist.offers import Offered

# Cancellations this recent are refilled again by the sweeper (two cron periods and a bit).
SWEEP_LOOKBACK = dt.timedelta(minutes=3)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def bookable_days(
    doctor_days: Iterable[tuple[int, dt.date]], today: dt.date, horizon: dt.timedelta
) -> dict[int, list[dt.date]]:
    """The days worth a refill, per doctor: those a booking can reach (a day either side
    of UTC's today, for the clinics' zones), not a past year a closure happens to span."""
    lo, hi = today - dt.timedelta(days=1), today + horizon + dt.timedelta(days=1)
    found: dict[int, set[dt.date]] = {}
    for doctor_id, day in doctor_days:
        if lo <= day <= hi:
            found.setdefault(doctor_id, set()).add(day)
    return {doctor_id: sorted(days) for doctor_id, days in found.items()}


async def enqueue_refills(
    queue: Queue,
    doctor_days: Iterable[tuple[int, dt.date]],
    freed_at: dt.datetime,
    horizon: dt.timedelta,
) -> None:
    """One refill job per doctor, for their days a booking can reach. Keyed by the
    millisecond: a change that comes while a refill of the same doctor runs gets a refill
    of its own (the running one may have read before it), and a burst of changes in one
    millisecond is one job."""
    stamp = int(time.time() * 1000)
    for doctor_id, days in bookable_days(doctor_days, freed_at.date(), horizon).items():
        await queue.enqueue(
            "refill_waitlist",
            key=f"waitlist:refill:{doctor_id}:{stamp}",
            doctor_id=doctor_id,
            days=[day.isoformat() for day in days],
            freed_at=freed_at.isoformat(),
            timeout=120,
            retries=3,
            retry_delay=1.0,
            retry_backoff=10.0,
            ttl=300,
        )


async def enqueue_expiries(queue: Queue, made: Iterable[Offered]) -> None:
    """An expiry job for each offer, scheduled for the instant it lapses."""
    for offer in made:
        await queue.enqueue(
            "expire_offer",
            key=f"waitlist:expire:{offer.offer_id}",
            offer_id=offer.offer_id,
            scheduled=int(offer.expires_at.timestamp()) + 1,
            timeout=60,
            retries=3,
            retry_delay=1.0,
            retry_backoff=10.0,
            ttl=3600,
        )


async def refill_waitlist(
    ctx: dict[str, Any], *, doctor_id: int, days: list[str], freed_at: str | None = None
) -> int:
    """Offer the free slots of a doctor's days, day by day; returns the offers made."""
    services = ctx["services"]
    rules = BookingRules.from_settings(services.settings)
    hold = dt.timedelta(seconds=services.settings.waitlist_hold_seconds)
    made: list[Offered] = []
    for day in days:
        async with services.sessions() as session:
            made += await offers.refill(
                session,
                services.effects,
                doctor_id=doctor_id,
                day=dt.date.fromisoformat(day),
                rules=rules,
                hold=hold,
                now=_now(),
                freed_at=dt.datetime.fromisoformat(freed_at) if freed_at else None,
            )
    await enqueue_expiries(services.queue, made)
    return len(made)


async def expire_offer(ctx: dict[str, Any], *, offer_id: int) -> int:
    """Release this offer's hold if it has lapsed (nothing if accepted or declined)."""
    services = ctx["services"]
    async with services.sessions() as session:
        released = await offers.release_lapsed(
            session, services.effects, now=_now(), offer_id=offer_id
        )
    return len(released)


async def sweep_waitlist(ctx: dict[str, Any]) -> int:
    """Release every lapsed hold; refill the doctor-days of recent cancellations."""
    services = ctx["services"]
    now = _now()
    async with services.sessions() as session:
        released = await offers.release_lapsed(session, services.effects, now=now)
    async with services.sessions() as session:
        freed = await offers.recently_freed(session, since=now - SWEEP_LOOKBACK, now=now)
    if freed:
        horizon = BookingRules.from_settings(services.settings).horizon
        await enqueue_refills(services.queue, freed, now, horizon)
    return len(released) + len(freed)
