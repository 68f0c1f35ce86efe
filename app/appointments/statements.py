"""Booking's hot SQL, written out: the facts a booking checks, and the booking itself."""

from __future__ import annotations

from sqlalchemy import text

from app.access.audit import APPOINTMENT_LIMIT_OVERRIDDEN
from app.scheduling.slots import doctor_days_sql

# What a booking reads, in one round trip: the doctor's days around the slot (for the
# grid, leave and the good error messages) and, of the patient, that they exist, how many
# future appointments they hold with this doctor, and how they want to be told.
BOOKING_FACTS_SQL = doctor_days_sql(
    """,
  (SELECT json_build_array(p.notify_by, p.email, p.phone,
            (SELECT count(*) FROM appointments h
              WHERE h.patient_id = p.id AND h.doctor_id = d.id AND h.status = 'booked'
                AND h.starts_at > :now))
     FROM patients p WHERE p.id = :patient_id) AS patient"""
)


def held_lock(patient_id: str, doctor_id: str) -> str:
    """SQL that takes this transaction's lock on what one patient holds with one doctor
    (their future bookings, counted against the limit), given SQL for the two ids. Booking
    and rescheduling take it before they count."""
    key = f"'appointments held:' || {patient_id} || ':' || {doctor_id}"
    return f"pg_advisory_xact_lock(hashtextextended({key}, 0))"


# The booking, run as two executions of this one statement sent together with asyncpg's
# fetchmany: one round trip, one transaction (the pipeline's implicit one, or the
# caller's). The first ($15 false) takes the patient-doctor lock and writes nothing. The
# second ($15 true) runs on a snapshot taken after the lock was granted, so it sees every
# booking committed by whoever held the lock before: it counts the patient's future
# bookings with the doctor and books only below the limit ($13), or, when the user has
# already booked under this Idempotency-Key, books nothing and returns that booking
# (`replayed`). Inside one statement the lock would not do: its snapshot is taken before
# the lock is waited for, so it would count without the booking it waited for.
# The insert writes the appointment and its outbox rows (confirmation, reminders) at once,
# and the exclusion constraint `no_overlap` decides who gets a contested slot, right here.
# Staff who give a reason ($16) book beyond the limit: then the count under the lock
# decides whether this booking goes beyond it, and if so its audit event
# (appointment.limit_overridden, with the reason and what was held) is written with it.
# Parameters: $1 doctor, $2 patient, $3 clinic, $4 starts_at, $5 ends_at, $6 reason,
# $7 idempotency key, $8 its request hash, $9 booked_by, $10 channels (an array: each
# planned message goes by each, two rows for `both`), $11 kinds, $12 due times, $13 the
# limit, $14 now, $15 write (false: only take the lock), $16 the staff's reason to go
# beyond the limit (NULL: none), $17 the visit type (NULL: the template's slot), $18 and
# $19 its buffers before and after in minutes (copied: editing the type later changes
# nothing booked; PostgreSQL derives the blocked span from them).
BOOK_SQL = f"""
WITH earlier AS (
  SELECT * FROM appointments WHERE $15 AND booked_by = $9 AND idempotency_key = $7
), held AS (  -- the patient's future bookings with the doctor (this snapshot: before this)
  SELECT count(*) AS n FROM appointments h
   WHERE $15 AND h.patient_id = $2 AND h.doctor_id = $1 AND h.status = 'booked'
     AND h.starts_at > $14
), booked AS (
  INSERT INTO appointments (doctor_id, patient_id, clinic_id, starts_at, ends_at, reason,
                            idempotency_key, idempotency_hash, booked_by, visit_type_id,
                            buffer_before_minutes, buffer_after_minutes)
  SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $17, $18, $19
   WHERE CASE WHEN $15 THEN
           NOT EXISTS (SELECT FROM earlier)
           AND ((SELECT n FROM held) < CAST($13 AS bigint) OR CAST($16 AS text) IS NOT NULL)
         ELSE  -- a subquery, so the planner cannot drop the call: takes the lock, is false
           (SELECT count(*) FROM {held_lock("CAST($2 AS bigint)", "CAST($1 AS bigint)")}) = 0
         END
  RETURNING *
), outbox AS (
  INSERT INTO notifications (appointment_id, channel, kind, due_at)
  SELECT booked.id, chosen.channel, plan.kind, plan.due_at
    FROM booked, unnest(CAST($10 AS varchar[])) AS chosen(channel),
         unnest(CAST($11 AS text[]), CAST($12 AS timestamptz[])) AS plan(kind, due_at)
), overridden AS (
  INSERT INTO audit_events (actor_user_id, action, subject_type, subject_id, patient_id,
                            details)
  SELECT booked.booked_by, '{APPOINTMENT_LIMIT_OVERRIDDEN}', 'appointment', booked.id,
         booked.patient_id,
         jsonb_build_object('reason', CAST($16 AS text), 'held', held.n,
                            'doctor_id', booked.doctor_id)
    FROM booked, held
   WHERE CAST($16 AS text) IS NOT NULL AND held.n >= CAST($13 AS bigint)
)
SELECT *, false AS replayed FROM booked
UNION ALL
SELECT *, true AS replayed FROM earlier
"""

# The patient's channels for a notice, as `notifications.choose_channels` picks them (a
# text[]): for `both`, each channel with an address; else their choice, the other one when
# the chosen address is missing; none when they chose none (or have no address at all).
PATIENT_CHANNELS_SQL = """CASE
    WHEN p.notify_by = 'none' THEN CAST(ARRAY[] AS text[])
    WHEN p.notify_by = 'both'
      THEN array_remove(ARRAY[CASE WHEN coalesce(p.email, '') <> '' THEN 'email' END,
                              CASE WHEN coalesce(p.phone, '') <> '' THEN 'sms' END], NULL)
    WHEN p.notify_by = 'email'
      THEN array_remove(ARRAY[CASE WHEN coalesce(p.email, '') <> '' THEN 'email'
                                   WHEN coalesce(p.phone, '') <> '' THEN 'sms' END], NULL)
    ELSE array_remove(ARRAY[CASE WHEN coalesce(p.phone, '') <> '' THEN 'sms'
                                 WHEN coalesce(p.email, '') <> '' THEN 'email' END], NULL)
  END"""

# A status change of any number of appointments as one statement, without the ORM's unit
# of work: the rows the actor may see among :ids, the update of those the rules allow
# (`rules.guard`: from-states and time conditions, re-checked on the locked row, so two
# racing changes cannot both pass; a check-in on the clinic's day of the appointment, its
# undo back to `booked` within minutes), their unsent announcements voided (not for an
# undone check-in: the visit still lies ahead), a notice for each cancellation on each
# channel the patient chose, who did it and why on the row, and an audit event per change
# (an undone check-in's says when the check-in was). Returns a row per id found: what it
# was (found_*), whether the actor may see it, the clinic's time zone, whether anyone
# waits on its clinic's waitlist (no refill is asked otherwise), and the appointment's new
# columns when it changed (else NULLs).
CHANGE_STATUS_SQL = text(
    f"""
WITH target AS (
  SELECT a.id, a.status, a.starts_at, a.ends_at, a.checked_in_at, a.clinic_id, z.timezone,
         (CAST(:see_clinic AS bigint) IS NULL OR a.clinic_id = CAST(:see_clinic AS bigint))
     AND (CAST(:see_doctor AS bigint) IS NULL OR a.doctor_id = CAST(:see_doctor AS bigint))
     AND (CAST(:see_patient AS bigint) IS NULL OR a.patient_id = CAST(:see_patient AS bigint))
         AS may_see
    FROM appointments a
    JOIN clinics z ON z.id = a.clinic_id
   WHERE a.id = ANY(CAST(:ids AS bigint[]))
), changed AS (
  UPDATE appointments a
     SET status = CAST(:status AS text),
         updated_at = CAST(:now AS timestamptz),
         cancelled_at = coalesce(CAST(:cancelled_at AS timestamptz), a.cancelled_at),
         checked_in_at = CASE WHEN CAST(:clear_checked_in AS boolean) THEN NULL
                              ELSE coalesce(CAST(:checked_in_at AS timestamptz), a.checked_in_at)
                         END,
         cancel_reason = CASE WHEN CAST(:status AS text) = 'cancelled'
                              THEN CAST(:reason AS text) ELSE a.cancel_reason END,
         changed_by = CAST(:actor AS bigint),
         change_reason = CAST(:reason AS text)
    FROM target t
   WHERE a.id = t.id AND t.may_see
     AND a.status = ANY(CAST(:allowed_from AS text[]))
     AND (CAST(:started_by AS timestamptz) IS NULL
          OR a.starts_at <= CAST(:started_by AS timestamptz))
     AND (CAST(:ends_after AS timestamptz) IS NULL
          OR a.ends_at > CAST(:ends_after AS timestamptz))
     AND (CAST(:on_day_of AS timestamptz) IS NULL
          OR CAST(a.starts_at AT TIME ZONE t.timezone AS date)
             = CAST(CAST(:on_day_of AS timestamptz) AT TIME ZONE t.timezone AS date))
     AND (CAST(:checked_in_since AS timestamptz) IS NULL
          OR a.checked_in_at >= CAST(:checked_in_since AS timestamptz))
  RETURNING a.*, t.status AS previous, t.checked_in_at AS previous_checked_in_at
), voided AS (
  UPDATE notifications n SET status = 'void', last_error = 'no longer applies'
   WHERE n.appointment_id IN (SELECT id FROM changed WHERE status <> 'booked')
     AND n.kind = ANY(CAST(:announcements AS text[]))
     AND n.status = ANY(CAST(:unsent AS text[]))
), notice AS (
  INSERT INTO notifications (appointment_id, channel, kind, due_at)
  SELECT c.id, ch.channel, CAST(:notice AS text), CAST(:now AS timestamptz)
    FROM changed c
    JOIN patients p ON p.id = c.patient_id
   CROSS JOIN LATERAL unnest({PATIENT_CHANNELS_SQL}) AS ch(channel)
   WHERE c.status = 'cancelled'
), audited AS (
  INSERT INTO audit_events (actor_user_id, action, subject_type, subject_id, patient_id,
                            details)
  SELECT CAST(:actor AS bigint), CAST(:action AS text), 'appointment', c.id, c.patient_id,
         jsonb_build_object('from', c.previous, 'to', c.status,
                            'reason', CAST(:reason AS text))
           || CASE WHEN c.status = 'booked'  -- an undone check-in: when it was
                   THEN jsonb_build_object('checked_in_at', c.previous_checked_in_at)
                   ELSE CAST('{{}}' AS jsonb) END
           || CAST(CAST(:details AS text) AS jsonb)
    FROM changed c
)
SELECT t.id AS found_id, t.status AS found_status, t.starts_at AS found_starts_at,
       t.ends_at AS found_ends_at, t.checked_in_at AS found_checked_in_at, t.may_see,
       t.timezone,
       EXISTS (SELECT FROM waitlist_entries e
                WHERE e.clinic_id = t.clinic_id AND e.status = 'waiting') AS someone_waits,
       c.*
  FROM target t
  LEFT JOIN changed c ON c.id = t.id
"""
)
