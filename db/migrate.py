"""Alembic, driven from code: `medbook db upgrade|downgrade|current` and the tests."""

from __future__ import annotations

import io
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str, output: io.StringIO | None = None) -> Config:
    """An Alembic config pointing at our migrations and the given database."""
    config = Config(stdout=output) if output is not None else Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def current(database_url: str) -> str:
    """The revision the database is at, or an empty string before the first migration."""
    out = io.StringIO()
    command.current(alembic_config(database_url, out))
    return out.getvalue().strip()


def revisions() -> list[str]:
    """Every migration's revision id, the newest (head) first."""
    script = ScriptDirectory.from_config(alembic_config(""))
    return [revision.revision for revision in script.walk_revisions()]
