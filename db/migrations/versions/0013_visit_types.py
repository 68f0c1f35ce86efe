"""visit types; an appointment's buffers and the span it blocks, which may not overlap

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 03:00:00

Existing appointments keep their times with zero buffers: their blocked span is exactly
[starts_at, ends_at), so the new constraint forbids what the old one did, no more.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Declared IMMUTABLE so a stored generated column may use it. That is true: an interval of
# minutes is a fixed length (only day and month parts of an interval depend on the time
# zone), so the result depends on the arguments alone. A row whose end is not after its
# start gets an empty span here rather than an error, so the check constraint
# `end_after_start` is what refuses it, with its own name.
VISIT_SPAN = """
CREATE FUNCTION visit_span(starts timestamptz, ends timestamptz,
                           before_minutes smallint, after_minutes smallint)
RETURNS tstzrange LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN ends > starts
              THEN tstzrange(starts - make_interval(mins => before_minutes),
                             ends + make_interval(mins => after_minutes), '[)')
              ELSE 'empty' END
$$
"""
BLOCKED = "visit_span(starts_at, ends_at, buffer_before_minutes, buffer_after_minutes)"
HOLDS_TIME = "status <> 'cancelled'"


def _no_overlap(span: str) -> None:
    op.execute(
        "ALTER TABLE appointments ADD CONSTRAINT no_overlap EXCLUDE USING gist "
        f"(doctor_id WITH =, ({span}) WITH &&) WHERE ({HOLDS_TIME})"
    )


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "visit_types",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("doctor_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("minutes", sa.SmallInteger(), nullable=False),
        sa.Column("buffer_before_minutes", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column("buffer_after_minutes", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column("online", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("min_notice_minutes", sa.Integer(), nullable=True),
        sa.Column("horizon_days", sa.SmallInteger(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("minutes BETWEEN 5 AND 480", name=op.f("ck_visit_types_minutes")),
        sa.CheckConstraint(
            "buffer_before_minutes BETWEEN 0 AND 120", name=op.f("ck_visit_types_buffer_before")
        ),
        sa.CheckConstraint(
            "buffer_after_minutes BETWEEN 0 AND 120", name=op.f("ck_visit_types_buffer_after")
        ),
        sa.CheckConstraint(
            "min_notice_minutes BETWEEN 0 AND 43200", name=op.f("ck_visit_types_min_notice")
        ),
        sa.CheckConstraint("horizon_days BETWEEN 1 AND 730", name=op.f("ck_visit_types_horizon")),
        sa.ForeignKeyConstraint(
            ["doctor_id"], ["doctors.id"], name=op.f("fk_visit_types_doctor_id_doctors")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_visit_types")),
    )
    op.create_index(
        "uq_visit_types_doctor_name",
        "visit_types",
        ["doctor_id", sa.text("lower(name)")],
        unique=True,
    )
    op.execute(VISIT_SPAN)
    op.add_column("appointments", sa.Column("visit_type_id", sa.BigInteger(), nullable=True))
    op.create_foreign_key(
        op.f("fk_appointments_visit_type_id_visit_types"),
        "appointments",
        "visit_types",
        ["visit_type_id"],
        ["id"],
        ondelete="SET NULL",
    )
    for column in ("buffer_before_minutes", "buffer_after_minutes"):
        op.add_column(
            "appointments",
            sa.Column(column, sa.SmallInteger(), server_default="0", nullable=False),
        )
    op.create_check_constraint(
        op.f("ck_appointments_buffers"),
        "appointments",
        "buffer_before_minutes BETWEEN 0 AND 120 AND buffer_after_minutes BETWEEN 0 AND 120",
    )
    op.add_column(
        "appointments",
        sa.Column(
            "blocked",
            postgresql.TSTZRANGE(),
            sa.Computed(BLOCKED, persisted=True),
            nullable=False,
        ),
    )
    op.execute("ALTER TABLE appointments DROP CONSTRAINT no_overlap")
    _no_overlap("blocked")
    op.drop_index("ix_appointments_doctor_starts", table_name="appointments")
    op.create_index(
        "ix_appointments_doctor_starts",
        "appointments",
        ["doctor_id", "starts_at"],
        postgresql_include=["ends_at", "status", "blocked"],
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_appointments_doctor_starts", table_name="appointments")
    op.create_index(
        "ix_appointments_doctor_starts",
        "appointments",
        ["doctor_id", "starts_at"],
        postgresql_include=["ends_at", "status"],
    )
    op.execute("ALTER TABLE appointments DROP CONSTRAINT no_overlap")
    _no_overlap("tstzrange(starts_at, ends_at, '[)')")
    op.drop_column("appointments", "blocked")
    op.drop_constraint(op.f("ck_appointments_buffers"), "appointments", type_="check")
    op.drop_column("appointments", "buffer_after_minutes")
    op.drop_column("appointments", "buffer_before_minutes")
    op.drop_constraint(
        op.f("fk_appointments_visit_type_id_visit_types"), "appointments", type_="foreignkey"
    )
    op.drop_column("appointments", "visit_type_id")
    op.execute("DROP FUNCTION visit_span(timestamptz, timestamptz, smallint, smallint)")
    op.drop_index("uq_visit_types_doctor_name", table_name="visit_types")
    op.drop_table("visit_types")
