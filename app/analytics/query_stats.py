"""The top statements from pg_stat_statements, for the admin's slow-query page (S-5)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

TOP = 20
ENABLE_HINT = (
    "pg_stat_statements is not enabled on this database. To enable it: add "
    "shared_preload_libraries = 'pg_stat_statements' to postgresql.conf and restart "
    "PostgreSQL, then run CREATE EXTENSION pg_stat_statements; in the medbook database "
    "(as its owner or a superuser). To see other roles' statement text, grant "
    "pg_read_all_stats to medbook's role."
)

_STATEMENTS = """
SELECT query, calls, total_exec_time, mean_exec_time, rows
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY {order} DESC
LIMIT :top
"""


@dataclass(frozen=True, slots=True)
class Statement:
    """One normalised statement (values replaced by $n) and its totals since the reset."""

    query: str
    calls: int
    total_ms: float
    mean_ms: float
    rows: int


@dataclass(frozen=True, slots=True)
class QueryStats:
    """The top statements by total and by mean time, or why there are none."""

    by_total: list[Statement]
    by_mean: list[Statement]
    unavailable: str | None = None


async def top_statements(session: AsyncSession, top: int = TOP) -> QueryStats:
    """Read pg_stat_statements when the extension is installed and preloaded.

    Args:
        session: any session; reading needs no superuser.
        top: how many statements in each list.

    Returns:
        Both lists, or empty lists and `unavailable` saying how to enable the extension.
    """
    installed = await session.scalar(
        text("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'")
    )
    if not installed:
        return QueryStats([], [], ENABLE_HINT)
    lists = []
    try:
        # A savepoint: when the library is not preloaded the query fails, and the
        # request's session must stay usable.
        async with session.begin_nested():
            for order in ("total_exec_time", "mean_exec_time"):
                result = await session.execute(text(_STATEMENTS.format(order=order)), {"top": top})
                lists.append(
                    [
                        Statement(r.query, r.calls, r.total_exec_time, r.mean_exec_time, r.rows)
                        for r in result
                    ]
                )
    except DBAPIError:  # installed but not in shared_preload_libraries
        return QueryStats([], [], ENABLE_HINT)
    return QueryStats(lists[0], lists[1])
