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
from app.redis import spread_ttl
from app.redis_scripts import Script
from app.scheduling.availability import Interval, TemplateRange, day_slots, local_day_bounds
from db.session import driver_fetchrow

log = logging.getLogger(__name__)

CACHE_TTL_SECONDS = 300
VERSION_TTL_SECONDS = 86400
MAX_DAYS = 14

# One round trip for everything a doctor's days depend on. Each part is an index range:
# templates by (doctor_id, weekday), exceptions by (doctor_id, starts_at) and the clinic's
# (clinic_id, starts_at) partial index, bookings by (doctor_id, starts_at) INCLUDE (...).
# Bookings are at most a day long (a check constraint), which bounds the scan from below.
# Everything comes back as arrays of plain columns (times, dates, instants), which the
# driver decodes in C: JSON for the templates and range values for the intervals cost
# measurably more Python per miss (bench/README.md). The arrays of one aggregate
# query are in the same row order (every aggregate sees the rows in one pass). An
# aggregate over no rows is NULL (no exceptions, no bookings): read as empty.
_DOCTOR_DAYS = """
SELECT d.clinic_id, c.timezone, d.active,
  t.weekdays, t.starts, t.ends, t.minutes, t.valid_from, t.valid_to,
  x.starts AS blocked_starts, x.ends AS blocked_ends,
  b.starts AS booked_starts, b.ends AS booked_ends{extra}
FROM doctors d JOIN clinics c ON c.id = d.clinic_id
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
  SELECT array_agg(a.starts_at) AS starts, array_agg(a.ends_at) AS ends
    FROM appointments a
   WHERE a.doctor_id = d.id AND a.status <> 'cancelled'
     AND a.starts_at >= CAST(:lo AS timestamptz) - interval '1 day'
     AND a.starts_at < :hi AND a.ends_at > :lo) b
WHERE d.id = :doctor_id
"""
# The columns of `_DOCTOR_DAYS` before any extra ones.
DOCTOR_DAYS_COLUMNS = 13


def doctor_days_sql(extra_columns: str = "") -> TextClause:
    """The doctor-days query, with `extra_columns` (", expr AS name, ...") appended to its
    select list, so a caller that needs a little more (booking: the patient) still makes
    one round trip. The extra columns follow the first `DOCTOR_DAYS_COLUMNS` of the row."""
    return text(_DOCTOR_DAYS.format(extra=extra_columns))


DOCTOR_DAYS_SQL = doctor_days_sql()
# The same statement in asyncpg's placeholders, for the cache-miss path (`fetch_doctor_days`).
_DOCTOR_DAYS_NATIVE = re.sub(
    r":(doctor_id|lo|hi)\b",
    lambda m: {"doctor_id": "$1", "lo": "$2", "hi": "$3"}[m[1]],
    _DOCTOR_DAYS.format(extra=""),
)


@dataclass(frozen=True, slots=True)
class DoctorDays:
    """Everything the pure slot computation needs for a span of a doctor's days."""

    doctor_id: int
    clinic_id: int
    timezone: str
    active: bool
    ranges: list[TemplateRange]
    blocked: list[Interval]
    booked: list[Interval]


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
    session: AsyncSession | AsyncConnection, doctor_id: int, lo: dt.datetime, hi: dt.datetime
) -> DoctorDays:
    """Template, exceptions and active bookings of a doctor overlapping [lo, hi).

    Raises:
        NotFound: no such doctor.
    """
    row = (
        await session.execute(DOCTOR_DAYS_SQL, {"doctor_id": doctor_id, "lo": lo, "hi": hi})
    ).one_or_none()
    return doctor_days_from_row(doctor_id, row)


async def fetch_doctor_days(
    engine: AsyncEngine, doctor_id: int, lo: dt.datetime, hi: dt.datetime
) -> DoctorDays:
    """`load_doctor_days` on a connection of `engine`'s pool, outside any transaction (no
    BEGIN/ROLLBACK round trips), through asyncpg
    directly (`db.session.driver_fetchrow`): the cache-miss path.

    Raises:
        NotFound: no such doctor.
    """
    row = await driver_fetchrow(engine, _DOCTOR_DAYS_NATIVE, doctor_id, lo, hi)
    return doctor_days_from_row(doctor_id, row)


async def prepare(connection: AsyncConnection) -> None:
    """Prepare the cache-miss statement on this pooled connection (at start: a fresh
    connection's first run of it is slow, see app/web/asgi.py `warm_pool`)."""
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    now = dt.datetime.now(dt.UTC)
    await driver.fetchrow(_DOCTOR_DAYS_NATIVE, 0, now, now)  # doctor 0: no row


def doctor_days_from_row(doctor_id: int, row: Sequence[Any] | None) -> DoctorDays:
    """A row of `doctor_days_sql` (its first `DOCTOR_DAYS_COLUMNS` columns) as DoctorDays.

    Raises:
        NotFound: no row: no such doctor.
    """
    if row is None:
        raise NotFound(f"doctor {doctor_id} does not exist")
    clinic_id, timezone, active = row[:3]
    return DoctorDays(
        doctor_id,
        clinic_id,
        timezone,
        active,
        _ranges(row),
        _intervals(row[9], row[10]),
        _intervals(row[11], row[12]),
    )


def compute_days(data: DoctorDays, days: Iterable[dt.date]) -> list[DaySlots]:
    """Slots with their taken flag (bookings and exceptions), ignoring notice and horizon."""
    tz = ZoneInfo(data.timezone)
    result = []
    for day in days:
        slots = day_slots(day, data.ranges, tz, booked=data.booked, blocked=data.blocked)
        # Which of them an exception (leave, closure) blocks: those never free up.
        away = (
            [not a.available for a in day_slots(day, data.ranges, tz, blocked=data.blocked)]
            if data.blocked
            else [False] * len(slots)
        )
        cached = [
            CachedSlot(int(s.start.timestamp()), s.start_local, s.end_local, not s.available, b)
            for s, b in zip(slots, away, strict=True)
        ]
        result.append(DaySlots(day, cached))
    return result


def _key(doctor_id: int, day: dt.date) -> str:
    return f"avail:{doctor_id}:{day.isoformat()}"


def _version_key(doctor_id: int, day: dt.date) -> str:
    return f"availver:{doctor_id}:{day.isoformat()}"


def prefetch_keys(query: Mapping[str, str]) -> list[str]:
    """The cache keys an availability request (`doctor_id`, `date`, `days`) will read, so
    the authentication step can fetch them in its round trip; none if the query is bad
    (the handler then answers the 400 itself)."""
    try:
        doctor_id, first = int(query["doctor_id"]), dt.date.fromisoformat(query["date"])
        count = int(query.get("days", 1))
    except (KeyError, ValueError):
        return []
    if not 1 <= count <= MAX_DAYS:
        return []
    return _day_keys(doctor_id, [first + dt.timedelta(days=i) for i in range(count)])


def _day_keys(doctor_id: int, days: list[dt.date]) -> list[str]:
    """The days' cached values, then their versions."""
    return [_key(doctor_id, d) for d in days] + [_version_key(doctor_id, d) for d in days]


class _CachedDay(msgspec.Struct):
    """A cached doctor-day as stored in Redis: {"tz": zone, "s": [[starts, start_local,
    end_local, taken], ...]}; msgspec writes and reads it in C, slots as CachedSlot."""

    tz: str
    s: list[CachedSlot]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_CachedDay)


def _encode(timezone: str, day: DaySlots) -> bytes:
    return _encoder.encode(_CachedDay(timezone, day.slots))


def _decode(day: dt.date, raw: bytes | str) -> tuple[str, DaySlots]:
    data = _decoder.decode(raw)
    return data.tz, DaySlots(day, data.s)


# Store only if no write bumped the day's version since the reader looked at it.
# Every computed day in one call (one round trip, however many days; a redis-py pipeline
# of scripts would add a SCRIPT EXISTS round trip of its own). KEYS: each day's value key
# then its version key; ARGV: the TTL, then each day's value and the version its reader saw.
_SET_IF_VERSION = """
local stored = 0
for i = 1, #KEYS, 2 do
  local current = redis.call('GET', KEYS[i + 1])
  local seen = ARGV[i + 2]
  if (current == false and seen == '') or current == seen then
    redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ARGV[1])
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
    ) -> tuple[str, list[DaySlots]]:
        """The doctor's slots for `count` days from `first`, and the clinic's time zone.

        Args:
            prefetched: values of `prefetch_keys` already read from Redis in this request.
            later: when given, a miss's store into Redis is appended here for the caller to
                run once it has answered (the API route runs it as the response's
                background task: the client does not wait for that round trip), instead of
                being awaited before this returns. The version guard makes a late store
                as safe as an early one.
        """
        days = [first + dt.timedelta(days=i) for i in range(count)]
        keys = _day_keys(doctor_id, days)
        found: list[bytes | None]
        if prefetched and all(k in prefetched for k in keys):
            found = [prefetched[k] for k in keys]
        else:
            try:
                found = await self.redis.mget(keys)
            except RedisError as exc:  # Redis is a cache: slower without it, never wrong
                log.warning("availability cache unavailable: %s", exc)
                found = [None] * (2 * count)
        cached, versions = found[:count], found[count:]
        hits = [raw for raw in cached if raw is not None]
        if len(hits) == count:
            self.hits += count
            decoded = [_decode(day, raw) for day, raw in zip(days, hits, strict=True)]
            return decoded[0][0], [d for _, d in decoded]
        self.misses += sum(v is None for v in cached)
        # Only a computation that saw the same versions is shared: one that began before a
        # write bumped them would hand a reader arriving after that write a stale answer.
        key = (doctor_id, first, days[-1], tuple(versions))
        if key in self._inflight:
            return await asyncio.shield(self._inflight[key])
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._compute(doctor_id, days, versions, later)
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
        versions: list[bytes | None],
        later: list[Callable[[], Awaitable[None]]] | None,
    ) -> tuple[str, list[DaySlots]]:
        # Bounds wide enough for any zone (UTC-12 to UTC+14); the pure code cuts exactly.
        lo = dt.datetime.combine(days[0], dt.time(), dt.UTC) - dt.timedelta(hours=15)
        hi = dt.datetime.combine(days[-1], dt.time(), dt.UTC) + dt.timedelta(hours=39)
        data = await fetch_doctor_days(self.engine, doctor_id, lo, hi)
        computed = compute_days(data, days) if data.active else [DaySlots(d, []) for d in days]
        keys: list[str] = []
        args: list[bytes | str | int] = [spread_ttl(CACHE_TTL_SECONDS)]
        for day, version in zip(computed, versions, strict=True):
            keys += [_key(doctor_id, day.day), _version_key(doctor_id, day.day)]
            args += [_encode(data.timezone, day), (version or b"").decode()]
        store = partial(self._store_days, keys, args)
        if later is None:
            await store()
        else:
            later.append(store)
        return data.timezone, computed

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


def local_days(start: dt.datetime, end: dt.datetime, timezone: str) -> list[dt.date]:
    """The clinic-local days an interval of instants touches."""
    tz = ZoneInfo(timezone)
    first = start.astimezone(tz).date()
    last = (end - dt.timedelta(microseconds=1)).astimezone(tz).date()
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def day_window(day: dt.date, timezone: str) -> Interval:
    return local_day_bounds(day, ZoneInfo(timezone))
