"""waitlist: holds (appointments `held`), waitlist entries and offers, the `offer` notice

The exclusion constraint `no_overlap` now covers the statuses that block a slot
(db.models.BLOCKING_STATUSES: the active ones and `held`) instead of "not cancelled";
the same rows as before plus holds, each over its blocked span with its buffers
(`blocked`, migration 0013). Existing rows keep their meaning: nothing is lost. An entry
may ask for one of its doctor's visit types; its holds then carry the type's length and
buffers.

Revision ID: 0014
Revises: 0015 (built beside visit types' 0013 and reminder answers' 0015, both merged
first: it comes after them, so a database already at 0015 upgrades to it)
Create Date: 2026-12-07 03:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0014"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of what db/models.py says today (a migration must not follow later edits).
BLOCKING = "status IN ('booked', 'checked_in', 'completed', 'no_show', 'held')"
STATUSES = "'booked', 'checked_in', 'completed', 'cancelled', 'no_show'"
KINDS = "'confirmation', 'reminder_24h', 'reminder_1h', 'cancellation', 'exception'"
ACCOUNT_KINDS = "'password_reset', 'email_verify'"


def _no_overlap(where: str) -> None:
    op.execute(
        "ALTER TABLE appointments DROP CONSTRAINT no_overlap, ADD CONSTRAINT no_overlap"
        " EXCLUDE USING gist (doctor_id WITH =, blocked WITH &&)"
        f" WHERE ({where})"
    )


def _check(table: str, name: str, condition: str) -> None:
    op.drop_constraint(op.f(f"ck_{table}_{name}"), table, type_="check")
    op.create_check_constraint(op.f(f"ck_{table}_{name}"), table, condition)


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column(
        "appointments", sa.Column("hold_expires_at", sa.DateTime(timezone=True), nullable=True)
    )
    _check("appointments", "status", f"status IN ({STATUSES}, 'held')")
    op.create_check_constraint(
        op.f("ck_appointments_hold_expiry"),
        "appointments",
        "(status = 'held') = (hold_expires_at IS NOT NULL)",
    )
    op.create_index(
        "ix_appointments_hold_expires",
        "appointments",
        ["hold_expires_at"],
        postgresql_where=sa.text("status = 'held'"),
    )
    _no_overlap(BLOCKING)
    _check("notifications", "kind", f"kind IN ({KINDS}, 'offer', {ACCOUNT_KINDS})")

    op.create_table(
        "waitlist_entries",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("patient_id", sa.BigInteger(), nullable=False),
        sa.Column("clinic_id", sa.BigInteger(), nullable=False),
        sa.Column("doctor_id", sa.BigInteger(), nullable=True),
        sa.Column("specialty", sa.Text(), nullable=True),
        sa.Column("first_day", sa.Date(), nullable=False),
        sa.Column("last_day", sa.Date(), nullable=False),
        sa.Column("earliest", sa.Time(), nullable=True),
        sa.Column("latest", sa.Time(), nullable=True),
        sa.Column("weekdays", postgresql.ARRAY(sa.SmallInteger()), nullable=True),
        sa.Column("visit_type_id", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=8), server_default="waiting", nullable=False),
        sa.Column("created_by", sa.BigInteger(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status IN ('waiting', 'booked', 'left')", name=op.f("ck_waitlist_entries_status")
        ),
        sa.CheckConstraint("last_day >= first_day", name=op.f("ck_waitlist_entries_range")),
        sa.CheckConstraint(
            "(doctor_id IS NOT NULL) <> (specialty IS NOT NULL)",
            name=op.f("ck_waitlist_entries_doctor_or_specialty"),
        ),
        sa.CheckConstraint(
            "earliest IS NULL OR latest IS NULL OR latest > earliest",
            name=op.f("ck_waitlist_entries_time_window"),
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_waitlist_entries_patient_id_patients")
        ),
        sa.ForeignKeyConstraint(
            ["clinic_id"], ["clinics.id"], name=op.f("fk_waitlist_entries_clinic_id_clinics")
        ),
        sa.ForeignKeyConstraint(
            ["doctor_id"], ["doctors.id"], name=op.f("fk_waitlist_entries_doctor_id_doctors")
        ),
        sa.CheckConstraint(
            "visit_type_id IS NULL OR doctor_id IS NOT NULL",
            name=op.f("ck_waitlist_entries_type_of_a_doctor"),
        ),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name=op.f("fk_waitlist_entries_created_by_users")
        ),
        sa.ForeignKeyConstraint(
            ["visit_type_id"],
            ["visit_types.id"],
            name=op.f("fk_waitlist_entries_visit_type_id_visit_types"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_waitlist_entries")),
    )
    op.create_index(
        "ix_waitlist_entries_clinic_waiting",
        "waitlist_entries",
        ["clinic_id", "created_at"],
        postgresql_where=sa.text("status = 'waiting'"),
    )
    op.create_index("ix_waitlist_entries_patient", "waitlist_entries", ["patient_id"])

    op.create_table(
        "waitlist_offers",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("entry_id", sa.BigInteger(), nullable=False),
        sa.Column("patient_id", sa.BigInteger(), nullable=False),
        sa.Column("doctor_id", sa.BigInteger(), nullable=False),
        sa.Column("clinic_id", sa.BigInteger(), nullable=False),
        sa.Column("appointment_id", sa.BigInteger(), nullable=True),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=8), server_default="open", nullable=False),
        sa.Column("freed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('open', 'accepted', 'declined', 'expired')",
            name=op.f("ck_waitlist_offers_status"),
        ),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["waitlist_entries.id"],
            name=op.f("fk_waitlist_offers_entry_id_waitlist_entries"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_waitlist_offers_patient_id_patients")
        ),
        sa.ForeignKeyConstraint(
            ["doctor_id"], ["doctors.id"], name=op.f("fk_waitlist_offers_doctor_id_doctors")
        ),
        sa.ForeignKeyConstraint(
            ["clinic_id"], ["clinics.id"], name=op.f("fk_waitlist_offers_clinic_id_clinics")
        ),
        sa.ForeignKeyConstraint(
            ["appointment_id"],
            ["appointments.id"],
            name=op.f("fk_waitlist_offers_appointment_id_appointments"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_waitlist_offers")),
    )
    op.create_index(
        "uq_waitlist_offers_entry_open",
        "waitlist_offers",
        ["entry_id"],
        unique=True,
        postgresql_where=sa.text("status = 'open'"),
    )
    op.create_index(
        "ix_waitlist_offers_patient", "waitlist_offers", ["patient_id", sa.text("created_at DESC")]
    )
    op.create_index("ix_waitlist_offers_created", "waitlist_offers", ["created_at"])
    op.create_index("ix_waitlist_offers_appointment", "waitlist_offers", ["appointment_id"])


def downgrade() -> None:
    """Downgrade schema: holds are released (deleted) first; offers and entries go."""
    op.drop_table("waitlist_offers")
    op.drop_table("waitlist_entries")
    op.execute("DELETE FROM notifications WHERE kind = 'offer'")
    op.execute("DELETE FROM appointments WHERE status = 'held'")
    _check("notifications", "kind", f"kind IN ({KINDS}, {ACCOUNT_KINDS})")
    _no_overlap("status <> 'cancelled'")
    op.drop_index("ix_appointments_hold_expires", table_name="appointments")
    op.drop_constraint(op.f("ck_appointments_hold_expiry"), "appointments", type_="check")
    _check("appointments", "status", f"status IN ({STATUSES})")
    op.drop_column("appointments", "hold_expires_at")
