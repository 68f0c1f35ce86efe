"""Analytics rollups: `clinic_daily_stats` and `clinic_bucket_stats` rebuilt in SQL, a set
of days at a time, with the monthly tables summed from them (review C-6).

Rollups (`clinic_daily_stats` per clinic, local day and doctor; `clinic_bucket_stats` per
clinic, local day and hour / booking lead time / cancellation lead time) are rebuilt a
set of days at a time by `refresh_days`: a handful of INSERT … SELECT … GROUP BY … ON
CONFLICT DO UPDATE statements, so no appointment is ever loaded into Python, and running
one twice is harmless. `refresh_recent` (cron) follows the changes since a watermark;
`day_chunks` cuts a backfill into short transactions.

Available minutes reproduce `app.scheduling.availability.day_grid` in SQL: every template slot of
every active doctor on each clinic-local day (weekday and validity in clinic-local
dates), laid out on the wall clock and converted to an instant with the clinic's zone;
slots in a spring-forward gap are dropped, ambiguous fall-back times take their first
occurrence (as `fold=0` does), and slots overlapping the doctor's or the clinic's
exceptions are not available. Booked minutes are the length of every appointment that is
not cancelled (a no-show holds its slot). See docs/analytics.md for the definitions.

Domain code: no Litestar here. Functions take an `AsyncConnection` to the primary, in a
transaction the caller commits.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, DATE
from sqlalchemy.ext.asyncio import AsyncConnection

from app.i18n import N_

# Lead-time buckets, shared by booking lead (start - booked) and cancellation lead
# (start - cancelled). `_LEAD` below must keep the same boundaries.
# English in the rollups, the CSV and the JSON API; pages show them in the viewer's language
# (reports.shown_label).
LEAD_BUCKETS = (
    N_("under 1 day"),
    N_("1-2 days"),
    N_("3-7 days"),
    N_("8-14 days"),
    N_("15-30 days"),
    N_("over 30 days"),
)
ROLLUP_WATERMARK = "rollups"
GENERATION = "rollups_changed"  # moved by every refresh_days: a cache key for reports
# Changes committed within this margin before a run's start are looked at again by the
# next run: a write's updated_at is taken before its commit (short transactions, bounded by
# the idle-in-transaction timeout) and app clocks may differ a little from the database's.
WATERMARK_MARGIN = dt.timedelta(minutes=2)

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
      AND x.status <> 'held'  -- a waitlist hold is nobody's appointment yet
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
