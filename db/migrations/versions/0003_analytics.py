"""analytics rollups (daily, monthly; hour, lead time), watermark, export jobs, updated_at index

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 21:08:00.677587

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "analytics_watermarks",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_analytics_watermarks")),
    )
    op.create_table(
        "clinic_bucket_stats",
        sa.Column("clinic_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("dimension", sa.String(length=16), nullable=False),
        sa.Column("bucket", sa.SmallInteger(), nullable=False),
        sa.Column("appointments", sa.Integer(), server_default="0", nullable=False),
        sa.Column("attended", sa.Integer(), server_default="0", nullable=False),
        sa.Column("no_show", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cancelled", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "refreshed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "dimension IN ('hour', 'lead_time', 'cancel_lead')",
            name=op.f("ck_clinic_bucket_stats_dimension"),
        ),
        sa.ForeignKeyConstraint(
            ["clinic_id"], ["clinics.id"], name=op.f("fk_clinic_bucket_stats_clinic_id_clinics")
        ),
        sa.PrimaryKeyConstraint(
            "clinic_id", "day", "dimension", "bucket", name=op.f("pk_clinic_bucket_stats")
        ),
    )
    op.create_index(
        "ix_clinic_bucket_stats_dimension_day",
        "clinic_bucket_stats",
        ["dimension", "day"],
        unique=False,
    )
    op.create_table(
        "export_jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("requested_by", sa.BigInteger(), nullable=False),
        sa.Column("clinic_id", sa.BigInteger(), nullable=True),
        sa.Column("first_day", sa.Date(), nullable=False),
        sa.Column("last_day", sa.Date(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="queued", nullable=False),
        sa.Column("rows_total", sa.BigInteger(), nullable=True),
        sa.Column("rows_done", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("storage_key", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'done', 'failed', 'expired')",
            name=op.f("ck_export_jobs_status"),
        ),
        sa.CheckConstraint("last_day >= first_day", name=op.f("ck_export_jobs_range")),
        sa.ForeignKeyConstraint(
            ["clinic_id"],
            ["clinics.id"],
            name=op.f("fk_export_jobs_clinic_id_clinics"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["requested_by"],
            ["users.id"],
            name=op.f("fk_export_jobs_requested_by_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_jobs")),
    )
    op.create_index("ix_export_jobs_expires_at", "export_jobs", ["expires_at"], unique=False)
    op.create_index(
        "ix_export_jobs_requested_by_created",
        "export_jobs",
        ["requested_by", sa.literal_column("created_at DESC")],
        unique=False,
    )
    op.create_index("ix_appointments_updated_at", "appointments", ["updated_at"], unique=False)
    op.create_table(
        "clinic_monthly_buckets",
        sa.Column("clinic_id", sa.BigInteger(), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("dimension", sa.String(length=16), nullable=False),
        sa.Column("bucket", sa.SmallInteger(), nullable=False),
        sa.Column("appointments", sa.Integer(), server_default="0", nullable=False),
        sa.Column("attended", sa.Integer(), server_default="0", nullable=False),
        sa.Column("no_show", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cancelled", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "refreshed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "dimension IN ('hour_of_week', 'lead_time', 'cancel_lead')",
            name=op.f("ck_clinic_monthly_buckets_dimension"),
        ),
        sa.ForeignKeyConstraint(
            ["clinic_id"], ["clinics.id"], name=op.f("fk_clinic_monthly_buckets_clinic_id_clinics")
        ),
        sa.PrimaryKeyConstraint(
            "clinic_id", "month", "dimension", "bucket", name=op.f("pk_clinic_monthly_buckets")
        ),
    )
    op.create_table(
        "clinic_monthly_stats",
        sa.Column("clinic_id", sa.BigInteger(), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("doctor_id", sa.BigInteger(), nullable=False),
        sa.Column("booked", sa.Integer(), server_default="0", nullable=False),
        sa.Column("checked_in", sa.Integer(), server_default="0", nullable=False),
        sa.Column("completed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cancelled", sa.Integer(), server_default="0", nullable=False),
        sa.Column("no_show", sa.Integer(), server_default="0", nullable=False),
        sa.Column("available_minutes", sa.Integer(), server_default="0", nullable=False),
        sa.Column("booked_minutes", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "refreshed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["clinic_id"], ["clinics.id"], name=op.f("fk_clinic_monthly_stats_clinic_id_clinics")
        ),
        sa.ForeignKeyConstraint(
            ["doctor_id"], ["doctors.id"], name=op.f("fk_clinic_monthly_stats_doctor_id_doctors")
        ),
        sa.PrimaryKeyConstraint(
            "clinic_id", "month", "doctor_id", name=op.f("pk_clinic_monthly_stats")
        ),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("clinic_monthly_stats")
    op.drop_table("clinic_monthly_buckets")
    op.drop_index("ix_appointments_updated_at", table_name="appointments")
    op.drop_index("ix_export_jobs_requested_by_created", table_name="export_jobs")
    op.drop_index("ix_export_jobs_expires_at", table_name="export_jobs")
    op.drop_table("export_jobs")
    op.drop_index("ix_clinic_bucket_stats_dimension_day", table_name="clinic_bucket_stats")
    op.drop_table("clinic_bucket_stats")
    op.drop_table("analytics_watermarks")
