"""The waitlist's SQL: making an offer (the hold), accepting, releasing, and what lapsed.

Why two offers for one slot cannot exist: a hold is an `appointments` row (status `held`),
so the exclusion constraint `no_overlap` that keeps two bookings apart keeps a hold apart
from every booking and every other hold. Why one wish is never offered two slots at once:
the unique index `uq_waitlist_offers_entry_open`. The statements below only choose whom
to offer what; PostgreSQL decides who gets a contested slot (docs/booking.md, "Holds").
"""

from __future__ import annotations

from sqlalchemy import text

from app.access.audit import OFFER_ACCEPTED, OFFER_DECLINED
from app.appointments.statements import held_lock
from db.models import BLOCKING_SQL

# The visit types a doctor's waiting entries ask for (NULL: plain slots), the type of the
# longest-waiting entry first, so the first in line is served first.
WAITED_TYPES_SQL = text(
    """
SELECT e.visit_type_id FROM waitlist_entries e
 WHERE e.status = 'waiting' AND e.clinic_id = :clinic_id
   AND (e.doctor_id = :doctor_id OR (e.doctor_id IS NULL AND e.specialty = :specialty))
 GROUP BY e.visit_type_id
 ORDER BY min(e.created_at)
"""
)

# Refills of one doctor run one at a time (workers may run several refill jobs at once):
# they would only compete for the same slots. Correctness does not rest on it.
REFILL_LOCK_SQL = text(
    "SELECT pg_advisory_xact_lock(hashtextextended('waitlist refill:'"
    " || CAST(CAST(:doctor_id AS bigint) AS text), 0))"
)

# The channels of an offer: it lapses within minutes, so every channel with an address
# (not only the preferred one), unless the patient asked for no messages at all.
_OFFER_CHANNELS = """CASE WHEN p.notify_by = 'none' THEN CAST(ARRAY[] AS text[])
  ELSE array_remove(ARRAY[CASE WHEN coalesce(p.email, '') <> '' THEN 'email' END,
                          CASE WHEN coalesce(p.phone, '') <> '' THEN 'sms' END], NULL) END"""

# Offer one free slot to the first waiting entry that matches it, in one statement: the
# entry (first come, first served; one a concurrent refill holds is skipped), the hold,
# the offer and its outbox rows. An entry matches a doctor, or its clinic and specialty,
# the clinic-local day, weekday and time-of-day window; it has no open offer, was never
# offered this very slot (a declined or lapsed offer is not made again), and its patient
# has nothing else at that time. The slot's `freed_at` is kept from the offer it follows.
# The slot is a visit of the entry's type (:visit_type_id, NULL: a plain template slot):
# the hold carries the type and its buffers, so what it blocks (`blocked`, the exclusion
# constraint's span) is the visit with its buffers, as a booking of that type would.
# Returns no row when nobody matches.
OFFER_SQL = text(
    f"""
WITH entry AS (
  SELECT e.id, e.patient_id FROM waitlist_entries e
   WHERE e.status = 'waiting' AND e.clinic_id = :clinic_id
     AND (e.doctor_id = :doctor_id OR (e.doctor_id IS NULL AND e.specialty = :specialty))
     AND e.visit_type_id IS NOT DISTINCT FROM CAST(:visit_type_id AS bigint)
     AND CAST(:day AS date) BETWEEN e.first_day AND e.last_day
     AND (e.weekdays IS NULL OR CAST(:weekday AS smallint) = ANY(e.weekdays))
     AND (e.earliest IS NULL OR CAST(:local_start AS time) >= e.earliest)
     AND (e.latest IS NULL OR CAST(:local_end AS time) <= e.latest)
     AND NOT EXISTS (SELECT FROM waitlist_offers o
                      WHERE o.entry_id = e.id
                        AND (o.status = 'open'
                             OR (o.doctor_id = :doctor_id AND o.starts_at = :starts_at)))
     AND NOT EXISTS (SELECT FROM appointments a
                      WHERE a.patient_id = e.patient_id AND a.{BLOCKING_SQL}
                        AND a.starts_at < :ends_at AND a.ends_at > :starts_at)
   ORDER BY e.created_at, e.id
   LIMIT 1
   FOR UPDATE SKIP LOCKED
), hold AS (
  INSERT INTO appointments (doctor_id, patient_id, clinic_id, starts_at, ends_at, status,
                            hold_expires_at, visit_type_id, buffer_before_minutes,
                            buffer_after_minutes, created_at, updated_at)
  SELECT :doctor_id, entry.patient_id, :clinic_id, :starts_at, :ends_at, 'held',
         :expires_at, :visit_type_id, :buffer_before, :buffer_after, :now, :now
    FROM entry
  RETURNING id, patient_id
), offer AS (
  INSERT INTO waitlist_offers (entry_id, patient_id, doctor_id, clinic_id, appointment_id,
                               starts_at, ends_at, expires_at, freed_at, created_at)
  SELECT entry.id, hold.patient_id, :doctor_id, :clinic_id, hold.id, :starts_at, :ends_at,
         :expires_at,
         coalesce((SELECT o.freed_at FROM waitlist_offers o
                    WHERE o.doctor_id = :doctor_id AND o.starts_at = :starts_at
                      AND o.status IN ('declined', 'expired')
                    ORDER BY o.created_at DESC LIMIT 1), :freed_at),
         :now
    FROM entry, hold
  RETURNING id
), outbox AS (
  INSERT INTO notifications (appointment_id, channel, kind, due_at)
  SELECT hold.id, ch.channel, 'offer', :now
    FROM hold JOIN patients p ON p.id = hold.patient_id
   CROSS JOIN LATERAL unnest({_OFFER_CHANNELS}) AS ch(channel)
)
SELECT offer.id AS offer_id, hold.id AS appointment_id, hold.patient_id FROM offer, hold
"""
)

# What accepting reads first, under the patient's lock on what they hold with the doctor
# (as booking takes it, so the count in ACCEPT_SQL sees every booking before it): the
# offer, its clinic's zone, the patient's channels for the confirmation and reminders.
ACCEPT_FACTS_SQL = text(
    f"""
SELECT o.id, o.status, o.appointment_id, o.doctor_id, o.clinic_id, o.starts_at, o.ends_at,
       o.expires_at, c.timezone, p.notify_by, p.email, p.phone,
       (SELECT count(*) FROM {held_lock("o.patient_id", "o.doctor_id")}) AS locked
  FROM waitlist_offers o
  JOIN clinics c ON c.id = o.clinic_id
  JOIN patients p ON p.id = o.patient_id
 WHERE o.id = :offer_id AND o.patient_id = :patient_id
"""
)

# Accept: the hold becomes the appointment in one statement. The UPDATE changes only a
# row `rules.guard(ACCEPT_OFFER, "booked", now)` allows (status held, hold not lapsed),
# and only below the per-doctor limit counted under the lock ACCEPT_FACTS_SQL took; with
# it the offer is accepted, the entry satisfied, the confirmation and reminders queued
# and the acceptance audited. `created_at` becomes the booking's time (lead times and
# "freed to rebooked" count from it). Returns the booked row, or no row.
ACCEPT_SQL = text(
    f"""
WITH held AS (
  SELECT count(*) AS n FROM appointments h
   WHERE h.patient_id = :patient_id AND h.doctor_id = :doctor_id AND h.status = 'booked'
     AND h.starts_at > :now
), booked AS (
  UPDATE appointments a
     SET status = 'booked', hold_expires_at = NULL, created_at = :now, updated_at = :now,
         booked_by = :actor, changed_by = :actor
   WHERE a.id = :appointment_id AND a.patient_id = :patient_id
     AND a.status = ANY(CAST(:allowed_from AS text[]))
     AND a.hold_expires_at > :held_until_after
     AND (SELECT n FROM held) < :limit
  RETURNING a.*
), accepted AS (
  UPDATE waitlist_offers o SET status = 'accepted', decided_at = :now
    FROM booked WHERE o.id = :offer_id AND o.status = 'open'
  RETURNING o.entry_id
), satisfied AS (
  UPDATE waitlist_entries e SET status = 'booked', updated_at = :now
    FROM accepted WHERE e.id = accepted.entry_id
), outbox AS (
  INSERT INTO notifications (appointment_id, channel, kind, due_at)
  SELECT booked.id, chosen.channel, plan.kind, plan.due_at
    FROM booked, unnest(CAST(:channels AS varchar[])) AS chosen(channel),
         unnest(CAST(:kinds AS text[]), CAST(:due AS timestamptz[])) AS plan(kind, due_at)
), audited AS (
  INSERT INTO audit_events (actor_user_id, action, subject_type, subject_id, patient_id,
                            details)
  SELECT :actor, '{OFFER_ACCEPTED}', 'appointment', booked.id, booked.patient_id,
         jsonb_build_object('offer_id', CAST(:offer_id AS bigint))
    FROM booked
)
SELECT booked.*, (SELECT n FROM held) AS held_before FROM booked
"""
)

# Release holds, in one statement: those of open offers that lapsed by :now (the expiry
# job gives its offer's id; the sweeper none, for all), or one the patient declines
# (:decline, by its offer id). The hold row is deleted (its unsent offer messages with it),
# the offer marked expired or declined. Returns each released slot.
RELEASE_SQL = text(
    f"""
WITH offer AS (
  SELECT o.id, o.appointment_id, o.patient_id FROM waitlist_offers o
   WHERE o.status = 'open'
     AND (CAST(:offer_id AS bigint) IS NULL OR o.id = CAST(:offer_id AS bigint))
     AND (CAST(:patient_id AS bigint) IS NULL OR o.patient_id = CAST(:patient_id AS bigint))
     AND (CAST(:decline AS boolean) OR o.expires_at <= :now)
   FOR UPDATE SKIP LOCKED
), released AS (
  DELETE FROM appointments a USING offer
   WHERE a.id = offer.appointment_id AND a.status = 'held'
  RETURNING a.id, a.doctor_id, a.clinic_id, a.starts_at, a.ends_at, a.patient_id
), decided AS (
  UPDATE waitlist_offers o
     SET status = CASE WHEN CAST(:decline AS boolean) THEN 'declined' ELSE 'expired' END,
         decided_at = :now, appointment_id = NULL
    FROM offer WHERE o.id = offer.id
  RETURNING o.id, o.patient_id
), audited AS (
  INSERT INTO audit_events (actor_user_id, action, subject_type, subject_id, patient_id,
                            details)
  SELECT CAST(:actor AS bigint), '{OFFER_DECLINED}', 'waitlist_offer', decided.id,
         decided.patient_id, CAST('{{}}' AS jsonb)
    FROM decided WHERE CAST(:decline AS boolean)
)
SELECT r.*, c.timezone, d.id AS offer_id FROM released r
  JOIN clinics c ON c.id = r.clinic_id
  JOIN offer ON offer.appointment_id = r.id
  JOIN decided d ON d.id = offer.id
"""
)

# Doctor-days worth a refill that no trigger may have reached (a process lost between a
# commit and its enqueue): cancellations of the last minutes, still in the future, in a
# clinic where someone waits. The sweeper refills them; a refill with nothing to do is
# cheap and harmless.
RECENTLY_FREED_SQL = text(
    """
SELECT DISTINCT a.doctor_id, CAST(a.starts_at AT TIME ZONE c.timezone AS date) AS day
  FROM appointments a JOIN clinics c ON c.id = a.clinic_id
 WHERE a.updated_at >= :since AND a.status = 'cancelled' AND a.starts_at > :now
   AND EXISTS (SELECT FROM waitlist_entries e
                WHERE e.clinic_id = a.clinic_id AND e.status = 'waiting')
"""
)
