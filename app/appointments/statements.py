"""Booking's hot SQL, written out: the facts a booking checks, and the booking itself."""

from __future__ import annotations

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
# Parameters: $1 doctor, $2 patient, $3 clinic, $4 starts_at, $5 ends_at, $6 reason,
# $7 idempotency key, $8 its request hash, $9 booked_by, $10 channel, $11 kinds, $12 due
# times, $13 the limit, $14 now, $15 write (false: only take the lock).
BOOK_SQL = f"""
WITH earlier AS (
  SELECT * FROM appointments WHERE $15 AND booked_by = $9 AND idempotency_key = $7
), booked AS (
  INSERT INTO appointments (doctor_id, patient_id, clinic_id, starts_at, ends_at, reason,
                            idempotency_key, idempotency_hash, booked_by)
  SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9
   WHERE CASE WHEN $15 THEN
           NOT EXISTS (SELECT FROM earlier)
           AND (SELECT count(*) FROM appointments h
                 WHERE h.patient_id = $2 AND h.doctor_id = $1 AND h.status = 'booked'
                   AND h.starts_at > $14) < $13
         ELSE  -- a subquery, so the planner cannot drop the call: takes the lock, is false
           (SELECT count(*) FROM {held_lock("CAST($2 AS bigint)", "CAST($1 AS bigint)")}) = 0
         END
  RETURNING *
), outbox AS (
  INSERT INTO notifications (appointment_id, channel, kind, due_at)
  SELECT booked.id, CAST($10 AS varchar), plan.kind, plan.due_at
    FROM booked, unnest(CAST($11 AS text[]), CAST($12 AS timestamptz[])) AS plan(kind, due_at)
)
SELECT *, false AS replayed FROM booked
UNION ALL
SELECT *, true AS replayed FROM earlier
"""
