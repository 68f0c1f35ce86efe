"""Analytics reports read from the rollups (app/analytics/rollups.py): no-shows, popular
slots, utilisation, cancellations and the dashboard that holds them all (review C-6).

Reports read at most a few hundred thousand small rollup rows, whatever the number of
appointments: whole months from the monthly tables, the days at either end from the daily
ones. See docs/analytics.md for the definitions.

Domain code: no Litestar here. Functions take an `AsyncConnection` (or session) and plain
values; the caller picks the engine (the read replica for reports).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from app.access.identity import Principal
from app.analytics.rollups import GENERATION, LEAD_BUCKETS
from app.concurrently import concurrently
from app.errors import DomainError, Forbidden, Invalid
from app.i18n import N_, gettext, weekday

GROUPS = ("clinic", "doctor", "weekday", "hour", "lead_time")
# What a page calls each grouping (the API and the CSV keep the names above).
GROUP_NAMES = {
    "clinic": N_("clinic"),
    "doctor": N_("doctor"),
    "weekday": N_("weekday"),
    "hour": N_("hour"),
    "lead_time": N_("lead time"),
}


def group_name(group_by: str) -> str:
    """A grouping's name in the current language."""
    return gettext(GROUP_NAMES.get(group_by, group_by))


def shown_label(group_by: str, key: int, label: str) -> str:
    """A report row's label in the current language: rows keep English labels for the API
    and the CSV; a weekday is Babel's, a lead-time bucket the catalogue's."""
    if group_by == "weekday":
        return weekday(key)
    if group_by == "lead_time":
        return gettext(label)
    return label


WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MAX_RANGE_DAYS = 1100  # three years of rollups answer in milliseconds; exports go further
MAX_EXPORT_DAYS = 3660

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
            raise Forbidden(gettext("front desks see their own clinic's analytics only"))
        clinic_id = actor.clinic_id
    elif actor.role != "admin":
        raise Forbidden(gettext("analytics are for admins and front desks"))
    last = last_day or today
    first = first_day or last - dt.timedelta(days=29)
    if first > last:
        raise Invalid(gettext("`from` must not be after `to`"))
    if (last - first).days + 1 > max_days:
        raise Invalid(gettext("a range covers at most %(max_days)s days") % {"max_days": max_days})
    return ReportScope(first, last, clinic_id)


async def scope_of(
    db: AsyncConnection | AsyncSession,
    actor: Principal,
    first_day: dt.date | None,
    last_day: dt.date | None,
    clinic_id: int | None,
    now: dt.datetime,
    max_days: int = MAX_RANGE_DAYS,
) -> ReportScope:
    """`report_scope`, its default range ending on the clinics' own today (see
    `clinics_today`; read only when the range's end is not given)."""
    today = last_day
    if today is None:
        own = actor.clinic_id if actor.role == "front_desk" else clinic_id
        today = await clinics_today(db, own, now)
    return report_scope(actor, first_day, last_day, clinic_id, today, max_days)


async def clinics_today(
    db: AsyncConnection | AsyncSession, clinic_id: int | None, now: dt.datetime
) -> dt.date:
    """Today where it is latest among the clinics a report covers (`clinic_id`, or all).

    A report's days are clinic-local, so "the last 30 days" must end on the clinic's
    today, not UTC's: UTC's date leaves a Berlin clinic's today out from 23:00 UTC, a
    Sydney clinic's from 13:00. Across clinics the latest of their todays, so every
    clinic's today is in (a clinic still on yesterday has nothing on the day after)."""
    zones = await db.execute(
        text("SELECT DISTINCT timezone FROM clinics WHERE CAST(:c AS bigint) IS NULL OR id = :c"),
        {"c": clinic_id},
    )
    days = [now.astimezone(ZoneInfo(zone)).date() for (zone,) in zones]
    return max(days, default=now.astimezone(dt.UTC).date())


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
        raise Invalid(
            gettext("group_by must be one of %(choices)s") % {"choices": ", ".join(GROUPS)}
        )
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
        return [(f"{weekday(w)} {h:02d}:00", n) for (w, h), n in top if n]

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
        raise Invalid(
            gettext("group_by must be one of %(choices)s") % {"choices": ", ".join(GROUPS)}
        )
    async with engine.connect() as conn:
        generation = (await _rows(conn, GENERATION_SQL, {}) or [(None,)])[0][0]
    key = (engine.url, generation, scope, group_by)
    if generation is not None and (cached := _DASHBOARDS.get(key)) is not None:
        _DASHBOARDS.move_to_end(key)
        return cached

    async def on_own_connection(sql: str, params: dict[str, Any]) -> list[Any]:
        async with engine.connect() as conn:
            return await _rows(conn, text(sql), params)

    stats, buckets = await concurrently(
        on_own_connection(DASHBOARD_STATS_SQL, _params(scope)),
        on_own_connection(DASHBOARD_BUCKETS_SQL, _params(scope, dimensions=_DASHBOARD_DIMENSIONS)),
    )
    report = dashboard_from_rows(scope, group_by, stats, buckets)
    if generation is not None:
        _DASHBOARDS[key] = report
        while len(_DASHBOARDS) > DASHBOARD_CACHE_SIZE:
            _DASHBOARDS.popitem(last=False)
    return report
