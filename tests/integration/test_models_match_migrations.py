"""The migrations build exactly the schema the models describe (no drift either way)."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from db.models import Base


async def test_no_difference_between_models_and_migrated_database(engine):
    def diff(connection):
        context = MigrationContext.configure(connection)
        return compare_metadata(context, Base.metadata)

    async with engine.connect() as conn:
        differences = await conn.run_sync(diff)
    assert differences == []


async def test_expression_indexes_keep_their_operator_classes(engine):
    """alembic compares an expression index's expression, not its operator class (the
    name search's prefix and trigram indexes depend on theirs): check those here."""
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT indexname, indexdef FROM pg_indexes"))
        in_database = dict(rows.all())
    checked = 0
    for table in Base.metadata.tables.values():
        for index in table.indexes:
            for operator_class in index.dialect_options["postgresql"]["ops"].values():
                assert f" {operator_class})" in in_database[index.name], index.name
                checked += 1
    assert checked >= 2
