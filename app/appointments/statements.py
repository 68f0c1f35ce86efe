"""Booking's hot SQL, written out: the facts a booking checks, and the booking itself."""

from __future__ import annotations

from sqlalchemy import text

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

# The booking and its outbox rows (confirmation, reminders) in one statement: one
# statement is atomic on its own, so this needs no BEGIN/COMMIT round trips. The
# exclusion constraint `no_overlap` decides who gets a contested slot, right here.
INSERT_BOOKING_SQL = text(
    """
WITH booked AS (
  INSERT INTO appointments (doctor_id, patient_id, clinic_id, starts_at, ends_at, reason,
                            idempotency_key, idempotency_hash, booked_by)
  VALUES (:doctor_id, :patient_id, :clinic_id, :starts_at, :ends_at, :reason,
          :idempotency_key, :idempotency_hash, :booked_by)
  RETURNING *
), outbox AS (
  INSERT INTO notifications (appointment_id, channel, kind, due_at)
  SELECT booked.id, CAST(:channel AS varchar), plan.kind, plan.due_at
    FROM booked, unnest(CAST(:kinds AS text[]), CAST(:dues AS timestamptz[])) AS plan(kind, due_at)
)
SELECT * FROM booked
"""
)
