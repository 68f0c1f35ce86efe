"""PostgreSQL or Redis down, restarting or overloaded: a 503 with Retry-After (a page in
words for a browser), never a 500. The app recovers by itself once they answer again:
the pool opens new connections, redis-py reconnects."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from litestar import Request
from litestar.response import Response
from redis.exceptions import RedisError
from sqlalchemy.exc import EmulatedDBAPIException, SQLAlchemyError

from app.errors import BUSY, Overloaded, outage, refused_value
from app.i18n import N_
from app.web.admission import (
    BUSY_DETAIL,
    BUSY_PAGE,
    RETRY_AFTER_SECONDS,
    render_unavailable,
)
from app.web.guards import wants_html
from app.web.i18n import scope_language

log = logging.getLogger("medbook")

DOWN_RETRY_AFTER_SECONDS = 5  # a restart or failover takes seconds, not milliseconds
DOWN_DETAIL = "the service is briefly unavailable; try again in a moment"
REFUSED_VALUE_DETAIL = (
    "a value is out of range or not valid text (a number beyond 2^63-1, a NUL character)"
)
DOWN_PAGE = {  # translated when the pages are rendered (render_pages)
    "heading": N_("medbook is briefly unavailable"),
    "message": N_(
        "A service medbook depends on is not answering right now, so your request could "
        "not be carried out. It usually comes back within moments. If you were booking, "
        "check your appointments before booking again."
    ),
}


def outage_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """503 with Retry-After for an outage (`app.errors.outage`), 400 for a value the
    database refuses (`app.errors.refused_value`); any other error of these types is a
    bug, answered 500 as Litestar would (its traceback is already logged)."""
    kind = outage(exc)
    if kind is None and refused_value(exc):
        log.warning("400 for %s %s: %s", request.method, request.url.path, exc)
        return Response({"status_code": 400, "detail": REFUSED_VALUE_DETAIL}, status_code=400)
    if kind is None:
        return Response({"status_code": 500, "detail": "Internal Server Error"}, status_code=500)
    log.warning("503 for %s %s: %s: %s", request.method, request.url.path, kind, exc)
    busy = kind == BUSY
    retry = RETRY_AFTER_SECONDS if busy else DOWN_RETRY_AFTER_SECONDS
    headers = {"Retry-After": str(retry), "Cache-Control": "no-store"}
    if wants_html(request):
        page = unavailable_pages(request.app)[busy][scope_language(request.scope)]
        return Response(page, status_code=503, headers=headers, media_type="text/html")
    body = {"status_code": 503, "detail": BUSY_DETAIL if busy else DOWN_DETAIL}
    return Response(body, status_code=503, headers=headers)


def render_pages(app: Any) -> dict[bool, dict[str, bytes]]:
    """The 503 pages, busy (True) and down (False), in every language: rendered once per
    process, at start-up (create_app), since an outage is no time to render."""
    return {
        True: render_unavailable(app, BUSY_PAGE, RETRY_AFTER_SECONDS),
        False: render_unavailable(app, DOWN_PAGE, DOWN_RETRY_AFTER_SECONDS),
    }


def unavailable_pages(app: Any) -> dict[bool, dict[str, bytes]]:
    """The pages `render_pages` made at start-up (made now for an app started without)."""
    pages = app.state.get(PAGES_STATE_KEY)
    if pages is None:
        pages = app.state[PAGES_STATE_KEY] = render_pages(app)
    return pages


PAGES_STATE_KEY = "unavailable_pages"


# The types an outage arrives as: SQLAlchemy's (pool timeout, wrapped driver errors),
# the asyncpg dialect's own DBAPI errors, which a pool checkout outside a Connection
# raises unwrapped (`engine.raw_connection()` under driver_fetchrow: PostgreSQL refusing
# a new connection, "too many connections"), asyncpg's raised directly (driver_fetchrow),
# redis-py's, plain socket errors (a refused connection passes through SQLAlchemy's
# connect unwrapped), and our own overload.
OUTAGE_HANDLERS = {
    error: outage_handler
    for error in (
        SQLAlchemyError,
        EmulatedDBAPIException,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        RedisError,
        OSError,
        Overloaded,
    )
}
