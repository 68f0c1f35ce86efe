"""patients: trigram index on lower(full_name) for the front desk's any-word name search

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 07:10:00

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    # pg_trgm ships with PostgreSQL's contrib (the embedded PostgreSQL has it too).
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute(
        "CREATE INDEX ix_patients_name_trgm ON patients USING gin (lower(full_name) gin_trgm_ops)"
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.execute("DROP INDEX ix_patients_name_trgm")
    op.execute("DROP EXTENSION IF EXISTS pg_trgm")
