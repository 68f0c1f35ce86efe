"""What happens after a change to appointments or schedules is committed.

Domain functions commit, then call `Effects.appointments_changed` (or `schedule_changed`)
in the same code path, so no write can forget to invalidate the availability cache or,
once live updates land, to publish. Payloads carry ids and days, never patient data.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from app import slots


@dataclass(frozen=True, slots=True)
class AppointmentChange:
    """One appointment changed: which doctor-days and clinic-days it touched."""

    appointment_id: int
    doctor_id: int
    clinic_id: int
    days: tuple[dt.date, ...]
    action: str  # booked, rescheduled, cancelled, checked_in, completed, no_show


Listener = Callable[[Sequence[AppointmentChange]], Awaitable[None]]
ScheduleListener = Callable[[Sequence[tuple[int, dt.date]]], Awaitable[None]]


@dataclass
class Effects:
    """After-commit side effects. `listeners` lets later modules (live updates,
    notifications) subscribe without booking code knowing them."""

    redis: Redis
    listeners: list[Listener] = field(default_factory=list)
    schedule_listeners: list[ScheduleListener] = field(default_factory=list)

    async def appointments_changed(self, changes: Sequence[AppointmentChange]) -> None:
        if not changes:
            return
        await slots.invalidate(self.redis, [(c.doctor_id, day) for c in changes for day in c.days])
        for listener in self.listeners:
            await listener(changes)

    async def schedule_changed(self, doctor_days: Sequence[tuple[int, dt.date]]) -> None:
        await slots.invalidate(self.redis, doctor_days)
        for listener in self.schedule_listeners:
            await listener(doctor_days)
