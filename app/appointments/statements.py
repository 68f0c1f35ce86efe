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

# The patient's channel for a notice, as `notifications.choose_channel` picks it: their
# choice, the other one when the chosen address is missing, none when they chose none.
PATIENT_CHANNEL_SQL = """CASE
    WHEN p.notify_by = 'none' THEN NULL
    WHEN p.notify_by = 'email' THEN CASE WHEN coalesce(p.email, '') <> '' THEN 'email'
                                         WHEN coalesce(p.phone, '') <> '' THEN 'sms' END
    ELSE CASE WHEN coalesce(p.phone, '') <> '' THEN 'sms'
              WHEN coalesce(p.email, '') <> '' THEN 'email' END
  END"""

# A status change of any number of appointments as one statement, without the ORM's unit
# of work: the rows the actor may see among :ids, the update of those the rules allow
# (`rules.guard`: from-states and time conditions, re-checked on the locked row, so two
# racing changes cannot both pass), their unsent announcements voided, a notice for each
# cancellation, who did it and why on the row, and an audit event per change. Returns a
# row per id found: what it was (found_*), whether the actor may see it, the clinic's time
# zone, and the appointment's new columns when it changed (else NULLs).
CHANGE_STATUS_SQL = text(
    f"""
WITH target AS (
  SELECT a.id, a.status, a.starts_at, a.ends_at, a.clinic_id,
         (CAST(:see_clinic AS bigint) IS NULL OR a.clinic_id = CAST(:see_clinic AS bigint))
     AND (CAST(:see_doctor AS bigint) IS NULL OR a.doctor_id = CAST(:see_doctor AS bigint))
     AND (CAST(:see_patient AS bigint) IS NULL OR a.patient_id = CAST(:see_patient AS bigint))
         AS may_see
    FROM appointments a
   WHERE a.id = ANY(CAST(:ids AS bigint[]))
), changed AS (
  UPDATE appointments a
     SET status = CAST(:status AS text),
         updated_at = CAST(:now AS timestamptz),
         cancelled_at = coalesce(CAST(:cancelled_at AS timestamptz), a.cancelled_at),
         checked_in_at = coalesce(CAST(:checked_in_at AS timestamptz), a.checked_in_at),
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
  RETURNING a.*, t.status AS previous
), voided AS (
  UPDATE notifications n SET status = 'void', last_error = 'no longer applies'
   WHERE n.appointment_id IN (SELECT id FROM changed)
     AND n.kind = ANY(CAST(:announcements AS text[]))
     AND n.status = ANY(CAST(:unsent AS text[]))
), notice AS (
  INSERT INTO notifications (appointment_id, channel, kind, due_at)
  SELECT c.id, ch.channel, CAST(:notice AS text), CAST(:now AS timestamptz)
    FROM changed c
    JOIN patients p ON p.id = c.patient_id
   CROSS JOIN LATERAL (SELECT {PATIENT_CHANNEL_SQL} AS channel) ch
   WHERE c.status = 'cancelled' AND ch.channel IS NOT NULL
), audited AS (
  INSERT INTO audit_events (actor_user_id, action, subject_type, subject_id, patient_id,
                            details)
  SELECT CAST(:actor AS bigint), CAST(:action AS text), 'appointment', c.id, c.patient_id,
         jsonb_build_object('from', c.previous, 'to', c.status,
                            'reason', CAST(:reason AS text))
           || CAST(CAST(:details AS text) AS jsonb)
    FROM changed c
)
SELECT t.id AS found_id, t.status AS found_status, t.starts_at AS found_starts_at,
       t.ends_at AS found_ends_at, t.may_see, z.timezone, c.*
  FROM target t
  JOIN clinics z ON z.id = t.clinic_id
  LEFT JOIN changed c ON c.id = t.id
"""
)
