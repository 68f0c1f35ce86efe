"""Liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

import asyncio

from litestar import Request, get
from litestar.response import Response
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.routes.responses import answers
from app.services import Services
from app.web.guards import PUBLIC

PROBE_TIMEOUT = 2.0


@get("/health/live", sync_to_thread=False, opt=PUBLIC, tags=["ops"], responses={})
def live() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


async def _postgres_ok(engine: AsyncEngine) -> bool:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:  # any failure means "not ready"; the reason is in the server log
        return False


async def _redis_ok(redis: object) -> bool:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            return bool(await redis.ping())  # type: ignore[attr-defined]
    except Exception:
        return False


@get(
    "/health/ready",
    opt=PUBLIC,
    tags=["ops"],
    responses=answers(503, _503="PostgreSQL or Redis does not answer; `down` names which"),
)
async def ready(request: Request) -> Response[dict[str, object]]:
    """200 when PostgreSQL and Redis both answer; 503 naming what is down."""
    services = Services.of(request.app)
    pg, rd = await asyncio.gather(_postgres_ok(services.engine), _redis_ok(services.redis))
    down = [name for name, ok in (("postgresql", pg), ("redis", rd)) if not ok]
    body: dict[str, object] = {"status": "ok" if not down else "unavailable", "down": down}
    return Response(body, status_code=503 if down else 200)
