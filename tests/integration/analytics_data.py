"""Random appointments, templates and exceptions for analytics tests, and the rollups
computed the slow, obvious way in Python (app.scheduling.availability.day_slots for minutes)."""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter, defaultdict
from zoneinfo import ZoneInfo

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.scheduling.availability import Interval, TemplateRange, day_slots
from db.models import Appointment, Clinic, Doctor, ScheduleException, ScheduleTemplate

STATUSES = ("booked", "checked_in", "completed", "cancelled", "no_show")


def lead_bucket(delta: dt.timedelta) -> int:
    days = delta / dt.timedelta(days=1)
    for bucket, limit in enumerate((1, 3, 8, 15, 31)):
        if days < limit:
            return bucket
    return 5


async def add_odd_schedules(session: AsyncSession, world) -> None:
    """Templates that stress the SQL grid: validity windows, night ranges across DST
    changes (Berlin 29 Mar / 25 Oct 2026, New York 8 Mar / 1 Nov 2026), 20-minute slots,
    a leave and a clinic closure that cut slots in half."""
    night = Doctor(clinic_id=world.clinic_id, full_name="Dr. Night", specialty="ER")
    ny_night = Doctor(clinic_id=world.other_clinic_id, full_name="Dr. NY Night", specialty="ER")
    session.add_all([night, ny_night])
    await session.flush()
    session.add_all(
        [
            ScheduleTemplate(
                doctor_id=night.id, weekday=6, start_time=dt.time(1), end_time=dt.time(4),
                slot_minutes=20,
            ),
            ScheduleTemplate(
                doctor_id=ny_night.id, weekday=6, start_time=dt.time(0, 30),
                end_time=dt.time(3, 30), slot_minutes=20,
            ),
            ScheduleTemplate(
                doctor_id=night.id, weekday=2, start_time=dt.time(9), end_time=dt.time(11, 50),
                slot_minutes=25, valid_from=dt.date(2026, 3, 4), valid_to=dt.date(2026, 3, 18),
            ),
            ScheduleException(
                clinic_id=world.clinic_id, doctor_id=world.doctor_id, kind="leave",
                starts_at=dt.datetime(2026, 3, 10, 9, 45, tzinfo=dt.UTC),
                ends_at=dt.datetime(2026, 3, 12, 10, 5, tzinfo=dt.UTC),
            ),
            ScheduleException(
                clinic_id=world.other_clinic_id, doctor_id=None, kind="closure",
                starts_at=dt.datetime(2026, 3, 8, 14, 10, tzinfo=dt.UTC),
                ends_at=dt.datetime(2026, 3, 8, 18, 0, tzinfo=dt.UTC),
            ),
        ]
    )  # fmt: skip
    await session.commit()


async def add_random_appointments(
    session: AsyncSession, world, days: list[dt.date], seed: int, per_day: int = 6
) -> None:
    """Non-overlapping appointments on the day-slot grid of the world's two doctors, with
    every status, booking times up to 40 days before and cancellation times between."""
    rng = random.Random(seed)
    doctors = [(world.doctor_id, world.clinic_id, ZoneInfo("Europe/Berlin"))]
    doctors.append((world.other_doctor_id, world.other_clinic_id, ZoneInfo("America/New_York")))
    for doctor_id, clinic_id, tz in doctors:
        for day in days:
            for slot in rng.sample(range(24), per_day):
                local = dt.datetime.combine(day, dt.time(8), tzinfo=tz) + dt.timedelta(
                    minutes=30 * slot
                )
                start = local.astimezone(dt.UTC)
                status = rng.choice(STATUSES)
                created = start - dt.timedelta(minutes=rng.randint(30, 40 * 1440))
                cancelled = (
                    created + (start - created) * rng.random() if status == "cancelled" else None
                )
                session.add(
                    Appointment(
                        doctor_id=doctor_id,
                        patient_id=rng.choice(world.patients),
                        clinic_id=clinic_id,
                        starts_at=start,
                        ends_at=start + dt.timedelta(minutes=30),
                        status=status,
                        created_at=created,
                        updated_at=created,
                        cancelled_at=cancelled,
                    )
                )
    await session.commit()


async def expected_rollups(
    session: AsyncSession, days: list[dt.date]
) -> tuple[dict[tuple, dict[str, int]], dict[tuple, dict[str, int]]]:
    """(daily, buckets) as the rollup tables should hold them for these local days."""
    wanted = set(days)
    clinics = {c.id: ZoneInfo(c.timezone) for c in await session.scalars(select(Clinic))}
    doctors = {d.id: d for d in await session.scalars(select(Doctor))}
    templates: dict[int, list[TemplateRange]] = defaultdict(list)
    for t in await session.scalars(select(ScheduleTemplate)):
        templates[t.doctor_id].append(
            TemplateRange(
                t.weekday, t.start_time, t.end_time, t.slot_minutes, t.valid_from, t.valid_to
            )
        )
    exceptions = list(await session.scalars(select(ScheduleException)))
    daily: dict[tuple, dict[str, int]] = defaultdict(Counter)
    for doctor in doctors.values():
        if not doctor.active:
            continue
        tz = clinics[doctor.clinic_id]
        blocked = [
            Interval(e.starts_at, e.ends_at)
            for e in exceptions
            if e.doctor_id == doctor.id or (e.doctor_id is None and e.clinic_id == doctor.clinic_id)
        ]
        for day in days:
            slots = day_slots(day, templates[doctor.id], tz, blocked=blocked)
            minutes = sum(
                int((s.end - s.start).total_seconds() // 60) for s in slots if s.available
            )
            if minutes:
                daily[(doctor.clinic_id, day, doctor.id)]["available_minutes"] += minutes
    buckets: dict[tuple, dict[str, int]] = defaultdict(Counter)
    for a in await session.scalars(select(Appointment)):
        tz = clinics[a.clinic_id]
        local = a.starts_at.astimezone(tz)
        if local.date() not in wanted:
            continue
        row = daily[(a.clinic_id, local.date(), a.doctor_id)]
        row[a.status] += 1
        if a.status != "cancelled":
            row["booked_minutes"] += int((a.ends_at - a.starts_at).total_seconds() // 60)
        keys = [("hour", local.hour), ("lead_time", lead_bucket(a.starts_at - a.created_at))]
        if a.status == "cancelled" and a.cancelled_at is not None:
            keys.append(("cancel_lead", lead_bucket(a.starts_at - a.cancelled_at)))
        for dimension, bucket in keys:
            counts = buckets[(a.clinic_id, local.date(), dimension, bucket)]
            counts["appointments"] += a.status != "cancelled"
            counts["attended"] += a.status in ("checked_in", "completed")
            counts["no_show"] += a.status == "no_show"
            counts["cancelled"] += a.status == "cancelled"
    return _dense(daily, DAILY_COLUMNS), _dense(buckets, BUCKET_COLUMNS)


DAILY_COLUMNS = (
    "booked", "checked_in", "completed", "cancelled", "no_show", "available_minutes",
    "booked_minutes",
)  # fmt: skip
BUCKET_COLUMNS = ("appointments", "attended", "no_show", "cancelled")


def _dense(rows: dict[tuple, Counter], columns: tuple[str, ...]) -> dict[tuple, dict[str, int]]:
    return {k: {c: int(v.get(c, 0)) for c in columns} for k, v in rows.items()}


async def stored_rollups(
    session: AsyncSession, days: list[dt.date]
) -> tuple[dict[tuple, dict[str, int]], dict[tuple, dict[str, int]]]:
    daily = {
        (r.clinic_id, r.day, r.doctor_id): {c: getattr(r, c) for c in DAILY_COLUMNS}
        for r in await session.execute(
            text("SELECT * FROM clinic_daily_stats WHERE day = ANY(:days)"), {"days": days}
        )
    }
    buckets = {
        (r.clinic_id, r.day, r.dimension, r.bucket): {c: getattr(r, c) for c in BUCKET_COLUMNS}
        for r in await session.execute(
            text("SELECT * FROM clinic_bucket_stats WHERE day = ANY(:days)"), {"days": days}
        )
    }
    return daily, buckets
