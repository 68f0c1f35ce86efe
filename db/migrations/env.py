"""Alembic environment: runs migrations over the app's own async engine setup."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app.settings import async_database_url
from db.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    # Migrations may rewrite big tables: no statement timeout here.
    engine = create_async_engine(
        async_database_url(url),
        poolclass=pool.NullPool,
        connect_args={"server_settings": {"application_name": "medbook-migrate"}},
    )
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


url: str = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url") or ""
if context.is_offline_mode():
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        asyncio.run(_run_async(url))
