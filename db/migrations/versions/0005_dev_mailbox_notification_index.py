"""dev mailbox: index its notification_id (the SET NULL on notification deletes)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 01:20:00

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_index("ix_dev_mailbox_notification", "dev_mailbox", ["notification_id"])


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_dev_mailbox_notification", table_name="dev_mailbox")
