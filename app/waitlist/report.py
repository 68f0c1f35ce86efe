"""The waitlist on the analytics dashboard: offers made, accepted, declined and expired;
freed slots, the share refilled, and the median time from a freed slot to a new booking.

A freed slot is a cancellation made before the appointment's start, or an appointment
moved away from a time that had not yet begun (the old time, from the move's audit event);
it counts as refilled when an active appointment of the same doctor overlapping its time
was booked after it was freed (by the waitlist or directly: the clinic's question is
whether the time was used). A booking from an offer counts from its acceptance
(`created_at` is then). Days are the clinic's; read live from the tables (offers are few;
cancellations are found by the clinic-and-start index, since a cancellation comes before
its start, and moves by the audit trail's time index).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.access.audit import APPOINTMENT_RESCHEDULED
from db.models import ACTIVE_STATUSES

_ACTIVE = ", ".join(repr(s) for s in ACTIVE_STATUSES)

WAITLIST_REPORT_SQL = text(
    f"""
WITH offered AS (
  SELECT o.status FROM waitlist_offers o JOIN clinics c ON c.id = o.clinic_id
   WHERE (CAST(:clinic_id AS bigint) IS NULL OR o.clinic_id = CAST(:clinic_id AS bigint))
     AND o.created_at >= CAST(:first AS date) - interval '1 day'
     AND o.created_at < CAST(:last AS date) + interval '2 days'
     AND CAST(o.created_at AT TIME ZONE c.timezone AS date) BETWEEN :first AND :last
), cancelled AS (
  SELECT a.doctor_id, a.starts_at, a.ends_at, a.cancelled_at AS freed_at
    FROM appointments a JOIN clinics c ON c.id = a.clinic_id
   WHERE a.status = 'cancelled' AND a.cancelled_at < a.starts_at
     AND (CAST(:clinic_id AS bigint) IS NULL OR a.clinic_id = CAST(:clinic_id AS bigint))
     AND a.starts_at >= CAST(:first AS date) - interval '1 day'
     AND CAST(a.cancelled_at AT TIME ZONE c.timezone AS date) BETWEEN :first AND :last
), moved AS (
  SELECT a.doctor_id, a.clinic_id, e.at AS freed_at,
         CAST(e.details -> 'from' ->> 0 AS timestamptz) AS starts_at,
         CAST(e.details -> 'from' ->> 1 AS timestamptz) AS ends_at
    FROM audit_events e JOIN appointments a ON a.id = e.subject_id
   WHERE e.action = '{APPOINTMENT_RESCHEDULED}' AND e.subject_type = 'appointment'
     AND e.at >= CAST(:first AS date) - interval '1 day'
     AND e.at < CAST(:last AS date) + interval '2 days'
     AND (CAST(:clinic_id AS bigint) IS NULL OR a.clinic_id = CAST(:clinic_id AS bigint))
), moved_away AS (
  SELECT m.doctor_id, m.starts_at, m.ends_at, m.freed_at
    FROM moved m JOIN clinics c ON c.id = m.clinic_id
   WHERE m.freed_at < m.starts_at
     AND CAST(m.freed_at AT TIME ZONE c.timezone AS date) BETWEEN :first AND :last
), freed AS (
  SELECT f.freed_at,
         (SELECT min(b.created_at) FROM appointments b
           WHERE b.doctor_id = f.doctor_id AND b.status IN ({_ACTIVE})
             AND b.starts_at < f.ends_at AND b.ends_at > f.starts_at
             AND b.starts_at >= f.starts_at - interval '1 day'
             AND b.created_at >= f.freed_at) AS rebooked_at
    FROM (SELECT * FROM cancelled UNION ALL SELECT * FROM moved_away) f
)
SELECT (SELECT count(*) FROM offered) AS made,
       (SELECT count(*) FROM offered WHERE status = 'accepted') AS accepted,
       (SELECT count(*) FROM offered WHERE status = 'declined') AS declined,
       (SELECT count(*) FROM offered WHERE status = 'expired') AS expired,
       (SELECT count(*) FROM freed) AS freed,
       (SELECT count(*) FROM freed WHERE rebooked_at IS NOT NULL) AS refilled,
       (SELECT percentile_cont(0.5) WITHIN GROUP
                 (ORDER BY extract(epoch FROM rebooked_at - freed_at))
          FROM freed WHERE rebooked_at IS NOT NULL) AS median_seconds
"""
)


@dataclass(frozen=True, slots=True)
class WaitlistReport:
    made: int
    accepted: int
    declined: int
    expired: int
    freed: int
    refilled: int
    median_seconds: float | None

    @property
    def refilled_share(self) -> float | None:
        return self.refilled / self.freed if self.freed else None

    @property
    def median_label(self) -> str:
        """`1 h 5 min`, `4 min`, `40 s`; a dash when nothing was refilled."""
        if self.median_seconds is None:
            return "—"
        seconds = round(self.median_seconds)
        hours, rest = divmod(seconds, 3600)
        if hours:
            return f"{hours} h {rest // 60} min"
        return f"{rest // 60} min" if rest >= 60 else f"{rest} s"


async def waitlist_report(
    conn: AsyncConnection, first: dt.date, last: dt.date, clinic_id: int | None
) -> WaitlistReport:
    """The waitlist's figures for clinic-local days first..last (one clinic, or all)."""
    row = (
        await conn.execute(
            WAITLIST_REPORT_SQL, {"first": first, "last": last, "clinic_id": clinic_id}
        )
    ).one()
    return WaitlistReport(
        int(row.made),
        int(row.accepted),
        int(row.declined),
        int(row.expired),
        int(row.freed),
        int(row.refilled),
        float(row.median_seconds) if row.median_seconds is not None else None,
    )
