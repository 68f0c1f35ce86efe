"""The migrations build exactly the schema the models describe (no drift either way)."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from db.models import Base


async def test_no_difference_between_models_and_migrated_database(engine):
    def diff(connection):
        context = MigrationContext.configure(connection)
        return compare_metadata(context, Base.metadata)

    async with engine.connect() as conn:
        differences = await conn.run_sync(diff)
    assert differences == []
