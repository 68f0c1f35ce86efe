"""What happens after a change to appointments, schedules or records is committed.

Domain functions commit, then call `Effects.appointments_changed` (or `schedule_changed`,
`record_uploaded`) in the same code path, so no write can forget to invalidate the
availability cache or to publish the live update. Payloads carry ids and days, never
patient data.

The invalidation and the live-update messages go to Redis in one pipeline: one round trip
after each change instead of one per command, and Redis runs them in order, so a screen
that hears a message and re-reads the cache never finds the old value.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from app.scheduling import slots

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AppointmentChange:
    """One appointment changed: which doctor-days and clinic-days it touched."""

    appointment_id: int
    doctor_id: int
    clinic_id: int
    days: tuple[dt.date, ...]
    # booked, rescheduled, cancelled, checked_in, completed, no_show; a waitlist hold
    # offered or released (app/waitlist/offers.py)
    action: str
    patient_id: int | None = None  # whose "my appointments" page follows the change


DoctorDays = Sequence[tuple[int, dt.date]]
# Queue commands on the pipeline that carries the invalidation (live-update publishing).
Publisher = Callable[[Pipeline, Sequence[AppointmentChange]], None]
SchedulePublisher = Callable[[Pipeline, DoctorDays], None]
RecordPublisher = Callable[[Pipeline, int, int], None]  # patient id, record id
WaitlistPublisher = Callable[[Pipeline, Sequence[int]], None]  # clinic ids
# Anything else, run after the pipeline (asking for a notification dispatch, a refill).
Listener = Callable[[Sequence[AppointmentChange]], Awaitable[None]]
ScheduleListener = Callable[[DoctorDays], Awaitable[None]]


@dataclass
class Effects:
    """After-commit side effects. Later modules (live updates, notifications) subscribe
    through `publishers` and `listeners` without booking code knowing them."""

    redis: Redis
    publishers: list[Publisher] = field(default_factory=list)
    schedule_publishers: list[SchedulePublisher] = field(default_factory=list)
    record_publishers: list[RecordPublisher] = field(default_factory=list)
    waitlist_publishers: list[WaitlistPublisher] = field(default_factory=list)
    # Visit-type edits reach the open slot pages of these days ahead (the booking horizon;
    # set when live updates are wired): every doctor-day a page may show bookable times of.
    type_publishers: list[SchedulePublisher] = field(default_factory=list)
    live_days: int = 0
    listeners: list[Listener] = field(default_factory=list)
    schedule_listeners: list[ScheduleListener] = field(default_factory=list)

    async def appointments_changed(self, changes: Sequence[AppointmentChange]) -> None:
        if not changes:
            return
        days = [(c.doctor_id, day) for c in changes for day in c.days]
        await self._send(
            days,
            days,
            lambda pipe: [p(pipe, changes) for p in self.publishers],
        )
        for listener in self.listeners:
            await listener(changes)

    async def schedule_changed(self, doctor_days: DoctorDays) -> None:
        if not doctor_days:
            return
        await self._send(
            doctor_days,
            doctor_days,
            lambda pipe: [p(pipe, doctor_days) for p in self.schedule_publishers],
        )
        for listener in self.schedule_listeners:
            await listener(doctor_days)

    async def visit_types_changed(self, doctor_ids: Sequence[int]) -> None:
        """A committed change to these doctors' visit types: every cached day of their
        types is forgotten, then (same pipeline, so a page that hears it reads the new
        shape) their open slot pages are told, day by day, up to `live_days` ahead."""
        today = dt.datetime.now(dt.UTC).date()
        days = [today + dt.timedelta(days=i) for i in range(-1, self.live_days + 2)]
        doctor_days = [(d, day) for d in sorted(set(doctor_ids)) for day in days]
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                slots.queue_types_invalidation(pipe, doctor_ids)
                for publish in self.type_publishers:
                    publish(pipe, doctor_days)
                await pipe.execute()
        except RedisError as exc:
            log.error("after-commit invalidation failed for visit types of %s: %s", doctor_ids, exc)

    async def record_uploaded(self, patient_id: int, record_id: int) -> None:
        """A committed upload: open records panels hear of it (nothing is cached)."""
        await self._send(
            f"record {record_id}",
            [],
            lambda pipe: [p(pipe, patient_id, record_id) for p in self.record_publishers],
        )

    async def waitlist_changed(self, clinic_ids: Sequence[int]) -> None:
        """A committed change to these clinics' waitlists (joined, left, offered, accepted,
        declined, lapsed): the desk's open waitlist pages hear of it (nothing is cached)."""
        if not clinic_ids:
            return
        await self._send(
            f"waitlists of clinics {list(clinic_ids)}",
            [],
            lambda pipe: [p(pipe, clinic_ids) for p in self.waitlist_publishers],
        )

    async def _send(
        self, what: object, doctor_days: DoctorDays, publish: Callable[[Pipeline], object]
    ) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                if doctor_days:
                    slots.queue_invalidation(pipe, doctor_days)
                publish(pipe)
                await pipe.execute()  # an empty pipeline sends nothing
        except RedisError as exc:
            # The cache's TTL bounds a missed invalidation; open screens resync when they
            # reconnect. The change itself is committed: never fail the request for this.
            log.error("after-commit invalidation/publish failed for %s: %s", what, exc)
