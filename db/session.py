"""Engines and sessions: pooling, per-connection timeouts and the slow-query log.

Review findings handled here: S-2 (pool size, overflow, wait), M-5 (pre-ping and recycle, so
a connection cut by a firewall or a server restart is replaced instead of failing a
request), S-4 (statement and idle-in-transaction timeouts set on every connection) and S-5
(statements slower than a threshold are logged with their duration).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from app.settings import Settings

slow_log = logging.getLogger("medbook.slow_query")


def create_engine(
    settings: Settings,
    *,
    url: str | None = None,
    statement_timeout_ms: int | None = None,
    application_name: str = "medbook",
) -> AsyncEngine:
    """Create a pooled asyncpg engine with medbook's timeouts.

    Args:
        settings: pool sizes and timeouts.
        url: another database URL (the read replica); the primary when omitted.
        statement_timeout_ms: a longer limit for analytics and exports.
        application_name: shown in pg_stat_activity, to tell web, worker and jobs apart.
    """
    timeout = statement_timeout_ms or settings.statement_timeout_ms
    engine = create_async_engine(
        url or settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_recycle=settings.db_pool_recycle,
        pool_pre_ping=True,
        connect_args={
            "server_settings": {
                "application_name": application_name,
                "statement_timeout": str(timeout),
                "idle_in_transaction_session_timeout": str(settings.idle_in_transaction_timeout_ms),
                "timezone": "UTC",
            },
            # Client-side bound a little above the server's, in case the server is gone.
            "command_timeout": timeout / 1000 + 5,
            "timeout": 10,
        },
    )
    _log_slow_statements(engine, settings.slow_query_ms)
    return engine


def _log_slow_statements(engine: AsyncEngine, threshold_ms: int) -> None:
    if threshold_ms <= 0:
        return

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _start(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool):
        conn.info.setdefault("medbook_query_start", []).append(time.perf_counter())

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def _end(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool):
        started = conn.info["medbook_query_start"].pop()
        elapsed_ms = (time.perf_counter() - started) * 1000
        if elapsed_ms >= threshold_ms:
            # The statement text is the normalised form: values are bound, never inlined.
            slow_log.warning(
                "slow query %.1f ms: %s", elapsed_ms, " ".join(statement.split())[:2000]
            )


def session_factory(engine: AsyncEngine) -> async_sessionmaker:
    """Sessions that keep loaded objects usable after commit (rendering happens after)."""
    return async_sessionmaker(engine, expire_on_commit=False)
