"""SQLAlchemy models: the whole schema of medbook, with the reason for every index.

Ids are `bigint` identities: compact in every index and cheap to COPY at year scale.
Access control, not id opacity, protects objects (another user's id answers 404).
Relationships are `lazy="raise"`: every query says what it loads, so templates never do I/O.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    Time,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, INET, JSONB, TSTZRANGE, ExcludeConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ROLES = ("patient", "doctor", "front_desk", "admin")
APPOINTMENT_STATUSES = ("booked", "checked_in", "completed", "cancelled", "no_show", "held")
# An appointment in any of these holds its time: only a cancellation frees the slot.
ACTIVE_STATUSES = ("booked", "checked_in", "completed", "no_show")
# What blocks a slot, for the exclusion constraint and every availability read: the
# active appointments and a waitlist offer's hold (`held`, app/waitlist/), each over its
# blocked span (the visit and its buffers, `BLOCKED_SPAN`). The one place this is said
# (BLOCKING_SQL is the same as SQL); a released hold is deleted, so only a cancellation
# frees a slot of a real appointment.
BLOCKING_STATUSES = (*ACTIVE_STATUSES, "held")
BLOCKING_SQL = f"status IN ({', '.join(repr(v) for v in BLOCKING_STATUSES)})"
# The span a visit blocks: its time with the buffers before and after (the SQL function
# `visit_span`, migration 0013), stored so the exclusion constraint can index it.
BLOCKED_SPAN = "visit_span(starts_at, ends_at, buffer_before_minutes, buffer_after_minutes)"
# Limits of a visit type (and of the buffers a booking copies from it).
VISIT_MINUTES = (5, 480)
MAX_BUFFER_MINUTES = 120
EXCEPTION_KINDS = ("leave", "holiday", "closure", "other")
NOTIFICATION_CHANNELS = ("email", "sms")
# Kinds about an appointment, then kinds about an account (a reset or a new address's
# verification link: rows with `user_id` instead of `appointment_id`).
APPOINTMENT_NOTICES = (
    "confirmation",
    "reminder_24h",
    "reminder_1h",
    "cancellation",
    "exception",
    "offer",  # a waitlist offer: the hold row is its appointment
)
ACCOUNT_NOTICES = ("password_reset", "email_verify")
NOTIFICATION_KINDS = APPOINTMENT_NOTICES + ACCOUNT_NOTICES
NOTIFY_CHOICES = ("email", "sms", "both", "none")
LANGUAGES = ("en", "de", "fr", "es")
NOTIFICATION_STATUSES = ("pending", "queued", "sent", "dead", "void")
# A clinic's name as compared for uniqueness: no case, no spaces (uq_clinics_name_key).
CLINIC_NAME_KEY = r"lower(regexp_replace(name, '\s+', '', 'g'))"
RECORD_TYPES = ("lab_result", "prescription", "imaging", "referral", "note", "other")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {
        dt.datetime: DateTime(timezone=True),
        int: BigInteger,
        str: Text,
        dict[str, Any]: JSONB,
    }


def _id() -> Mapped[int]:
    return mapped_column(BigInteger, primary_key=True, autoincrement=True)


def _created_at() -> Mapped[dt.datetime]:
    return mapped_column(server_default=func.now())


class Clinic(Base):
    __tablename__ = "clinics"
    __table_args__ = (
        # Two clinics may not share a name, compared without case and spaces: a patient
        # choosing "Praxis Mitte" must know which one it is (app/scheduling/directory.py).
        Index("uq_clinics_name_key", text(CLINIC_NAME_KEY), unique=True),
    )

    id: Mapped[int] = _id()
    name: Mapped[str]
    timezone: Mapped[str]  # IANA name; validated in code, where zoneinfo lives
    address: Mapped[str | None]
    created_at: Mapped[dt.datetime] = _created_at()

    doctors: Mapped[list[Doctor]] = relationship(back_populates="clinic", lazy="raise")


class Doctor(Base):
    __tablename__ = "doctors"
    __table_args__ = (
        CheckConstraint("default_slot_minutes BETWEEN 5 AND 240", name="slot_minutes"),
        # The directory: doctors of a clinic, filtered by specialty.
        Index("ix_doctors_clinic_specialty", "clinic_id", "specialty"),
    )

    id: Mapped[int] = _id()
    clinic_id: Mapped[int] = mapped_column(ForeignKey("clinics.id"))
    full_name: Mapped[str]
    specialty: Mapped[str]
    email: Mapped[str | None]
    default_slot_minutes: Mapped[int] = mapped_column(SmallInteger, server_default="30")
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[dt.datetime] = _created_at()

    clinic: Mapped[Clinic] = relationship(back_populates="doctors", lazy="raise")


class Patient(Base):
    __tablename__ = "patients"
    __table_args__ = (
        CheckConstraint(_in("notify_by", NOTIFY_CHOICES), name="notify_by"),
        CheckConstraint(_in("language", LANGUAGES), name="language"),
    )

    id: Mapped[int] = _id()
    full_name: Mapped[str]
    date_of_birth: Mapped[dt.date | None] = mapped_column(Date)
    phone: Mapped[str | None]
    email: Mapped[str | None]
    notify_by: Mapped[str] = mapped_column(server_default="email")
    language: Mapped[str] = mapped_column(String(8), server_default="en")
    # A new address the patient asked for, until its verification link is followed.
    pending_email: Mapped[str | None]
    created_at: Mapped[dt.datetime] = _created_at()


# Front-desk patient search by name. The operator classes go in `postgresql_ops`, keyed by
# the expression's label, not into the expression's text: written into the text, alembic
# warns and skips comparing the expression, so tests/integration/test_models_match_
# migrations.py missed a drift (lower -> upper passed). Alembic still does not compare
# operator classes; that test checks them against pg_indexes itself.
_lower_full_name = func.lower(Patient.full_name).label("lower_full_name")
# Prefix, case-insensitive.
Index(
    "ix_patients_lower_full_name",
    _lower_full_name,
    postgresql_ops={"lower_full_name": "text_pattern_ops"},
)
# The walk-in search matches the start of any word of the name (`LIKE '% fis%'`), which a
# btree cannot serve: a trigram index can (at 100,000 patients a scan without it takes
# thousands of times longer; bench/README.md).
Index(
    "ix_patients_name_trgm",
    _lower_full_name,
    postgresql_using="gin",
    postgresql_ops={"lower_full_name": "gin_trgm_ops"},
)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(_in("role", ROLES), name="role"),
        # Each role carries exactly the link it needs.
        CheckConstraint(
            "(role <> 'patient' OR patient_id IS NOT NULL)"
            " AND (role <> 'doctor' OR doctor_id IS NOT NULL)"
            " AND (role <> 'front_desk' OR clinic_id IS NOT NULL)",
            name="role_link",
        ),
        # Login looks users up by email, case-insensitively; one account per address.
        Index("uq_users_lower_email", text("lower(email)"), unique=True),
        # One login per patient record: the account is the patient's identity, and a second
        # login would see the same records and bookings. Also the index on this foreign key.
        Index("uq_users_patient_id", "patient_id", unique=True),
        # One login per doctor, so "the doctor's day" belongs to exactly one account.
        Index("uq_users_doctor_id", "doctor_id", unique=True),
    )

    id: Mapped[int] = _id()
    email: Mapped[str]
    password_hash: Mapped[str]
    role: Mapped[str] = mapped_column(String(16))
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"))
    doctor_id: Mapped[int | None] = mapped_column(ForeignKey("doctors.id"))
    clinic_id: Mapped[int | None] = mapped_column(ForeignKey("clinics.id"))
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[dt.datetime] = _created_at()
    password_changed_at: Mapped[dt.datetime] = _created_at()
    # Second factor (staff only, app/access/totp.py). The base32 TOTP secret once enrolment
    # is confirmed; the last time step accepted, so a code cannot be replayed in its window;
    # the sha256 of each unused recovery code; and whether an admin requires a second factor.
    totp_secret: Mapped[str | None]
    totp_last_step: Mapped[int | None]
    totp_recovery_hashes: Mapped[list[str]] = mapped_column(
        ARRAY(String(64)), server_default=text("'{}'")
    )
    totp_required: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))


class ScheduleTemplate(Base):
    """One weekly range of a doctor's hours in clinic-local wall time (9:00-12:00 Mondays)."""

    __tablename__ = "doctor_schedule_templates"
    __table_args__ = (
        CheckConstraint("weekday BETWEEN 0 AND 6", name="weekday"),
        CheckConstraint("end_time > start_time", name="end_after_start"),
        CheckConstraint("slot_minutes BETWEEN 5 AND 240", name="slot_minutes"),
        CheckConstraint(
            "valid_to IS NULL OR valid_from IS NULL OR valid_to >= valid_from", name="validity"
        ),
        # C-3: the schedule lookup is always "this doctor's ranges for these weekdays".
        Index("ix_doctor_schedule_templates_doctor_weekday", "doctor_id", "weekday"),
    )

    id: Mapped[int] = _id()
    doctor_id: Mapped[int] = mapped_column(ForeignKey("doctors.id", ondelete="CASCADE"))
    weekday: Mapped[int] = mapped_column(SmallInteger)  # 0 = Monday
    start_time: Mapped[dt.time] = mapped_column(Time)
    end_time: Mapped[dt.time] = mapped_column(Time)
    slot_minutes: Mapped[int] = mapped_column(SmallInteger)
    valid_from: Mapped[dt.date | None] = mapped_column(Date)
    valid_to: Mapped[dt.date | None] = mapped_column(Date)


class ScheduleTemplateHistory(Base):
    """A weekly range as it was before its template was replaced, with who replaced it and
    when: replacing a template moves its rows here, so every past version can be read.

    A table of its own rather than stamping `valid_to` on the live rows: valid_from/valid_to
    are the admin's own dates (summer hours), and availability reads the live table alone.
    """

    __tablename__ = "doctor_schedule_template_history"
    __table_args__ = (
        # A doctor's versions, newest first.
        Index("ix_doctor_schedule_template_history_doctor_replaced", "doctor_id", "replaced_at"),
    )

    id: Mapped[int] = _id()
    # No cascade: the history outlives what it describes.
    doctor_id: Mapped[int] = mapped_column(ForeignKey("doctors.id"))
    weekday: Mapped[int] = mapped_column(SmallInteger)
    start_time: Mapped[dt.time] = mapped_column(Time)
    end_time: Mapped[dt.time] = mapped_column(Time)
    slot_minutes: Mapped[int] = mapped_column(SmallInteger)
    valid_from: Mapped[dt.date | None] = mapped_column(Date)
    valid_to: Mapped[dt.date | None] = mapped_column(Date)
    replaced_at: Mapped[dt.datetime]
    replaced_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    reason: Mapped[str | None]


class ScheduleException(Base):
    """Leave, a holiday or a closure: a doctor's or a whole clinic's, any span of instants."""

    __tablename__ = "schedule_exceptions"
    __table_args__ = (
        CheckConstraint(_in("kind", EXCEPTION_KINDS), name="kind"),
        CheckConstraint("ends_at > starts_at", name="end_after_start"),
        # Availability reads a doctor's exceptions overlapping a day or week...
        Index("ix_schedule_exceptions_doctor_starts", "doctor_id", "starts_at"),
        # ...and the clinic-wide ones (doctor_id IS NULL) of the doctor's clinic.
        Index(
            "ix_schedule_exceptions_clinic_wide",
            "clinic_id",
            "starts_at",
            postgresql_where=text("doctor_id IS NULL"),
        ),
    )

    id: Mapped[int] = _id()
    clinic_id: Mapped[int] = mapped_column(ForeignKey("clinics.id"))
    doctor_id: Mapped[int | None] = mapped_column(ForeignKey("doctors.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    starts_at: Mapped[dt.datetime]
    ends_at: Mapped[dt.datetime]
    note: Mapped[str | None]
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = _created_at()


class Appointment(Base):
    __tablename__ = "appointments"
    __table_args__ = (
        CheckConstraint(_in("status", APPOINTMENT_STATUSES), name="status"),
        CheckConstraint("ends_at > starts_at", name="end_after_start"),
        # Lets range queries bound the index scan: nothing that starts over a day before a
        # window can reach into it.
        CheckConstraint("ends_at - starts_at <= interval '1 day'", name="at_most_a_day"),
        CheckConstraint(
            f"buffer_before_minutes BETWEEN 0 AND {MAX_BUFFER_MINUTES} "
            f"AND buffer_after_minutes BETWEEN 0 AND {MAX_BUFFER_MINUTES}",
            name="buffers",
        ),
        # The guarantee against double booking (review C-4): PostgreSQL itself refuses two
        # rows of one doctor that block a slot (BLOCKING_SQL: active appointments and
        # waitlist holds) whose blocked spans (the half-open visit with its buffers, issue
        # 18) overlap, so no route can put a visit or a hold into another's buffer. A row
        # lock (the review's FOR UPDATE SKIP LOCKED) cannot do this: the competing row does
        # not exist yet, so there is nothing to lock, and exact-duplicate keys miss
        # overlaps of different lengths. Needs btree_gist for the `doctor_id WITH =` part.
        ExcludeConstraint(
            (text("doctor_id"), "="),
            (text("blocked"), "&&"),
            name="no_overlap",
            using="gist",
            where=text(BLOCKING_SQL),
        ),
        # A hold always says until when; nothing else carries an expiry.
        CheckConstraint("(status = 'held') = (hold_expires_at IS NOT NULL)", name="hold_expiry"),
        # The sweeper's scan for lapsed holds; stays as small as the open offers.
        Index(
            "ix_appointments_hold_expires",
            "hold_expires_at",
            postgresql_where=text("status = 'held'"),
        ),
        # C-3 availability and the doctor's day: one doctor, a time window. INCLUDE lets
        # the availability query answer from the index alone (it reads the blocked span).
        Index(
            "ix_appointments_doctor_starts",
            "doctor_id",
            "starts_at",
            postgresql_include=["ends_at", "status", "blocked"],
        ),
        # C-3 patient lists, upcoming and past, by time.
        Index("ix_appointments_patient_starts", "patient_id", "starts_at"),
        # The front-desk board and analytics: one clinic, a day or a range.
        Index("ix_appointments_clinic_starts", "clinic_id", "starts_at"),
        # Idempotent booking: a key is unique per user who booked.
        Index(
            "uq_appointments_idempotency",
            "booked_by",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
    )

    id: Mapped[int] = _id()
    doctor_id: Mapped[int] = mapped_column(ForeignKey("doctors.id"))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    clinic_id: Mapped[int] = mapped_column(ForeignKey("clinics.id"))
    starts_at: Mapped[dt.datetime]
    ends_at: Mapped[dt.datetime]
    status: Mapped[str] = mapped_column(String(16), server_default="booked")
    reason: Mapped[str | None]
    cancel_reason: Mapped[str | None]
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    idempotency_hash: Mapped[str | None] = mapped_column(String(64))
    booked_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    # Who made the last change of status or time, and why (the reason given, or what
    # cancelled it: leave, a closure); the audit trail holds every change (issue #22).
    # A cancelled appointment changes no more, so then it is who cancelled: the patient's
    # page tells "cancelled by the clinic" from the patient's own cancellation by it.
    changed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    change_reason: Mapped[str | None]
    created_at: Mapped[dt.datetime] = _created_at()
    updated_at: Mapped[dt.datetime] = _created_at()
    checked_in_at: Mapped[dt.datetime | None]
    cancelled_at: Mapped[dt.datetime | None]
    # A waitlist offer's hold (status `held`, for `patient_id`) lapses at this instant.
    hold_expires_at: Mapped[dt.datetime | None]
    # The visit type booked (NULL: the template's plain slot, or a type since deleted)
    # and the buffers copied from it at booking, so editing a type never moves or
    # squeezes what is already booked.
    visit_type_id: Mapped[int | None] = mapped_column(
        ForeignKey("visit_types.id", ondelete="SET NULL")
    )
    buffer_before_minutes: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    buffer_after_minutes: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    # Computed by PostgreSQL from the four columns above, never written: what `no_overlap`
    # forbids to overlap.
    blocked: Mapped[Any] = mapped_column(TSTZRANGE, Computed(BLOCKED_SPAN, persisted=True))
    # When the patient confirmed from the 24 h reminder (link or SMS reply); the desk
    # board shows it (app/notifications/answers.py).
    confirmed_at: Mapped[dt.datetime | None]

    doctor: Mapped[Doctor] = relationship(lazy="raise")
    patient: Mapped[Patient] = relationship(lazy="raise")


class VisitType(Base):
    """A kind of visit a doctor offers: its length, the buffers around it (preparation,
    cleaning), whether patients book it online or only staff, and notice and horizon that
    override the clinic's booking rules (NULL: the clinic's)."""

    __tablename__ = "visit_types"
    __table_args__ = (
        CheckConstraint(
            f"minutes BETWEEN {VISIT_MINUTES[0]} AND {VISIT_MINUTES[1]}", name="minutes"
        ),
        CheckConstraint(
            f"buffer_before_minutes BETWEEN 0 AND {MAX_BUFFER_MINUTES}", name="buffer_before"
        ),
        CheckConstraint(
            f"buffer_after_minutes BETWEEN 0 AND {MAX_BUFFER_MINUTES}", name="buffer_after"
        ),
        CheckConstraint("min_notice_minutes BETWEEN 0 AND 43200", name="min_notice"),
        CheckConstraint("horizon_days BETWEEN 1 AND 730", name="horizon"),
        # One doctor's types have distinct names (a patient chooses by name).
        Index("uq_visit_types_doctor_name", "doctor_id", text("lower(name)"), unique=True),
    )

    id: Mapped[int] = _id()
    doctor_id: Mapped[int] = mapped_column(ForeignKey("doctors.id"))
    name: Mapped[str]
    minutes: Mapped[int] = mapped_column(SmallInteger)
    buffer_before_minutes: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    buffer_after_minutes: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    online: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    min_notice_minutes: Mapped[int | None] = mapped_column(Integer)
    horizon_days: Mapped[int | None] = mapped_column(SmallInteger)
    created_at: Mapped[dt.datetime] = _created_at()


class MedicalRecord(Base):
    __tablename__ = "medical_records"
    __table_args__ = (
        CheckConstraint(_in("record_type", RECORD_TYPES), name="record_type"),
        CheckConstraint("size >= 0", name="size"),
        # C-3 / C-2: a patient's whole record list, newest first, in one index range.
        Index("ix_medical_records_patient_uploaded", "patient_id", text("uploaded_at DESC")),
    )

    id: Mapped[int] = _id()
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    author_doctor_id: Mapped[int | None] = mapped_column(ForeignKey("doctors.id"))
    record_type: Mapped[str] = mapped_column(String(32))
    title: Mapped[str]
    # Unique: one stored object per row, so deleting a record can never delete a document
    # another row still names; the stray sweep matches objects to rows by this key.
    storage_key: Mapped[str] = mapped_column(unique=True)
    content_type: Mapped[str]
    size: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    uploaded_at: Mapped[dt.datetime] = _created_at()


class Notification(Base):
    """The durable outbox: one row per message an appointment implies."""

    __tablename__ = "notifications"
    __table_args__ = (
        CheckConstraint(_in("channel", NOTIFICATION_CHANNELS), name="channel"),
        CheckConstraint(_in("kind", NOTIFICATION_KINDS), name="kind"),
        CheckConstraint(_in("status", NOTIFICATION_STATUSES), name="status"),
        # A message is about an appointment or about an account, never both.
        CheckConstraint("(appointment_id IS NULL) <> (user_id IS NULL)", name="subject"),
        # The dispatcher's scan: pending rows that are due, oldest first; stays small.
        Index(
            "ix_notifications_due",
            "due_at",
            postgresql_where=text("status = 'pending'"),
        ),
        # Reschedule and cancel find an appointment's messages.
        Index("ix_notifications_appointment", "appointment_id"),
        # A deleted user's messages go with it (the cascade scans by this).
        Index("ix_notifications_user", "user_id", postgresql_where=text("user_id IS NOT NULL")),
        # The dead-letter page.
        Index("ix_notifications_dead", "id", postgresql_where=text("status = 'dead'")),
    )

    id: Mapped[int] = _id()
    appointment_id: Mapped[int | None] = mapped_column(
        ForeignKey("appointments.id", ondelete="CASCADE")
    )
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # Account messages only: a random id under which the link's token waits in Redis
    # until sent (accounts.link_key); the row never holds the token (docs/notifications.md).
    ref: Mapped[str | None] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(8))
    kind: Mapped[str] = mapped_column(String(16))
    due_at: Mapped[dt.datetime]
    status: Mapped[str] = mapped_column(String(8), server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    last_error: Mapped[str | None]
    provider_message_id: Mapped[str | None]
    sent_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = _created_at()


class AuditEvent(Base):
    """Append-only: a trigger (migration 0009) refuses UPDATE, DELETE and TRUNCATE."""

    __tablename__ = "audit_events"
    __table_args__ = (
        # "Who viewed my records": a patient's events, newest first.
        Index(
            "ix_audit_events_patient_at",
            "patient_id",
            text("at DESC"),
            postgresql_where=text("patient_id IS NOT NULL"),
        ),
        # The admin page filters by actor and by time...
        Index("ix_audit_events_actor_at", "actor_user_id", text("at DESC")),
        # ...and, unfiltered, pages through everything newest first.
        Index("ix_audit_events_at", text("at DESC")),
    )

    id: Mapped[int] = _id()
    at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
    actor_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    action: Mapped[str] = mapped_column(String(64))
    subject_type: Mapped[str | None] = mapped_column(String(32))
    subject_id: Mapped[int | None]
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"))
    client_addr: Mapped[str | None] = mapped_column(INET)
    flagged: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))


class ClinicDailyStats(Base):
    """Per doctor and clinic-local day: counts by status and slot minutes (C-6 rollups)."""

    __tablename__ = "clinic_daily_stats"
    __table_args__ = (
        # Reports read a clinic's (or all clinics') days in a range.
        Index("ix_clinic_daily_stats_day_clinic", "day", "clinic_id"),
    )

    # The key is the rollup's upsert target (ON CONFLICT): one row per clinic, day, doctor.
    clinic_id: Mapped[int] = mapped_column(ForeignKey("clinics.id"), primary_key=True)
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    doctor_id: Mapped[int] = mapped_column(ForeignKey("doctors.id"), primary_key=True)
    booked: Mapped[int] = mapped_column(Integer, server_default="0")
    checked_in: Mapped[int] = mapped_column(Integer, server_default="0")
    completed: Mapped[int] = mapped_column(Integer, server_default="0")
    cancelled: Mapped[int] = mapped_column(Integer, server_default="0")
    no_show: Mapped[int] = mapped_column(Integer, server_default="0")
    available_minutes: Mapped[int] = mapped_column(Integer, server_default="0")
    booked_minutes: Mapped[int] = mapped_column(Integer, server_default="0")
    refreshed_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())


class RefreshToken(Base):
    """One API refresh token, stored only as its sha256; rotated on every use (review M-4).

    Tokens descending from one login share a `family_id`: presenting a spent token again
    means it leaked, so the whole family is revoked.
    """

    __tablename__ = "refresh_tokens"
    __table_args__ = (
        # Revoking a family, and a user's tokens on password change.
        Index("ix_refresh_tokens_family", "family_id"),
        Index("ix_refresh_tokens_user", "user_id"),
    )

    id: Mapped[int] = _id()
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    family_id: Mapped[str] = mapped_column(String(32))
    # Unique: a refresh is looked up by its hash alone (app/access/tokens.py), and one hash must
    # name one row, or reuse detection could revoke the wrong family.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[dt.datetime]
    used_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = _created_at()


# --- analytics (issue 8) -------------------------------------------------------------------

# The rollup job finds what changed since its last run by this column: every write path
# sets it (booking, cancel, reschedule, status changes, bulk). Status changes already touch
# an indexed column (the INCLUDE of ix_appointments_doctor_starts), so this index costs
# no HOT update that was possible before.
Index("ix_appointments_updated_at", Appointment.updated_at)

ANALYTICS_DIMENSIONS = ("hour", "lead_time", "cancel_lead")
EXPORT_STATUSES = ("queued", "running", "done", "failed", "expired")


class ClinicBucketStats(Base):
    """Per clinic-local day, appointment counts by a second dimension (C-6 rollups).

    `hour`: the clinic-local start hour (0-23), which with the day's weekday gives the
    hour-of-week heat map and no-shows by hour. `lead_time`: how long before the start
    it was booked; `cancel_lead`: how long before the start it was cancelled (buckets in
    app.analytics.rollups.LEAD_BUCKETS).
    """

    __tablename__ = "clinic_bucket_stats"
    __table_args__ = (
        CheckConstraint(_in("dimension", ANALYTICS_DIMENSIONS), name="dimension"),
        # Reports across all clinics read one dimension over a range of days.
        Index("ix_clinic_bucket_stats_dimension_day", "dimension", "day"),
    )

    # The key is the rollup's upsert target, and serves a clinic's range of days.
    clinic_id: Mapped[int] = mapped_column(ForeignKey("clinics.id"), primary_key=True)
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    dimension: Mapped[str] = mapped_column(String(16), primary_key=True)
    bucket: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    appointments: Mapped[int] = mapped_column(Integer, server_default="0")  # not cancelled
    attended: Mapped[int] = mapped_column(Integer, server_default="0")  # checked in, completed
    no_show: Mapped[int] = mapped_column(Integer, server_default="0")
    cancelled: Mapped[int] = mapped_column(Integer, server_default="0")
    refreshed_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())


class ClinicMonthlyStats(Base):
    """clinic_daily_stats summed per calendar month (of clinic-local days): long ranges
    read full months here and only their partial edge months day by day."""

    __tablename__ = "clinic_monthly_stats"

    # The key is the monthly roll-up's upsert target, and serves a clinic's months.
    clinic_id: Mapped[int] = mapped_column(ForeignKey("clinics.id"), primary_key=True)
    month: Mapped[dt.date] = mapped_column(Date, primary_key=True)  # its first day
    doctor_id: Mapped[int] = mapped_column(ForeignKey("doctors.id"), primary_key=True)
    booked: Mapped[int] = mapped_column(Integer, server_default="0")
    checked_in: Mapped[int] = mapped_column(Integer, server_default="0")
    completed: Mapped[int] = mapped_column(Integer, server_default="0")
    cancelled: Mapped[int] = mapped_column(Integer, server_default="0")
    no_show: Mapped[int] = mapped_column(Integer, server_default="0")
    available_minutes: Mapped[int] = mapped_column(Integer, server_default="0")
    booked_minutes: Mapped[int] = mapped_column(Integer, server_default="0")
    refreshed_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())


class ClinicMonthlyBuckets(Base):
    """clinic_bucket_stats summed per month; the day's weekday is kept by turning `hour`
    into `hour_of_week` (weekday * 24 + hour, 0 = Monday 00:00)."""

    __tablename__ = "clinic_monthly_buckets"
    __table_args__ = (
        CheckConstraint(
            _in("dimension", ("hour_of_week", "lead_time", "cancel_lead")), name="dimension"
        ),
    )

    # The key is the monthly roll-up's upsert target, and serves a clinic's months.
    clinic_id: Mapped[int] = mapped_column(ForeignKey("clinics.id"), primary_key=True)
    month: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    dimension: Mapped[str] = mapped_column(String(16), primary_key=True)
    bucket: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    appointments: Mapped[int] = mapped_column(Integer, server_default="0")
    attended: Mapped[int] = mapped_column(Integer, server_default="0")
    no_show: Mapped[int] = mapped_column(Integer, server_default="0")
    cancelled: Mapped[int] = mapped_column(Integer, server_default="0")
    refreshed_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())


class AnalyticsWatermark(Base):
    """Up to when a rollup job has looked at appointment changes (`updated_at`)."""

    __tablename__ = "analytics_watermarks"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    until: Mapped[dt.datetime]


class ExportJob(Base):
    """One CSV export of appointments, written by a SAQ job; the file expires."""

    __tablename__ = "export_jobs"
    __table_args__ = (
        CheckConstraint(_in("status", EXPORT_STATUSES), name="status"),
        CheckConstraint("last_day >= first_day", name="range"),
        # "My exports", newest first; the purge job scans by expiry.
        Index("ix_export_jobs_requested_by_created", "requested_by", text("created_at DESC")),
        Index("ix_export_jobs_expires_at", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    requested_by: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    clinic_id: Mapped[int | None] = mapped_column(ForeignKey("clinics.id", ondelete="CASCADE"))
    first_day: Mapped[dt.date] = mapped_column(Date)
    last_day: Mapped[dt.date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16), server_default="queued")
    rows_total: Mapped[int | None]
    rows_done: Mapped[int] = mapped_column(BigInteger, server_default="0")
    size_bytes: Mapped[int] = mapped_column(BigInteger, server_default="0")
    storage_key: Mapped[str | None]
    error: Mapped[str | None]
    created_at: Mapped[dt.datetime] = _created_at()
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    expires_at: Mapped[dt.datetime | None]


# --- notifications (issue 7) ---------------------------------------------------------------

# A claimed ("queued") row belongs to its send job until `lease_until`; after that the
# dispatcher may claim it again, so a job lost with Redis (flushed, restarted) or with a
# killed worker never loses the message. NULL for rows that are not queued.
Notification.lease_until = Column("lease_until", DateTime(timezone=True), nullable=True)
# The dispatcher's second scan: queued rows whose lease has lapsed; stays small.
Index(
    "ix_notifications_lease",
    Notification.__table__.c.lease_until,
    postgresql_where=text("status = 'queued'"),
)


class DevMessage(Base):
    """What would have been sent, in embedded (demo) mode: the dev mailbox page lists it."""

    __tablename__ = "dev_mailbox"
    __table_args__ = (
        # The page shows the newest messages first.
        Index("ix_dev_mailbox_created", text("created_at DESC")),
        # Deleting notifications (their appointments' cascade) sets this NULL: without an
        # index each deleted row scanned the mailbox (4,600 deletions: over a minute).
        Index("ix_dev_mailbox_notification", "notification_id"),
    )

    id: Mapped[int] = _id()
    notification_id: Mapped[int | None] = mapped_column(
        ForeignKey("notifications.id", ondelete="SET NULL")
    )
    channel: Mapped[str] = mapped_column(String(8))
    recipient: Mapped[str]
    subject: Mapped[str | None]
    body_text: Mapped[str]
    body_html: Mapped[str | None]
    ics: Mapped[str | None]
    created_at: Mapped[dt.datetime] = _created_at()


# --- waitlist (issue 18) -------------------------------------------------------------------

WAITLIST_STATUSES = ("waiting", "booked", "left")
OFFER_STATUSES = ("open", "accepted", "declined", "expired")


class WaitlistEntry(Base):
    """A patient waiting for an earlier time: one doctor, or any doctor of a clinic with a
    specialty, within a date range, on some weekdays, in a time-of-day window (clinic-local),
    optionally for one of the doctor's visit types (its holds then have the type's length
    and buffers; a type deleted meanwhile leaves the entry waiting for plain slots)."""

    __tablename__ = "waitlist_entries"
    __table_args__ = (
        CheckConstraint(_in("status", WAITLIST_STATUSES), name="status"),
        CheckConstraint("last_day >= first_day", name="range"),
        CheckConstraint(
            "(doctor_id IS NOT NULL) <> (specialty IS NOT NULL)", name="doctor_or_specialty"
        ),
        CheckConstraint(
            "earliest IS NULL OR latest IS NULL OR latest > earliest", name="time_window"
        ),
        # Visit types are a doctor's own.
        CheckConstraint("visit_type_id IS NULL OR doctor_id IS NOT NULL", name="type_of_a_doctor"),
        # A freed slot finds the waiting entries of its clinic, first come first served.
        Index(
            "ix_waitlist_entries_clinic_waiting",
            "clinic_id",
            "created_at",
            postgresql_where=text("status = 'waiting'"),
        ),
        # "My waitlist": a patient's entries.
        Index("ix_waitlist_entries_patient", "patient_id"),
    )

    id: Mapped[int] = _id()
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    clinic_id: Mapped[int] = mapped_column(ForeignKey("clinics.id"))
    doctor_id: Mapped[int | None] = mapped_column(ForeignKey("doctors.id"))
    specialty: Mapped[str | None]
    first_day: Mapped[dt.date] = mapped_column(Date)
    last_day: Mapped[dt.date] = mapped_column(Date)
    earliest: Mapped[dt.time | None] = mapped_column(Time)
    latest: Mapped[dt.time | None] = mapped_column(Time)
    weekdays: Mapped[list[int] | None] = mapped_column(ARRAY(SmallInteger))  # 0 = Monday
    visit_type_id: Mapped[int | None] = mapped_column(
        ForeignKey("visit_types.id", ondelete="SET NULL")
    )
    status: Mapped[str] = mapped_column(String(8), server_default="waiting")
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = _created_at()
    updated_at: Mapped[dt.datetime] = _created_at()


class WaitlistOffer(Base):
    """A freed slot offered to one waiting entry: its hold is an appointments row (status
    `held`) until accepted (the same row becomes the booking), declined or expired (the row
    is deleted, `appointment_id` NULL). Kept for the patient's list and the analytics."""

    __tablename__ = "waitlist_offers"
    __table_args__ = (
        CheckConstraint(_in("status", OFFER_STATUSES), name="status"),
        # One open offer per entry at a time: two slots are never held for one wish.
        Index(
            "uq_waitlist_offers_entry_open",
            "entry_id",
            unique=True,
            postgresql_where=text("status = 'open'"),
        ),
        # A patient's offers, newest first; analytics reads offers by when they were made.
        Index("ix_waitlist_offers_patient", "patient_id", text("created_at DESC")),
        Index("ix_waitlist_offers_created", "created_at"),
        # Offers of a hold row (accept finds its offer; deleting a hold nulls the link).
        Index("ix_waitlist_offers_appointment", "appointment_id"),
    )

    id: Mapped[int] = _id()
    entry_id: Mapped[int] = mapped_column(ForeignKey("waitlist_entries.id", ondelete="CASCADE"))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    doctor_id: Mapped[int] = mapped_column(ForeignKey("doctors.id"))
    clinic_id: Mapped[int] = mapped_column(ForeignKey("clinics.id"))
    appointment_id: Mapped[int | None] = mapped_column(
        ForeignKey("appointments.id", ondelete="SET NULL")
    )
    starts_at: Mapped[dt.datetime]
    ends_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime]
    status: Mapped[str] = mapped_column(String(8), server_default="open")
    # When the slot was freed (the cancellation's time): freed -> rebooked in analytics.
    freed_at: Mapped[dt.datetime]
    created_at: Mapped[dt.datetime] = _created_at()
    decided_at: Mapped[dt.datetime | None]
