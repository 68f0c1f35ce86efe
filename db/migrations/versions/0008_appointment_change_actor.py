"""appointments: who made the last change (status or time) and why (issue #22)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 10:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    # Nullable, no default: adding them rewrites nothing, however many appointments exist.
    op.add_column("appointments", sa.Column("changed_by", sa.BigInteger(), nullable=True))
    op.add_column("appointments", sa.Column("change_reason", sa.Text(), nullable=True))
    op.create_foreign_key(
        op.f("fk_appointments_changed_by_users"),
        "appointments",
        "users",
        ["changed_by"],
        ["id"],
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_constraint(op.f("fk_appointments_changed_by_users"), "appointments", type_="foreignkey")
    op.drop_column("appointments", "change_reason")
    op.drop_column("appointments", "changed_by")
