"""The slow-query page: top statements by total and by mean time (S-5)."""

from __future__ import annotations

from litestar import get
from litestar.response import Template
from sqlalchemy.ext.asyncio import AsyncSession

from app.analytics import query_stats
from app.web.guards import allow


@get("/admin/queries", guards=[allow("admin")], include_in_schema=False)
async def queries_page(db_session: AsyncSession) -> Template:
    """pg_stat_statements' top statements, or how to enable the extension."""
    stats = await query_stats.top_statements(db_session)
    return Template("admin/queries.html", context={"stats": stats})
