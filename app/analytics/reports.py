"""Analytics: rollups computed in SQL, and the reports read from them (review C-6).

Rollups (`clinic_daily_stats` per clinic, local day and doctor; `clinic_bucket_stats` per
clinic, local day and hour / booking lead time / cancellation lead time) are rebuilt a
set of days at a time by `refresh_days`: a handful of INSERT … SELECT … GROUP BY … ON
CONFLICT DO UPDATE statements, so no appointment is ever loaded into Python, and running
one twice is harmless. Reports then read at most a few hundred thousand small rollup rows,
whatever the number of appointments.

Available minutes reproduce `app.scheduling.availability.day_grid` in SQL: every template slot of
every active doctor on each clinic-local day (weekday and validity in clinic-local
dates), laid out on the wall clock and converted to an instant with the clinic's zone;
slots in a spring-forward gap are dropped, ambiguous fall-back times take their first
occurrence (as `fold=0` does), and slots overlapping the doctor's or the clinic's
exceptions are not available. Booked minutes are the length of every appointment that is
not cancelled (a no-show holds its slot). See docs/analytics.md for the definitions.

Domain code: no Litestar here. Functions take an `AsyncConnection` (or session) and plain
values; the caller picks the engine (the read replica for reports, the primary for
rollups) and commits.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, DATE
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from app.access.identity import Principal
from app.errors import DomainError, Forbidden, Invalid

GROUPS = ("clinic", "doctor", "weekday", "hour", "lead_time")
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# Lead-time buckets, shared by booking lead (start - booked) and cancellation lead
# (start - cancelled). The SQL below must keep the same boundaries.
LEAD_BUCKETS = ("under 1 day", "1-2 days", "3-7 days", "8-14 days", "15-30 days", "over 30 days")
MAX_RANGE_DAYS = 1100  # three years of rollups answer in milliseconds; exports go further
MAX_EXPORT_DAYS = 3660
ROLLUP_WATERMARK = "rollups"
GENERATION = "rollups_changed"  # moved by every refresh_days: a cache key for reports
# Changes committed within this margin before a run's start are looked at again by the
# next run: a write's updated_at is taken before its commit (short transactions, bounded by
# the idle-in-transaction timeout) and app clocks may differ a little from the database's.
WATERMARK_MARGIN = dt.timedelta(minutes=2)

Db = AsyncConnection | AsyncSession


class ReportTimedOut(DomainError):
    """A report or export query ran past its statement timeout and was cancelled."""

    status_code = 503


def timed_out(exc: BaseException) -> bool:
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return True
    # SQLAlchemy wraps the driver's error in .orig; COPY uses asyncpg directly.
    for error in (exc, getattr(exc, "orig", None)):
        if getattr(error, "sqlstate", None) == "57014":  # query_canceled
            return True
    return False


async def _rows(db: Db, sql: Any, params: dict[str, Any]) -> list[Any]:
    """Run a report query; a cancelled (timed-out) statement becomes a clear 503."""
    try:
        return list((await db.execute(sql, params)).all())
    except (DBAPIError, TimeoutError) as exc:
        if timed_out(exc):
            raise ReportTimedOut(
                "the report took too long and was cancelled; try a shorter range or a single clinic"
            ) from None
        raise


# --- scope and parameters ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportScope:
    """A validated report request: an inclusive range of local days and a clinic (or all)."""

    first_day: dt.date
    last_day: dt.date
    clinic_id: int | None


def report_scope(
    actor: Principal,
    first_day: dt.date | None,
    last_day: dt.date | None,
    clinic_id: int | None,
    today: dt.date,
    max_days: int = MAX_RANGE_DAYS,
) -> ReportScope:
    """Check who may see what: admins any clinic or all; front desks only their own.

    Args:
        first_day, last_day: the inclusive range; defaults to the 30 days up to `today`.
        clinic_id: one clinic; None means all for admins and their own for front desks.

    Raises:
        Forbidden: another role, or a front desk asking for another clinic.
        Invalid: the range is reversed or longer than MAX_RANGE_DAYS.
    """
    if actor.role == "front_desk":
        if clinic_id is not None and clinic_id != actor.clinic_id:
            raise Forbidden("front desks see their own clinic's analytics only")
        clinic_id = actor.clinic_id
    elif actor.role != "admin":
        raise Forbidden("analytics are for admins and front desks")
    last = last_day or today
    first = first_day or last - dt.timedelta(days=29)
    if first > last:
        raise Invalid("`from` must not be after `to`")
    if (last - first).days + 1 > max_days:
        raise Invalid(f"a range covers at most {max_days} days")
    return ReportScope(first, last, clinic_id)


def _month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def _next_month(day: dt.date) -> dt.date:
    return (day.replace(day=1) + dt.timedelta(days=32)).replace(day=1)


def _params(scope: ReportScope, **extra: Any) -> dict[str, Any]:
    """The range as whole months (read from the monthly rollups) and the days of the
    partial months at either end (read from the daily ones). Empty parts get lo > hi."""
    first, last = scope.first_day, scope.last_day
    m1 = first if first.day == 1 else _next_month(first)  # first whole month
    after = _month_start(last + dt.timedelta(days=1))  # the month after the last whole one
    never = (dt.date(1, 1, 2), dt.date(1, 1, 1))
    if m1 >= after:  # no whole month inside: all days
        head, months, tail = (first, last), never, never
    else:
        head = (first, m1 - dt.timedelta(days=1)) if first < m1 else never
        tail = (after, last) if after <= last else never
        months = (m1, after - dt.timedelta(days=1))
    dimensions = extra.get("dimensions", [])
    daily = ["hour" if d == "hour_of_week" else d for d in dimensions]
    return {
        "h1": head[0], "h2": head[1], "t1": tail[0], "t2": tail[1],
        "m1": months[0], "m2": months[1], "clinic_id": scope.clinic_id,
        "daily_dimensions": daily, **extra,
    }  # fmt: skip


_CLINIC = "(CAST(:clinic_id AS bigint) IS NULL OR clinic_id = :clinic_id)"
_EDGES = (("h1", "h2"), ("t1", "t2"))  # the head and tail days: two index ranges

_STATS_COLUMNS = (
    "clinic_id, doctor_id, booked, checked_in, completed, cancelled, no_show, "
    "available_minutes, booked_minutes"
)
# Per clinic and doctor: the edge days from the daily rollup, whole months from the monthly.
STATS_SOURCE = f"""
WITH s AS ({
    " UNION ALL ".join(
        f"SELECT {_STATS_COLUMNS} FROM clinic_daily_stats "
        f"WHERE day BETWEEN :{lo} AND :{hi} AND {_CLINIC}"
        for lo, hi in _EDGES
    )
} UNION ALL
  SELECT {_STATS_COLUMNS} FROM clinic_monthly_stats
  WHERE month BETWEEN :m1 AND :m2 AND {_CLINIC})"""

# Per clinic, dimension and bucket, with `hour` turned into `hour_of_week` as the monthly
# table keeps it (weekday * 24 + hour). Each part is a range of an index on (dimension, day).
_DAILY_BUCKETS = """
  SELECT clinic_id,
    CASE WHEN dimension = 'hour' THEN 'hour_of_week' ELSE dimension END AS dimension,
    CASE WHEN dimension = 'hour' THEN (extract(isodow FROM day)::int - 1) * 24 + bucket
         ELSE bucket END AS bucket,
    appointments, attended, no_show, cancelled
  FROM clinic_bucket_stats
  WHERE dimension = ANY(CAST(:daily_dimensions AS text[])) AND day BETWEEN :{lo} AND :{hi}
    AND {clinic}"""
BUCKET_SOURCE = f"""
WITH s AS ({
    " UNION ALL ".join(_DAILY_BUCKETS.format(lo=lo, hi=hi, clinic=_CLINIC) for lo, hi in _EDGES)
} UNION ALL
  SELECT clinic_id, dimension, bucket, appointments, attended, no_show, cancelled
  FROM clinic_monthly_buckets
  WHERE dimension = ANY(CAST(:dimensions AS text[])) AND month BETWEEN :m1 AND :m2
    AND {_CLINIC})"""


# --- reports ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoShowRow:
    key: int
    label: str
    appointments: int  # not cancelled
    attended: int  # checked in or completed
    no_show: int

    @property
    def rate(self) -> float | None:
        """No-shows among appointments with an outcome (attended or not)."""
        outcome = self.attended + self.no_show
        return round(self.no_show / outcome, 4) if outcome else None


@dataclass(frozen=True, slots=True)
class NoShowReport:
    scope: ReportScope
    group_by: str
    rows: list[NoShowRow]

    @property
    def total(self) -> NoShowRow:
        return NoShowRow(
            0,
            "all",
            sum(r.appointments for r in self.rows),
            sum(r.attended for r in self.rows),
            sum(r.no_show for r in self.rows),
        )


_TOTALS = """
  sum(s.booked + s.checked_in + s.completed + s.no_show) AS appointments,
  sum(s.checked_in + s.completed) AS attended,
  sum(s.no_show) AS no_show"""

NO_SHOW_SQL = {
    "clinic": f"""{STATS_SOURCE}
SELECT s.clinic_id, c.name, {_TOTALS}
FROM s JOIN clinics c ON c.id = s.clinic_id
GROUP BY s.clinic_id, c.name ORDER BY s.clinic_id""",
    "doctor": f"""{STATS_SOURCE}
SELECT s.doctor_id, d.full_name, {_TOTALS}
FROM s JOIN doctors d ON d.id = s.doctor_id
GROUP BY s.doctor_id, d.full_name ORDER BY s.doctor_id""",
    # Weekday and hour come from the hour-of-week buckets (every appointment has one).
    "weekday": f"""{BUCKET_SOURCE}
SELECT s.bucket / 24, '', sum(s.appointments), sum(s.attended), sum(s.no_show)
FROM s WHERE s.dimension = 'hour_of_week' GROUP BY 1 ORDER BY 1""",
    "hour": f"""{BUCKET_SOURCE}
SELECT s.bucket % 24, '', sum(s.appointments), sum(s.attended), sum(s.no_show)
FROM s WHERE s.dimension = 'hour_of_week' GROUP BY 1 ORDER BY 1""",
    "lead_time": f"""{BUCKET_SOURCE}
SELECT s.bucket, '', sum(s.appointments), sum(s.attended), sum(s.no_show)
FROM s WHERE s.dimension = 'lead_time' GROUP BY 1 ORDER BY 1""",
}
_DIMENSIONS = {"weekday": ["hour_of_week"], "hour": ["hour_of_week"], "lead_time": ["lead_time"]}


def _label(group_by: str, key: int, name: str) -> str:
    if group_by == "weekday":
        return WEEKDAYS[key]
    if group_by == "hour":
        return f"{key:02d}:00"
    if group_by == "lead_time":
        return LEAD_BUCKETS[key]
    return name


async def no_shows(db: Db, scope: ReportScope, group_by: str) -> NoShowReport:
    """No-show rates grouped by clinic, doctor, weekday, start hour or booking lead time.

    Args:
        group_by: one of GROUPS. Weekday and hour are clinic-local.

    Raises:
        Invalid: an unknown grouping.
        ReportTimedOut: the query ran past the analytics statement timeout.
    """
    if group_by not in GROUPS:
        raise Invalid(f"group_by must be one of {', '.join(GROUPS)}")
    sql = NO_SHOW_SQL[group_by]
    params = _params(scope, dimensions=_DIMENSIONS.get(group_by, []))
    rows = await _rows(db, text(sql), params)
    return NoShowReport(
        scope,
        group_by,
        [
            NoShowRow(int(k), _label(group_by, int(k), name), int(a), int(att), int(ns))
            for k, name, a, att, ns in rows
        ],
    )


@dataclass(frozen=True, slots=True)
class PopularSlots:
    """Appointments (not cancelled) per clinic-local weekday (0 = Monday) and start hour."""

    scope: ReportScope
    counts: dict[tuple[int, int], int] = field(default_factory=dict)

    @property
    def max(self) -> int:
        return max(self.counts.values(), default=0)

    @property
    def busiest(self) -> list[tuple[str, int]]:
        """The three busiest weekday-hours, e.g. ("Tue 10:00", 412), for text summaries."""
        top = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        return [(f"{WEEKDAYS[w]} {h:02d}:00", n) for (w, h), n in top if n]

    @property
    def hours(self) -> list[int]:
        """The hours that have any booking, widened to whole working days (at least 8-18)."""
        used = [h for (_, h), n in self.counts.items() if n]
        return list(range(min([8, *used]), max([17, *used]) + 1))


POPULAR_SQL = f"""{BUCKET_SOURCE}
SELECT s.bucket / 24 AS weekday, s.bucket % 24 AS hour, sum(s.appointments)
FROM s WHERE s.dimension = 'hour_of_week' GROUP BY s.bucket"""


async def popular_slots(db: Db, scope: ReportScope) -> PopularSlots:
    """Bookings per weekday x hour (the heat map)."""
    rows = await _rows(db, text(POPULAR_SQL), _params(scope, dimensions=["hour_of_week"]))
    return PopularSlots(scope, {(int(w), int(h)): int(n) for w, h, n in rows})


@dataclass(frozen=True, slots=True)
class UtilisationRow:
    key: int
    label: str
    available_minutes: int
    booked_minutes: int

    @property
    def utilisation(self) -> float | None:
        if not self.available_minutes:
            return None
        return round(self.booked_minutes / self.available_minutes, 4)

    @property
    def idle_minutes(self) -> int:
        """Template minutes nobody booked: where slots are wasted."""
        return max(self.available_minutes - self.booked_minutes, 0)


@dataclass(frozen=True, slots=True)
class Utilisation:
    scope: ReportScope
    by: str  # "clinic" for all clinics, "doctor" for one clinic
    rows: list[UtilisationRow]

    @property
    def total(self) -> UtilisationRow:
        return UtilisationRow(
            0,
            "all",
            sum(r.available_minutes for r in self.rows),
            sum(r.booked_minutes for r in self.rows),
        )


UTILISATION_SQL = {
    "clinic": f"""{STATS_SOURCE}
SELECT s.clinic_id, c.name, sum(s.available_minutes), sum(s.booked_minutes)
FROM s JOIN clinics c ON c.id = s.clinic_id
GROUP BY s.clinic_id, c.name ORDER BY s.clinic_id""",
    "doctor": f"""{STATS_SOURCE}
SELECT s.doctor_id, d.full_name, sum(s.available_minutes), sum(s.booked_minutes)
FROM s JOIN doctors d ON d.id = s.doctor_id
GROUP BY s.doctor_id, d.full_name ORDER BY s.doctor_id""",
}


async def utilisation(db: Db, scope: ReportScope) -> Utilisation:
    """Booked vs. available slot minutes, per clinic (all clinics) or per doctor (one)."""
    by = "doctor" if scope.clinic_id is not None else "clinic"
    rows = await _rows(db, text(UTILISATION_SQL[by]), _params(scope))
    return Utilisation(
        scope, by, [UtilisationRow(int(k), name, int(a), int(b)) for k, name, a, b in rows]
    )


@dataclass(frozen=True, slots=True)
class Cancellations:
    """Cancellations by how long before the start they came, and the overall rate."""

    scope: ReportScope
    by_lead: list[tuple[str, int]]
    cancelled: int
    appointments: int  # not cancelled

    @property
    def rate(self) -> float | None:
        made = self.cancelled + self.appointments
        return round(self.cancelled / made, 4) if made else None


CANCELLATIONS_SQL = f"""{BUCKET_SOURCE}
SELECT s.bucket, sum(s.cancelled) FROM s GROUP BY 1"""
CANCELLATION_TOTALS_SQL = f"""{STATS_SOURCE}
SELECT coalesce(sum(s.cancelled), 0),
       coalesce(sum(s.booked + s.checked_in + s.completed + s.no_show), 0)
FROM s"""


async def cancellations(db: Db, scope: ReportScope) -> Cancellations:
    """Cancellation counts by lead time, plus the share of bookings that were cancelled."""
    rows = await _rows(db, text(CANCELLATIONS_SQL), _params(scope, dimensions=["cancel_lead"]))
    by_lead = dict.fromkeys(range(len(LEAD_BUCKETS)), 0)
    for bucket, n in rows:
        by_lead[int(bucket)] += int(n)
    ((cancelled, appointments),) = await _rows(db, text(CANCELLATION_TOTALS_SQL), _params(scope))
    return Cancellations(
        scope,
        [(LEAD_BUCKETS[b], n) for b, n in by_lead.items()],
        int(cancelled),
        int(appointments),
    )


@dataclass(frozen=True, slots=True)
class Dashboard:
    no_shows: NoShowReport
    no_shows_by_hour: NoShowReport
    popular: PopularSlots
    utilisation: Utilisation
    cancellations: Cancellations


# The dashboard reads each rollup source once, in two statements, and derives its five
# reports in Python from at most one row per doctor and 180 bucket rows (the separate
# report queries read the 100,000 hour-of-week rows of a 50-clinic year three times).
DASHBOARD_STATS_SQL = f"""{STATS_SOURCE},
g AS (
  SELECT clinic_id, doctor_id, sum(booked) AS booked, sum(checked_in) AS checked_in,
    sum(completed) AS completed, sum(cancelled) AS cancelled, sum(no_show) AS no_show,
    sum(available_minutes) AS available_minutes, sum(booked_minutes) AS booked_minutes
  FROM s GROUP BY 1, 2)
SELECT g.clinic_id, c.name, g.doctor_id, d.full_name, g.booked, g.checked_in, g.completed,
       g.cancelled, g.no_show, g.available_minutes, g.booked_minutes
FROM g JOIN clinics c ON c.id = g.clinic_id JOIN doctors d ON d.id = g.doctor_id"""
DASHBOARD_BUCKETS_SQL = f"""{BUCKET_SOURCE}
SELECT s.dimension, s.bucket, sum(s.appointments), sum(s.attended), sum(s.no_show),
       sum(s.cancelled)
FROM s GROUP BY 1, 2"""
_DASHBOARD_DIMENSIONS = ["hour_of_week", "lead_time", "cancel_lead"]


@dataclass(slots=True)
class _Tally:
    """Sums of one report row while the dashboard adds them up."""

    label: str
    appointments: int = 0
    attended: int = 0
    no_show: int = 0
    available_minutes: int = 0
    booked_minutes: int = 0


def _tally(tallies: dict[int, _Tally], key: int, label: str) -> _Tally:
    """The row for `key`, started with its label the first time it is seen."""
    t = tallies.get(key)
    if t is None:
        t = tallies[key] = _Tally(label)
    return t


def _no_show_rows(tallies: dict[int, _Tally]) -> list[NoShowRow]:
    return [
        NoShowRow(k, t.label, t.appointments, t.attended, t.no_show)
        for k, t in sorted(tallies.items())
    ]


def dashboard_from_rows(
    scope: ReportScope, group_by: str, stats: Sequence[Any], buckets: Sequence[Any]
) -> Dashboard:
    """The five reports from the two dashboard queries' rows; each equals what its own
    report function answers (tests/integration/test_analytics_api.py checks this)."""
    by_clinic: dict[int, _Tally] = {}
    by_doctor: dict[int, _Tally] = {}
    cancelled_total = appointments_total = 0
    for clinic_id, clinic, doctor_id, doctor, bk, ci, co, ca, ns, avail, bmin in stats:
        made, attended = bk + ci + co + ns, ci + co
        cancelled_total += ca
        appointments_total += made
        for tallies, key, label in ((by_clinic, clinic_id, clinic), (by_doctor, doctor_id, doctor)):
            t = _tally(tallies, key, label)
            t.appointments += made
            t.attended += attended
            t.no_show += ns
            t.available_minutes += avail
            t.booked_minutes += bmin
    by_weekday: dict[int, _Tally] = {}
    by_hour: dict[int, _Tally] = {}
    by_lead: dict[int, _Tally] = {}
    counts: dict[tuple[int, int], int] = {}
    cancel_lead = dict.fromkeys(range(len(LEAD_BUCKETS)), 0)
    targets: tuple[tuple[dict[int, _Tally], int, str], ...]
    for dimension, bucket, appointments, attended, no_show, cancelled in buckets:
        if dimension == "hour_of_week":
            weekday, hour = divmod(bucket, 24)
            counts[(weekday, hour)] = int(appointments)
            targets = ((by_weekday, weekday, WEEKDAYS[weekday]), (by_hour, hour, f"{hour:02d}:00"))
        elif dimension == "lead_time":
            targets = ((by_lead, bucket, LEAD_BUCKETS[bucket]),)
        else:  # cancel_lead
            cancel_lead[int(bucket)] += int(cancelled)
            continue
        for tallies, key, label in targets:
            t = _tally(tallies, key, label)
            t.appointments += appointments
            t.attended += attended
            t.no_show += no_show
    grouped = {
        "clinic": by_clinic,
        "doctor": by_doctor,
        "weekday": by_weekday,
        "hour": by_hour,
        "lead_time": by_lead,
    }
    util_by = "doctor" if scope.clinic_id is not None else "clinic"
    return Dashboard(
        NoShowReport(scope, group_by, _no_show_rows(grouped[group_by])),
        NoShowReport(scope, "hour", _no_show_rows(by_hour)),
        PopularSlots(scope, counts),
        Utilisation(
            scope,
            util_by,
            [
                UtilisationRow(k, t.label, t.available_minutes, t.booked_minutes)
                for k, t in sorted(grouped[util_by].items())
            ],
        ),
        Cancellations(
            scope,
            [(LEAD_BUCKETS[b], n) for b, n in cancel_lead.items()],
            cancelled_total,
            appointments_total,
        ),
    )


# Dashboards already computed in this process, by database, rollup generation, range,
# clinic and grouping. Rollups change only through `refresh_days`, which moves the
# generation in the same transaction, so an entry is exact until the next refresh (every
# few minutes for today's figures) and is then simply never asked for again.
_DASHBOARDS: OrderedDict[tuple[Any, ...], Dashboard] = OrderedDict()
DASHBOARD_CACHE_SIZE = 64
GENERATION_SQL = text(f"SELECT until FROM analytics_watermarks WHERE name = '{GENERATION}'")


async def dashboard(engine: AsyncEngine, scope: ReportScope, group_by: str) -> Dashboard:
    """Every report of the dashboard at once: two statements, each on its own connection
    (independent reads, so the page costs the slower of them rather than their sum); the
    same dashboard again is answered from memory until the rollups next change.

    Raises:
        Invalid: an unknown grouping.
        ReportTimedOut: a query ran past the analytics statement timeout.
    """
    if group_by not in GROUPS:
        raise Invalid(f"group_by must be one of {', '.join(GROUPS)}")
    async with engine.connect() as conn:
        generation = (await _rows(conn, GENERATION_SQL, {}) or [(None,)])[0][0]
    key = (engine.url, generation, scope, group_by)
    if generation is not None and (cached := _DASHBOARDS.get(key)) is not None:
        _DASHBOARDS.move_to_end(key)
        return cached

    async def on_own_connection(sql: str, params: dict[str, Any]) -> list[Any]:
        async with engine.connect() as conn:
            return await _rows(conn, text(sql), params)

    stats, buckets = await asyncio.gather(
        on_own_connection(DASHBOARD_STATS_SQL, _params(scope)),
        on_own_connection(DASHBOARD_BUCKETS_SQL, _params(scope, dimensions=_DASHBOARD_DIMENSIONS)),
    )
    report = dashboard_from_rows(scope, group_by, stats, buckets)
    if generation is not None:
        _DASHBOARDS[key] = report
        while len(_DASHBOARDS) > DASHBOARD_CACHE_SIZE:
            _DASHBOARDS.popitem(last=False)
    return report


# --- rollups -----------------------------------------------------------------------------

# Local days as a date[] parameter.
_DAYS = bindparam("days", type_=ARRAY(DATE))

# Lead buckets: < 1 day, 1-2, 3-7, 8-14, 15-30, > 30 days (LEAD_BUCKETS): width_bucket
# counts the thresholds at or below the lead in days, which is the bucket's index.
_LEAD = "width_bucket(extract(epoch FROM {d}) / 86400, ARRAY[1, 3, 8, 15, 31]::numeric[])"

# One statement writes both tables from one pass over the appointments (the second INSERT
# runs as a data-modifying CTE).
ROLLUP_SQL = text(
    f"""
WITH days AS (SELECT unnest(CAST(:days AS date[])) AS day),
clinic_days AS MATERIALIZED (
  -- each clinic's local days as instants: appointments are then found by index range
  -- (ix_appointments_clinic_starts) and get their local day without a conversion per row
  SELECT c.id AS clinic_id, c.timezone, dd.day,
         dd.day::timestamp AT TIME ZONE c.timezone AS lo,
         (dd.day + 1)::timestamp AT TIME ZONE c.timezone AS hi
  FROM clinics c CROSS JOIN days dd
),
appt AS MATERIALIZED (
  SELECT cd.clinic_id, cd.day, a.doctor_id, a.status,
    extract(hour FROM a.starts_at AT TIME ZONE cd.timezone)::int AS hour,
    extract(epoch FROM a.ends_at - a.starts_at)::int / 60 AS minutes,
    {_LEAD.format(d="a.starts_at - a.created_at")} AS lead,
    CASE WHEN a.status = 'cancelled' AND a.cancelled_at IS NOT NULL
         THEN {_LEAD.format(d="a.starts_at - a.cancelled_at")} END AS cancel_lead
  FROM clinic_days cd
  CROSS JOIN LATERAL (
    SELECT * FROM appointments x
    WHERE x.clinic_id = cd.clinic_id AND x.starts_at >= cd.lo AND x.starts_at < cd.hi
    OFFSET 0) a  -- OFFSET 0 keeps the index range scan per clinic-day (no flattening)
),
grid AS (
  -- day_grid in SQL: each template slot on each local day, on the wall clock first
  SELECT d.clinic_id, d.id AS doctor_id, dd.day, t.slot_minutes, c.timezone,
         dd.day + t.start_time + make_interval(mins => t.slot_minutes * k) AS local_start
  FROM days dd
  JOIN doctor_schedule_templates t
    ON t.weekday = extract(isodow FROM dd.day)::int - 1
   AND (t.valid_from IS NULL OR dd.day >= t.valid_from)
   AND (t.valid_to IS NULL OR dd.day <= t.valid_to)
  JOIN doctors d ON d.id = t.doctor_id AND d.active
  JOIN clinics c ON c.id = d.clinic_id
  CROSS JOIN LATERAL generate_series(
    0, (extract(epoch FROM t.end_time - t.start_time)::int / 60) / t.slot_minutes - 1) AS k
),
instants AS (
  -- AT TIME ZONE takes the later reading of an ambiguous (fall-back) wall time; day_grid
  -- takes the first (fold=0), so step back an hour when that reads the same wall time.
  SELECT g.*, CASE WHEN ((g.local_start AT TIME ZONE g.timezone) - interval '1 hour')
                        AT TIME ZONE g.timezone = g.local_start
                   THEN (g.local_start AT TIME ZONE g.timezone) - interval '1 hour'
                   ELSE g.local_start AT TIME ZONE g.timezone END AS starts_at
  FROM grid g
),
blocked AS (
  -- each doctor's own exceptions and their clinic's closures near these days
  SELECT d.id AS doctor_id, e.starts_at, e.ends_at
  FROM schedule_exceptions e
  JOIN doctors d ON d.id = e.doctor_id OR (e.doctor_id IS NULL AND d.clinic_id = e.clinic_id)
  WHERE e.starts_at < :hi AND e.ends_at > :lo
),
open_slots AS (
  SELECT i.clinic_id, i.doctor_id, i.day, sum(i.slot_minutes) AS minutes
  FROM instants i
  WHERE (i.starts_at AT TIME ZONE i.timezone) = i.local_start  -- not in a spring-forward gap
    AND NOT EXISTS (
      SELECT 1 FROM blocked b
      WHERE b.doctor_id = i.doctor_id
        AND b.starts_at < i.starts_at + make_interval(mins => i.slot_minutes)
        AND b.ends_at > i.starts_at)
  GROUP BY 1, 2, 3
),
appts AS (
  SELECT a.clinic_id, a.doctor_id, a.day,
    count(*) FILTER (WHERE a.status = 'booked') AS booked,
    count(*) FILTER (WHERE a.status = 'checked_in') AS checked_in,
    count(*) FILTER (WHERE a.status = 'completed') AS completed,
    count(*) FILTER (WHERE a.status = 'cancelled') AS cancelled,
    count(*) FILTER (WHERE a.status = 'no_show') AS no_show,
    coalesce(sum(a.minutes) FILTER (WHERE a.status <> 'cancelled'), 0) AS booked_minutes
  FROM appt a
  GROUP BY 1, 2, 3
),
daily AS (
  INSERT INTO clinic_daily_stats AS s (clinic_id, day, doctor_id, booked, checked_in,
    completed, cancelled, no_show, available_minutes, booked_minutes, refreshed_at)
  SELECT coalesce(a.clinic_id, o.clinic_id), coalesce(a.day, o.day),
         coalesce(a.doctor_id, o.doctor_id),
         coalesce(a.booked, 0), coalesce(a.checked_in, 0), coalesce(a.completed, 0),
         coalesce(a.cancelled, 0), coalesce(a.no_show, 0), coalesce(o.minutes, 0),
         coalesce(a.booked_minutes, 0), now()
  FROM appts a
  FULL JOIN open_slots o
    ON o.clinic_id = a.clinic_id AND o.doctor_id = a.doctor_id AND o.day = a.day
  ON CONFLICT (clinic_id, day, doctor_id) DO UPDATE SET
    booked = excluded.booked, checked_in = excluded.checked_in,
    completed = excluded.completed, cancelled = excluded.cancelled,
    no_show = excluded.no_show, available_minutes = excluded.available_minutes,
    booked_minutes = excluded.booked_minutes, refreshed_at = excluded.refreshed_at
  RETURNING 1
)
INSERT INTO clinic_bucket_stats AS s (clinic_id, day, dimension, bucket, appointments,
  attended, no_show, cancelled, refreshed_at)
SELECT a.clinic_id, a.day, v.dimension, v.bucket,
  count(*) FILTER (WHERE a.status <> 'cancelled'),
  count(*) FILTER (WHERE a.status IN ('checked_in', 'completed')),
  count(*) FILTER (WHERE a.status = 'no_show'),
  count(*) FILTER (WHERE a.status = 'cancelled'),
  now()
FROM appt a CROSS JOIN LATERAL (VALUES
  ('hour', a.hour), ('lead_time', a.lead), ('cancel_lead', a.cancel_lead)
) AS v(dimension, bucket)
WHERE v.bucket IS NOT NULL
GROUP BY 1, 2, 3, 4
ON CONFLICT (clinic_id, day, dimension, bucket) DO UPDATE SET
  appointments = excluded.appointments, attended = excluded.attended,
  no_show = excluded.no_show, cancelled = excluded.cancelled,
  refreshed_at = excluded.refreshed_at
"""
).bindparams(_DAYS)

# Whole months, summed again from the daily rollups after these changed (a month is at
# most 31 x 500 doctors rows). `hour` keeps its weekday as `hour_of_week`.
_MONTHS = (
    "SELECT DISTINCT date_trunc('month', d)::date AS month FROM unnest(CAST(:days AS date[])) d"
)
MONTHLY_SQL = text(
    f"""
WITH months AS ({_MONTHS}),
stats AS (
  INSERT INTO clinic_monthly_stats AS s (clinic_id, month, doctor_id, booked, checked_in,
    completed, cancelled, no_show, available_minutes, booked_minutes, refreshed_at)
  SELECT d.clinic_id, m.month, d.doctor_id, sum(d.booked), sum(d.checked_in),
    sum(d.completed), sum(d.cancelled), sum(d.no_show), sum(d.available_minutes),
    sum(d.booked_minutes), now()
  FROM months m
  JOIN clinic_daily_stats d ON d.day >= m.month AND d.day < m.month + interval '1 month'
  GROUP BY 1, 2, 3
  ON CONFLICT (clinic_id, month, doctor_id) DO UPDATE SET
    booked = excluded.booked, checked_in = excluded.checked_in,
    completed = excluded.completed, cancelled = excluded.cancelled,
    no_show = excluded.no_show, available_minutes = excluded.available_minutes,
    booked_minutes = excluded.booked_minutes, refreshed_at = excluded.refreshed_at
  RETURNING 1
)
INSERT INTO clinic_monthly_buckets AS s (clinic_id, month, dimension, bucket, appointments,
  attended, no_show, cancelled, refreshed_at)
SELECT b.clinic_id, m.month,
  CASE WHEN b.dimension = 'hour' THEN 'hour_of_week' ELSE b.dimension END,
  CASE WHEN b.dimension = 'hour' THEN (extract(isodow FROM b.day)::int - 1) * 24 + b.bucket
       ELSE b.bucket END,
  sum(b.appointments), sum(b.attended), sum(b.no_show), sum(b.cancelled), now()
FROM months m
JOIN clinic_bucket_stats b ON b.day >= m.month AND b.day < m.month + interval '1 month'
GROUP BY 1, 2, 3, 4
ON CONFLICT (clinic_id, month, dimension, bucket) DO UPDATE SET
  appointments = excluded.appointments, attended = excluded.attended,
  no_show = excluded.no_show, cancelled = excluded.cancelled,
  refreshed_at = excluded.refreshed_at
"""
).bindparams(_DAYS)

# Rows of the recomputed days that this run did not write describe something that no
# longer exists (a doctor's last appointment moved away, a template removed): drop them.
# now() is the transaction's start, which is what this run's upserts wrote.
PRUNE_SQL = [
    text(
        f"DELETE FROM {table} WHERE day IN (SELECT unnest(CAST(:days AS date[]))) "
        "AND refreshed_at < now()"
    ).bindparams(_DAYS)
    for table in ("clinic_daily_stats", "clinic_bucket_stats")
]
PRUNE_MONTHS_SQL = [
    text(f"DELETE FROM {table} WHERE month IN ({_MONTHS}) AND refreshed_at < now()").bindparams(
        _DAYS
    )
    for table in ("clinic_monthly_stats", "clinic_monthly_buckets")
]


BUMP_GENERATION_SQL = text(
    f"""
INSERT INTO analytics_watermarks (name, until) VALUES ('{GENERATION}', clock_timestamp())
ON CONFLICT (name) DO UPDATE
SET until = greatest(analytics_watermarks.until + interval '1 microsecond', excluded.until)"""
)


def _utc_bounds(days: Sequence[dt.date]) -> tuple[dt.datetime, dt.datetime]:
    lo = dt.datetime.combine(min(days), dt.time(), tzinfo=dt.UTC) - dt.timedelta(days=1)
    hi = dt.datetime.combine(max(days), dt.time(), tzinfo=dt.UTC) + dt.timedelta(days=2)
    return lo, hi


async def refresh_days(conn: AsyncConnection, days: Sequence[dt.date]) -> None:
    """Recompute every clinic's rollups for these clinic-local days (in the caller's
    transaction). Idempotent: upserts, then prunes what the run did not write.

    Args:
        conn: a connection to the primary, in a transaction the caller commits.
        days: local calendar days; any order, duplicates ignored.
    """
    unique = sorted(set(days))
    if not unique:
        return
    lo, hi = _utc_bounds(unique)
    params = {"days": unique, "lo": lo, "hi": hi}
    # The GROUP BYs sort a month of appointments in memory instead of spilling to disk.
    await conn.execute(text("SET LOCAL work_mem = '64MB'"))
    await conn.execute(ROLLUP_SQL, params)
    for prune in PRUNE_SQL:
        await conn.execute(prune, {"days": unique})
    await conn.execute(MONTHLY_SQL, {"days": unique})
    for prune in PRUNE_MONTHS_SQL:
        await conn.execute(prune, {"days": unique})
    # Last, so concurrent refreshes (cron and a backfill) hold this row only until commit.
    await conn.execute(BUMP_GENERATION_SQL)


TOUCHED_SQL = text(
    """
SELECT DISTINCT (a.starts_at AT TIME ZONE c.timezone)::date
FROM appointments a JOIN clinics c ON c.id = a.clinic_id
WHERE a.updated_at >= :since"""
)


# Days whose stored count of booked appointments no longer matches the appointments, for
# the doctors with a change since the watermark. A reschedule moves a booked appointment
# from day A to day B of the same doctor and leaves only B to find by `updated_at`; A's
# `booked` is now one too high, and this finds it. Per doctor it is an index-only count
# over ix_appointments_doctor_starts (booked ones, from a week ago to the booking horizon
# and beyond) and a range of the daily rollup.
RECONCILE_PAST_DAYS = 7
RECONCILE_FUTURE_DAYS = 400
DRIFTED_SQL = text(
    """
WITH touched AS MATERIALIZED (
  SELECT DISTINCT a.clinic_id, a.doctor_id FROM appointments a WHERE a.updated_at >= :since
),
actual AS (
  SELECT t.clinic_id, t.doctor_id, (a.starts_at AT TIME ZONE c.timezone)::date AS day,
         count(*) AS n
  FROM touched t
  JOIN clinics c ON c.id = t.clinic_id
  JOIN appointments a ON a.doctor_id = t.doctor_id AND a.starts_at >= :lo AND a.starts_at < :hi
  WHERE a.status = 'booked'
  GROUP BY 1, 2, 3
),
stored AS (
  SELECT s.clinic_id, s.doctor_id, s.day, s.booked AS n
  FROM touched t
  JOIN clinic_daily_stats s
    ON s.clinic_id = t.clinic_id AND s.day BETWEEN :first AND :last AND s.doctor_id = t.doctor_id
  WHERE s.booked > 0
)
SELECT DISTINCT day FROM actual FULL JOIN stored USING (clinic_id, doctor_id, day)
WHERE day BETWEEN :first AND :last AND coalesce(actual.n, 0) <> coalesce(stored.n, 0)"""
)


@dataclass(frozen=True, slots=True)
class RefreshResult:
    days: list[dt.date]
    since: dt.datetime
    until: dt.datetime


async def refresh_recent(conn: AsyncConnection, *, around: int = 1) -> RefreshResult:
    """Refresh today (±`around` days, so every time zone's today is covered), every day
    with an appointment booked or changed since the last run, and every day those changes
    left behind (a reschedule's old day: DRIFTED_SQL); move the watermark.

    Runs in the caller's transaction; the watermark row is locked, so two runs at once
    take turns. The first run (no watermark) looks back two days; history is the
    backfill's job.
    """
    now = (await conn.execute(text("SELECT now()"))).scalar_one()
    since = (
        await conn.execute(
            text("SELECT until FROM analytics_watermarks WHERE name = :name FOR UPDATE"),
            {"name": ROLLUP_WATERMARK},
        )
    ).scalar_one_or_none()
    since = (since or now - dt.timedelta(days=2)) - WATERMARK_MARGIN
    touched = [d for (d,) in (await conn.execute(TOUCHED_SQL, {"since": since})).all()]
    today = now.astimezone(dt.UTC).date()
    first = today - dt.timedelta(days=RECONCILE_PAST_DAYS)
    last = today + dt.timedelta(days=RECONCILE_FUTURE_DAYS)
    lo, hi = _utc_bounds([first, last])
    window = {"since": since, "first": first, "last": last, "lo": lo, "hi": hi}
    drifted = [d for (d,) in (await conn.execute(DRIFTED_SQL, window)).all()]
    days = sorted(
        {*touched, *drifted, *(today + dt.timedelta(days=i) for i in range(-around, around + 1))}
    )
    await refresh_days(conn, days)
    await conn.execute(
        text(
            "INSERT INTO analytics_watermarks (name, until) VALUES (:name, :until) "
            "ON CONFLICT (name) DO UPDATE SET until = excluded.until"
        ),
        {"name": ROLLUP_WATERMARK, "until": now},
    )
    return RefreshResult(days, since, now)


def day_chunks(first: dt.date, last: dt.date, size: int = 7) -> list[list[dt.date]]:
    """Consecutive days from `first` to `last` (inclusive) in lists of at most `size`."""
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    return [days[i : i + size] for i in range(0, len(days), size)]
