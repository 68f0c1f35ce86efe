"""appointments: when the patient confirmed from the reminder

Revision ID: 0015
Revises: 0013
Create Date: 2026-12-07 04:00:00

(The waitlist's 0014 is built beside this one; the lead re-chains at merge.)
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column(
        "appointments", sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_column("appointments", "confirmed_at")
