"""clinics: one clinic per name, compared without case and spaces

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-07 00:30:00

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0011"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME_KEY = r"lower(regexp_replace(name, '\s+', '', 'g'))"


def upgrade() -> None:
    """Upgrade schema."""
    # Clinics already named alike keep their names, the later ones with their id added,
    # so the index can be built and an admin sees which to rename.
    op.execute(
        f"""
        UPDATE clinics SET name = name || ' (#' || id || ')'
        WHERE id IN (
            SELECT id FROM (
                SELECT id, row_number() OVER (PARTITION BY {NAME_KEY} ORDER BY id) AS n
                FROM clinics
            ) ranked
            WHERE n > 1
        )
        """
    )
    op.execute(f"CREATE UNIQUE INDEX uq_clinics_name_key ON clinics ({NAME_KEY})")


def downgrade() -> None:
    """Downgrade schema."""
    op.execute("DROP INDEX uq_clinics_name_key")
