"""Analytics pages: the dashboard (charts as server-rendered SVG) and CSV exports.

One URL serves each page and its htmx fragment: with `HX-Request` only the named block
is rendered, and every answer says `Vary: HX-Request`.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from litestar import Request, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, QueryParameter
from litestar.response import Redirect, Response, Template
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.access.identity import Principal
from app.analytics import exports
from app.analytics import reports as analytics
from app.concurrently import concurrently
from app.errors import Invalid
from app.i18n import gettext
from app.routes.api_analytics import STAFF, start_export
from app.routes.views import fragment, page
from app.services import Services
from app.waitlist.report import WaitlistReport, waitlist_report
from app.web.guards import allow
from db.models import Clinic


def _date(raw: str) -> dt.date | None:
    """Form and query values arrive as text; an empty field means the default."""
    raw = raw.strip()
    if not raw:
        return None
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise Invalid(gettext("%(raw)r is not a date (YYYY-MM-DD)") % {"raw": raw}) from None


def _int(raw: str) -> int | None:
    raw = raw.strip()
    return int(raw) if raw.isdigit() else None


async def _clinics(db_session: AsyncSession, actor: Principal) -> list[tuple[int, str]]:
    query = select(Clinic.id, Clinic.name).order_by(Clinic.name)
    if actor.role == "front_desk":
        query = query.where(Clinic.id == actor.clinic_id)
    return [(i, n) for i, n in (await db_session.execute(query)).all()]


@get("/analytics", guards=[allow(*STAFF)], include_in_schema=False)
async def dashboard(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    actor: Principal,
    now: dt.datetime,
    first: Annotated[str, QueryParameter(name="from")] = "",
    last: Annotated[str, QueryParameter(name="to")] = "",
    clinic_id: str = "",
    group_by: str = "weekday",
) -> Template | Response[str]:
    """No-shows, popular hours, utilisation and cancellations for a range and clinic."""
    scope = await analytics.scope_of(
        db_session, actor, _date(first), _date(last), _int(clinic_id), now
    )
    if group_by not in analytics.GROUPS:
        group_by = "weekday"
    engine = Services.of(request.app).analytics_engine
    reports, clinics, waitlist = await concurrently(
        analytics.dashboard(engine, scope, group_by),
        _clinics(db_session, actor),
        _waitlist(engine, scope),
    )
    context = {
        "scope": scope,
        "group_by": group_by,
        "groups": analytics.GROUPS,
        "clinics": clinics,
        "no_shows": reports.no_shows,
        "no_shows_by_hour": reports.no_shows_by_hour,
        "popular": reports.popular,
        "utilisation": reports.utilisation,
        "cancellations": reports.cancellations,
        "waitlist": waitlist,
        "weekdays": analytics.WEEKDAYS,
        "group_name": analytics.group_name,
        "shown_label": analytics.shown_label,
        "csv_query": _query(scope, group_by),
    }
    return page(request, "analytics/dashboard.html", "report", **context)


async def _waitlist(engine: AsyncEngine, scope: analytics.ReportScope) -> WaitlistReport:
    async with engine.connect() as conn:
        return await waitlist_report(conn, scope.first_day, scope.last_day, scope.clinic_id)


def _query(scope: analytics.ReportScope, group_by: str) -> str:
    parts = [f"from={scope.first_day}", f"to={scope.last_day}", f"group_by={group_by}"]
    if scope.clinic_id is not None:
        parts.append(f"clinic_id={scope.clinic_id}")
    return "&".join(parts)


@get("/analytics/exports", guards=[allow(*STAFF)], include_in_schema=False)
async def exports_page(
    request: Request[Any, Any, Any], db_session: AsyncSession, actor: Principal, now: dt.datetime
) -> Template | Response[str]:
    """My recent exports and a form for a new one."""
    own = actor.clinic_id if actor.role == "front_desk" else None
    today = await analytics.clinics_today(db_session, own, now)
    context = {
        "exports": await exports.my_exports(db_session, actor),
        "clinics": await _clinics(db_session, actor),
        "today": today,
        "default_first": today - dt.timedelta(days=29),
    }
    return page(request, "analytics/exports.html", "list", **context)


@post("/analytics/exports", guards=[allow(*STAFF)], include_in_schema=False)
async def export_form(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    actor: Principal,
    now: dt.datetime,
    data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Response[str] | Redirect:
    """Start an export; htmx gets its progress fragment, a plain form a redirect."""
    view = await start_export(
        request,
        db_session,
        actor,
        now,
        _date(data.get("from", "")),
        _date(data.get("to", "")),
        _int(data.get("clinic_id", "")),
    )
    if request.headers.get("hx-request"):
        return fragment(request, "analytics/export.html", "progress", export=view)
    return Redirect(f"/analytics/exports/{view.id}", status_code=303)


@get("/analytics/exports/{export_id:str}", guards=[allow(*STAFF)], include_in_schema=False)
async def export_page(
    request: Request[Any, Any, Any], db_session: AsyncSession, actor: Principal, export_id: str
) -> Template | Response[str]:
    """One export's progress; the fragment polls itself until the file is ready."""
    view = await exports.get_export(db_session, actor, export_id)
    return page(request, "analytics/export.html", "progress", export=view)


ROUTES = [dashboard, exports_page, export_form, export_page]
