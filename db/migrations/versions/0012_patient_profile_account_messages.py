"""patients: language, pending e-mail, both channels; notifications about accounts

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 12:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPOINTMENT_KINDS = "'confirmation', 'reminder_24h', 'reminder_1h', 'cancellation', 'exception'"


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column(
        "patients",
        sa.Column("language", sa.String(length=8), server_default="en", nullable=False),
    )
    op.add_column("patients", sa.Column("pending_email", sa.Text(), nullable=True))
    op.create_check_constraint(
        op.f("ck_patients_language"), "patients", "language IN ('en', 'de', 'fr', 'es')"
    )
    op.drop_constraint(op.f("ck_patients_notify_by"), "patients", type_="check")
    op.create_check_constraint(
        op.f("ck_patients_notify_by"), "patients", "notify_by IN ('email', 'sms', 'both', 'none')"
    )

    op.alter_column("notifications", "appointment_id", nullable=True)
    op.add_column("notifications", sa.Column("user_id", sa.BigInteger(), nullable=True))
    op.add_column("notifications", sa.Column("ref", sa.String(length=64), nullable=True))
    op.create_foreign_key(
        op.f("fk_notifications_user_id_users"),
        "notifications",
        "users",
        ["user_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_index(
        "ix_notifications_user",
        "notifications",
        ["user_id"],
        postgresql_where=sa.text("user_id IS NOT NULL"),
    )
    op.create_check_constraint(
        op.f("ck_notifications_subject"),
        "notifications",
        "(appointment_id IS NULL) <> (user_id IS NULL)",
    )
    op.drop_constraint(op.f("ck_notifications_kind"), "notifications", type_="check")
    op.create_check_constraint(
        op.f("ck_notifications_kind"),
        "notifications",
        f"kind IN ({APPOINTMENT_KINDS}, 'password_reset', 'email_verify')",
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.execute("DELETE FROM notifications WHERE user_id IS NOT NULL")
    op.drop_constraint(op.f("ck_notifications_kind"), "notifications", type_="check")
    op.create_check_constraint(
        op.f("ck_notifications_kind"), "notifications", f"kind IN ({APPOINTMENT_KINDS})"
    )
    op.drop_constraint(op.f("ck_notifications_subject"), "notifications", type_="check")
    op.drop_index("ix_notifications_user", table_name="notifications")
    op.drop_constraint(op.f("fk_notifications_user_id_users"), "notifications", type_="foreignkey")
    op.drop_column("notifications", "ref")
    op.drop_column("notifications", "user_id")
    op.alter_column("notifications", "appointment_id", nullable=False)
    op.execute("UPDATE patients SET notify_by = 'email' WHERE notify_by = 'both'")
    op.drop_constraint(op.f("ck_patients_notify_by"), "patients", type_="check")
    op.create_check_constraint(
        op.f("ck_patients_notify_by"), "patients", "notify_by IN ('email', 'sms', 'none')"
    )
    op.drop_constraint(op.f("ck_patients_language"), "patients", type_="check")
    op.drop_column("patients", "pending_email")
    op.drop_column("patients", "language")
