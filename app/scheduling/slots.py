"""A doctor's slots for a day or a week: one indexed query, cached in Redis per doctor-day.

Cache design (review C-5). The cached value of a doctor-day is its slots with a `taken`
flag; the bookable window (minimum notice, horizon) depends on *now* and is applied on
every read, so time passing never makes a cached value stale. Every write that can change
a day (booking, cancel, reschedule, status change, template edit, exception) runs
`queue_invalidation()` after its commit (through app/live/effects.py), which bumps the day's
version and deletes the value. A reader that missed notes the version *before* it reads
PostgreSQL and stores its result only if the version is unchanged (one Lua call), so a
computation that raced a write is never cached. The TTL is only a safety net. Concurrent
misses of one key in one process share one computation, if they saw the same versions.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from app.errors import NotFound
from app.i18n import gettext
from app.redis import spread_ttl
from app.redis_scripts import Script
from app.scheduling.availability import (
    Interval,
    TemplateRange,
    Visit,
    day_slots,
    local_day_bounds,
)
from db.models import BLOCKING_SQL, MAX_BUFFER_MINUTES
from db.session import driver_fetchrow

log = logging.getLogger(__name__)

CACHE_TTL_SECONDS = 300
VERSION_TTL_SECONDS = 86400
MAX_DAYS = 14

# One round trip for everything a doctor's days depend on. Each part is an index range:
# templates by (doctor_id, weekday), exceptions by (doctor_id, starts_at) and the clinic's
# (clinic_id, starts_at) partial index, bookings by (doctor_id, starts_at) INCLUDE (...).
# Bookings are at most a day long and their buffers at most MAX_BUFFER_MINUTES (check
# constraints), which bounds the scan; what a booking blocks is its stored span with its
# buffers (`blocked`, in the index's INCLUDE, so the scan stays index-only), for the rows
# `db.models.BLOCKING_SQL` says block a slot (bookings and waitlist holds; unqualified:
# only `appointments` here has a status). The visit
# type asked for (:visit_type_id, NULL for the template's plain slots) comes in the same
# row when it is the doctor's.
# Everything comes back as arrays of plain columns (times, dates, instants), which the
# driver decodes in C: JSON for the templates and range values for the intervals cost
# measurably more Python per miss (bench/README.md). The arrays of one aggregate
# query are in the same row order (every aggregate sees the rows in one pass). An
# aggregate over no rows is NULL (no exceptions, no bookings): read as empty.
_DOCTOR_DAYS = """
SELECT d.clinic_id, c.timezone, d.active,
  t.weekdays, t.starts, t.ends, t.minutes, t.valid_from, t.valid_to,
  x.starts AS blocked_starts, x.ends AS blocked_ends,
  b.starts AS booked_starts, b.ends AS booked_ends,
  v.id, v.name, v.minutes, v.buffer_before_minutes, v.buffer_after_minutes, v.online,
  v.min_notice_minutes, v.horizon_days{extra}
FROM doctors d JOIN clinics c ON c.id = d.clinic_id
LEFT JOIN visit_types v ON v.id = CAST(:visit_type_id AS bigint) AND v.doctor_id = d.id
CROSS JOIN LATERAL (
  SELECT array_agg(t.weekday) AS weekdays, array_agg(t.start_time) AS starts,
         array_agg(t.end_time) AS ends, array_agg(t.slot_minutes) AS minutes,
         array_agg(t.valid_from) AS valid_from, array_agg(t.valid_to) AS valid_to
    FROM doctor_schedule_templates t WHERE t.doctor_id = d.id) t
CROSS JOIN LATERAL (
  SELECT array_agg(e.starts_at) AS starts, array_agg(e.ends_at) AS ends
    FROM (SELECT e.starts_at, e.ends_at FROM schedule_exceptions e
           WHERE e.doctor_id = d.id AND e.starts_at < :hi AND e.ends_at > :lo
          UNION ALL
          SELECT e.starts_at, e.ends_at FROM schedule_exceptions e
           WHERE e.clinic_id = d.clinic_id AND e.doctor_id IS NULL
             AND e.starts_at < :hi AND e.ends_at > :lo) e) x
CROSS JOIN LATERAL (
  SELECT array_agg(lower(a.blocked)) AS starts, array_agg(upper(a.blocked)) AS ends
    FROM appointments a
   WHERE a.doctor_id = d.id AND ({blocking})
     AND a.starts_at >= CAST(:lo AS timestamptz) - interval '1 day {buffer} minutes'
     AND a.starts_at < CAST(:hi AS timestamptz) + interval '{buffer} minutes'
     AND lower(a.blocked) < :hi AND upper(a.blocked) > :lo) b
WHERE d.id = :doctor_id
"""
# The columns of `_DOCTOR_DAYS` before any extra ones.
DOCTOR_DAYS_COLUMNS = 21


def doctor_days_sql(extra_columns: str = "") -> TextClause:
    """The doctor-days query, with `extra_columns` (", expr AS name, ...") appended to its
    select list, so a caller that needs a little more (booking: the patient) still makes
    one round trip. The extra columns follow the first `DOCTOR_DAYS_COLUMNS` of the row."""
    return text(_doctor_days(extra_columns))


def _doctor_days(extra_columns: str) -> str:
    return _DOCTOR_DAYS.format(
        extra=extra_columns, blocking=BLOCKING_SQL, buffer=MAX_BUFFER_MINUTES
    )


DOCTOR_DAYS_SQL = doctor_days_sql()
# The same statement in asyncpg's placeholders, for the cache-miss path (`fetch_doctor_days`).
_DOCTOR_DAYS_NATIVE = re.sub(
    r":(doctor_id|lo|hi|visit_type_id)\b",
    lambda m: {"doctor_id": "$1", "lo": "$2", "hi": "$3", "visit_type_id": "$4"}[m[1]],
    _doctor_days(""),
)


class TypeFacts(msgspec.Struct, frozen=True, array_like=True):
    """A visit type as availability and booking read it (and the cache keeps it with each
    day, so a cache hit knows the type's rules without asking PostgreSQL)."""

    id: int
    name: str
    minutes: int
    buffer_before: int
    buffer_after: int
    online: bool  # patients may book it; otherwise staff only
    min_notice_minutes: int | None  # None: the clinic's
    horizon_days: int | None  # None: the clinic's

    @property
    def visit(self) -> Visit:
        return Visit(self.minutes, self.buffer_before, self.buffer_after)


@dataclass(frozen=True, slots=True)
class DoctorDays:
    """Everything the pure slot computation needs for a span of a doctor's days."""

    doctor_id: int
    clinic_id: int
    timezone: str
    active: bool
    ranges: list[TemplateRange]
    blocked: list[Interval]
    booked: list[Interval]  # what active appointments block: their times with buffers
    visit_type: TypeFacts | None = None  # the type asked for; None: plain slots


class CachedSlot(NamedTuple):
    """A slot as cached: rendered once in clinic-local ISO 8601, so a cache hit does no
    time-zone arithmetic; `starts` (epoch seconds) is for comparing with the window."""

    starts: int
    start_local: str
    end_local: str
    taken: bool
    # Taken because of the doctor's leave or a closure (schedule exception), not a
    # booking: such a slot will not free up. Values cached before it read as False.
    blocked: bool = False

    @property
    def start(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.start_local)

    @property
    def end(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.end_local)


@dataclass(frozen=True, slots=True)
class DaySlots:
    day: dt.date
    slots: list[CachedSlot]


def _ranges(row: Sequence[Any]) -> list[TemplateRange]:
    weekdays, starts, ends, minutes, valid_from, valid_to = row[3:9]
    if weekdays is None:
        return []
    return [
        TemplateRange(*columns)
        for columns in zip(weekdays, starts, ends, minutes, valid_from, valid_to, strict=True)
    ]


def _intervals(starts: list[dt.datetime] | None, ends: list[dt.datetime] | None) -> list[Interval]:
    return [Interval(s, e) for s, e in zip(starts or (), ends or (), strict=True)]


async def load_doctor_days(
    session: AsyncSession | AsyncConnection,
    doctor_id: int,
    lo: dt.datetime,
    hi: dt.datetime,
    visit_type_id: int | None = None,
) -> DoctorDays:
    """Template, exceptions and active bookings of a doctor overlapping [lo, hi), and the
    visit type asked for.

    Raises:
        NotFound: no such doctor, or the visit type is not one of theirs.
    """
    params = {"doctor_id": doctor_id, "lo": lo, "hi": hi, "visit_type_id": visit_type_id}
    row = (await session.execute(DOCTOR_DAYS_SQL, params)).one_or_none()
    return doctor_days_from_row(doctor_id, row, visit_type_id)


async def fetch_doctor_days(
    engine: AsyncEngine,
    doctor_id: int,
    lo: dt.datetime,
    hi: dt.datetime,
    visit_type_id: int | None = None,
) -> DoctorDays:
    """`load_doctor_days` on a connection of `engine`'s pool, outside any transaction (no
    BEGIN/ROLLBACK round trips), through asyncpg
    directly (`db.session.driver_fetchrow`): the cache-miss path.

    Raises:
        NotFound: no such doctor, or the visit type is not one of theirs.
    """
    row = await driver_fetchrow(engine, _DOCTOR_DAYS_NATIVE, doctor_id, lo, hi, visit_type_id)
    return doctor_days_from_row(doctor_id, row, visit_type_id)


async def prepare(connection: AsyncConnection) -> None:
    """Prepare the cache-miss statement on this pooled connection (at start: a fresh
    connection's first run of it is slow, see app/web/asgi.py `warm_pool`)."""
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    now = dt.datetime.now(dt.UTC)
    await driver.fetchrow(_DOCTOR_DAYS_NATIVE, 0, now, now, None)  # doctor 0: no row


def doctor_days_from_row(
    doctor_id: int, row: Sequence[Any] | None, visit_type_id: int | None = None
) -> DoctorDays:
    """A row of `doctor_days_sql` (its first `DOCTOR_DAYS_COLUMNS` columns) as DoctorDays.

    Raises:
        NotFound: no row: no such doctor; no type when `visit_type_id` was asked for.
    """
    if row is None:
        raise NotFound(gettext("doctor %(doctor_id)s does not exist") % {"doctor_id": doctor_id})
    clinic_id, timezone, active = row[:3]
    visit_type = None
    if visit_type_id is not None:
        if row[13] is None:
            raise NotFound(
                gettext("visit type %(visit_type_id)s is not one of doctor %(doctor_id)s's")
                % {"visit_type_id": visit_type_id, "doctor_id": doctor_id}
            )
        visit_type = TypeFacts(*row[13:DOCTOR_DAYS_COLUMNS])
    return DoctorDays(
        doctor_id,
        clinic_id,
        timezone,
        active,
        _ranges(row),
        _intervals(row[9], row[10]),
        _intervals(row[11], row[12]),
        visit_type,
    )


def compute_days(data: DoctorDays, days: Iterable[dt.date]) -> list[DaySlots]:
    """Slots with their taken flag (bookings and exceptions), ignoring notice and horizon."""
    tz = ZoneInfo(data.timezone)
    visit = data.visit_type.visit if data.visit_type is not None else None
    result = []
    for day in days:
        slots = day_slots(
            day, data.ranges, tz, booked=data.booked, blocked=data.blocked, visit=visit
        )
        # Which of them an exception (leave, closure) blocks: those never free up.
        away = (
            [
                not a.available
                for a in day_slots(day, data.ranges, tz, blocked=data.blocked, visit=visit)
            ]
            if data.blocked
            else [False] * len(slots)
        )
        cached = [
            CachedSlot(int(s.start.timestamp()), s.start_local, s.end_local, not s.available, b)
            for s, b in zip(slots, away, strict=True)
        ]
        result.append(DaySlots(day, cached))
    return result


def _key(doctor_id: int, day: dt.date, visit_type_id: int | None = None) -> str:
    """A doctor-day's value: its plain slots, or one visit type's."""
    base = f"avail:{doctor_id}:{day.isoformat()}"
    return base if visit_type_id is None else f"{base}:t{visit_type_id}"


def _version_key(doctor_id: int, day: dt.date) -> str:
    """The day's version, shared by the plain slots and every type: a booking of any type
    changes them all."""
    return f"availver:{doctor_id}:{day.isoformat()}"


def _types_version_key(doctor_id: int) -> str:
    """The version of a doctor's visit types: an edit changes every day of that type."""
    return f"availtypes:{doctor_id}"


def visit_type_param(query: Mapping[str, str]) -> int | None:
    """`visit_type_id` of a query, None when absent (ValueError when not a number)."""
    raw = query.get("visit_type_id")
    return int(raw) if raw else None


def prefetch_keys(query: Mapping[str, str]) -> list[str]:
    """The cache keys an availability request (`doctor_id`, `date`, `days`,
    `visit_type_id`) will read, so the authentication step can fetch them in its round
    trip; none if the query is bad (the handler then answers the 400 itself)."""
    try:
        doctor_id, first = int(query["doctor_id"]), dt.date.fromisoformat(query["date"])
        count = int(query.get("days", 1))
        visit_type_id = visit_type_param(query)
    except (KeyError, ValueError):
        return []
    if not 1 <= count <= MAX_DAYS:
        return []
    days = [first + dt.timedelta(days=i) for i in range(count)]
    return _day_keys(doctor_id, days, visit_type_id)


def _day_keys(doctor_id: int, days: list[dt.date], visit_type_id: int | None) -> list[str]:
    """The days' cached values, then their versions, then (for a type) the types' version."""
    keys = [_key(doctor_id, d, visit_type_id) for d in days]
    keys += [_version_key(doctor_id, d) for d in days]
    if visit_type_id is not None:
        keys.append(_types_version_key(doctor_id))
    return keys


class _CachedDay(msgspec.Struct):
    """A cached doctor-day as stored in Redis: {"tz": zone, "s": [[starts, start_local,
    end_local, taken, blocked], ...], "v": the day's version it was computed at, "tv": the
    types' version, "t": the visit type}; msgspec writes and reads it in C, slots as
    CachedSlot. A value is served only while both versions are still current: a write
    bumps them (and deletes the plain value), so no write has to know which types' values
    exist."""

    tz: str
    s: list[CachedSlot]
    v: str = ""
    tv: str = ""
    t: TypeFacts | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_CachedDay)


def _text(version: bytes | str | None) -> str:
    if version is None:
        return ""
    return version.decode() if isinstance(version, bytes) else version


class Availability(NamedTuple):
    """A doctor's days as the cache answers: the clinic's zone, the days, the visit type."""

    timezone: str
    days: list[DaySlots]
    visit_type: TypeFacts | None = None


# Store only if no write bumped the day's version (or the doctor's types' version) since
# the reader looked at it. Every computed day in one call (one round trip, however many
# days; a redis-py pipeline of scripts would add a SCRIPT EXISTS round trip of its own).
# KEYS: each day's value key then its version key, then, for a visit type's days only,
# the types' version key (plain slots do not depend on types); ARGV: the TTL, the types'
# version the reader saw ('' for plain slots), then each day's value and the version it saw.
_SET_IF_VERSION = """
local last = #KEYS
if last % 2 == 1 then
  local types = redis.call('GET', KEYS[last])
  if not ((types == false and ARGV[2] == '') or types == ARGV[2]) then
    return 0
  end
  last = last - 1
end
local stored = 0
for i = 1, last, 2 do
  local current = redis.call('GET', KEYS[i + 1])
  local seen = ARGV[i + 3]
  if (current == false and seen == '') or current == seen then
    redis.call('SET', KEYS[i], ARGV[i + 2], 'EX', ARGV[1])
    stored = stored + 1
  end
end
return stored
"""


@dataclass
class SlotCache:
    """Reads doctor-days through Redis, taking a database connection only on a miss;
    counts hits and misses for metrics and benchmarks."""

    redis: Redis
    engine: AsyncEngine
    hits: int = 0
    misses: int = 0

    def __post_init__(self) -> None:
        self._store = Script(_SET_IF_VERSION)
        self._inflight: dict[tuple[Any, ...], asyncio.Future] = {}

    async def days(
        self,
        doctor_id: int,
        first: dt.date,
        count: int,
        prefetched: Mapping[str, bytes | None] | None = None,
        later: list[Callable[[], Awaitable[None]]] | None = None,
        visit_type_id: int | None = None,
    ) -> Availability:
        """The doctor's slots for `count` days from `first`, and the clinic's time zone.

        Args:
            prefetched: values of `prefetch_keys` already read from Redis in this request.
            later: when given, a miss's store into Redis is appended here for the caller to
                run once it has answered (the API route runs it as the response's
                background task: the client does not wait for that round trip), instead of
                being awaited before this returns. The version guard makes a late store
                as safe as an early one.
            visit_type_id: one of the doctor's visit types (None: the plain slots).

        Raises:
            NotFound: no such doctor, or the visit type is not theirs.
        """
        days = [first + dt.timedelta(days=i) for i in range(count)]
        keys = _day_keys(doctor_id, days, visit_type_id)
        found: list[bytes | None]
        if prefetched and all(k in prefetched for k in keys):
            found = [prefetched[k] for k in keys]
        else:
            try:
                found = await self.redis.mget(keys)
            except RedisError as exc:  # Redis is a cache: slower without it, never wrong
                log.warning("availability cache unavailable: %s", exc)
                found = [None] * len(keys)
        cached, versions = found[:count], [_text(v) for v in found[count : 2 * count]]
        types_version = _text(found[2 * count]) if visit_type_id is not None else ""
        decoded = [_decoder.decode(raw) if raw is not None else None for raw in cached]
        current = [
            d is not None and d.v == version and d.tv == types_version
            for d, version in zip(decoded, versions, strict=True)
        ]
        if all(current):
            self.hits += count
            values = [d for d in decoded if d is not None]
            return Availability(
                values[0].tz,
                [DaySlots(day, d.s) for day, d in zip(days, values, strict=True)],
                values[0].t,
            )
        self.misses += count - sum(current)
        # Only a computation that saw the same versions is shared: one that began before a
        # write bumped them would hand a reader arriving after that write a stale answer.
        key = (doctor_id, first, days[-1], visit_type_id, tuple(versions), types_version)
        if key in self._inflight:
            return await asyncio.shield(self._inflight[key])
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._compute(
                doctor_id, days, versions, types_version, visit_type_id, later
            )
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters (if any) get it themselves
            raise
        finally:
            del self._inflight[key]

    async def _compute(
        self,
        doctor_id: int,
        days: list[dt.date],
        versions: list[str],
        types_version: str,
        visit_type_id: int | None,
        later: list[Callable[[], Awaitable[None]]] | None,
    ) -> Availability:
        # Bounds wide enough for any zone (UTC-12 to UTC+14); the pure code cuts exactly.
        lo = dt.datetime.combine(days[0], dt.time(), dt.UTC) - dt.timedelta(hours=15)
        hi = dt.datetime.combine(days[-1], dt.time(), dt.UTC) + dt.timedelta(hours=39)
        data = await fetch_doctor_days(self.engine, doctor_id, lo, hi, visit_type_id)
        computed = compute_days(data, days) if data.active else [DaySlots(d, []) for d in days]
        keys: list[str] = []
        args: list[bytes | str | int] = [spread_ttl(CACHE_TTL_SECONDS), types_version]
        for day, version in zip(computed, versions, strict=True):
            keys += [_key(doctor_id, day.day, visit_type_id), _version_key(doctor_id, day.day)]
            value = _CachedDay(data.timezone, day.slots, version, types_version, data.visit_type)
            args += [_encoder.encode(value), version]
        if visit_type_id is not None:
            keys.append(_types_version_key(doctor_id))
        store = partial(self._store_days, keys, args)
        if later is None:
            await store()
        else:
            later.append(store)
        return Availability(data.timezone, computed, data.visit_type)

    async def _store_days(self, keys: list[str], args: list[bytes | str | int]) -> None:
        try:
            await self._store(self.redis, keys, args)
        except RedisError as exc:
            log.warning("could not cache availability: %s", exc)


def queue_invalidation(pipe: Pipeline, doctor_days: Iterable[tuple[int, dt.date]]) -> None:
    """Queue, on a pipeline, forgetting cached doctor-days after a committed change: each
    day's version is bumped (so a reader that raced the change does not store its result)
    and its value deleted. Run after commit, never before (app/live/effects.py does).

    Args:
        doctor_days: (doctor id, clinic-local day) pairs whose slots may have changed.
    """
    for doctor_id, day in set(doctor_days):
        pipe.incr(_version_key(doctor_id, day))
        pipe.expire(_version_key(doctor_id, day), VERSION_TTL_SECONDS)
        pipe.delete(_key(doctor_id, day))


def queue_types_invalidation(pipe: Pipeline, doctor_ids: Iterable[int]) -> None:
    """Queue, on a pipeline, forgetting every cached day of these doctors' visit types
    after a committed change to their types (a cached value names the types' version it
    was computed at, so bumping it is enough). Run after commit, never before."""
    for doctor_id in set(doctor_ids):
        pipe.incr(_types_version_key(doctor_id))
        pipe.expire(_types_version_key(doctor_id), VERSION_TTL_SECONDS)


def local_days(start: dt.datetime, end: dt.datetime, timezone: str) -> list[dt.date]:
    """The clinic-local days an interval of instants touches."""
    tz = ZoneInfo(timezone)
    first = start.astimezone(tz).date()
    last = (end - dt.timedelta(microseconds=1)).astimezone(tz).date()
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def day_window(day: dt.date, timezone: str) -> Interval:
    return local_day_bounds(day, ZoneInfo(timezone))
