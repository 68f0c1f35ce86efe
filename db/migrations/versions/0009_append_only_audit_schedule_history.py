"""audit_events append-only (trigger); doctor_schedule_template_history

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 00:20:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# UPDATE and DELETE are refused to everyone, the owner included. TRUNCATE only when the
# session says `medbook.allow_audit_truncate = on`: the test harness empties every table
# between tests, and `db/seed_scale.py --replace` empties a benchmark database. Any role can
# set a custom setting, so this guards against mistakes and the app's own code; against
# someone holding the app's credentials, privileges do it (docs/security.md).
APPEND_ONLY = (
    """
CREATE FUNCTION audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE'
       AND coalesce(current_setting('medbook.allow_audit_truncate', true), '') = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$
""",
    """
CREATE TRIGGER audit_events_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()
""",
    """
CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()
""",
)


def upgrade() -> None:
    """Upgrade schema."""
    for statement in APPEND_ONLY:
        op.execute(statement)
    op.create_table(
        "doctor_schedule_template_history",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("doctor_id", sa.BigInteger(), nullable=False),
        sa.Column("weekday", sa.SmallInteger(), nullable=False),
        sa.Column("start_time", sa.Time(), nullable=False),
        sa.Column("end_time", sa.Time(), nullable=False),
        sa.Column("slot_minutes", sa.SmallInteger(), nullable=False),
        sa.Column("valid_from", sa.Date(), nullable=True),
        sa.Column("valid_to", sa.Date(), nullable=True),
        sa.Column("replaced_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("replaced_by", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["doctor_id"],
            ["doctors.id"],
            name=op.f("fk_doctor_schedule_template_history_doctor_id_doctors"),
        ),
        sa.ForeignKeyConstraint(
            ["replaced_by"],
            ["users.id"],
            name=op.f("fk_doctor_schedule_template_history_replaced_by_users"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_doctor_schedule_template_history")),
    )
    op.create_index(
        "ix_doctor_schedule_template_history_doctor_replaced",
        "doctor_schedule_template_history",
        ["doctor_id", "replaced_at"],
        unique=False,
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(
        "ix_doctor_schedule_template_history_doctor_replaced",
        table_name="doctor_schedule_template_history",
    )
    op.drop_table("doctor_schedule_template_history")
    op.execute("DROP TRIGGER audit_events_no_truncate ON audit_events")
    op.execute("DROP TRIGGER audit_events_no_update_delete ON audit_events")
    op.execute("DROP FUNCTION audit_events_append_only()")
