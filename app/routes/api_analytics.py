"""JSON API for analytics: no-shows, popular slots, utilisation, cancellations, exports.

Reports read the rollups through the analytics engine (the read replica when
DATABASE_READ_URL is set, with the analytics statement timeout); export requests are
written on the primary and run by the worker.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import Provide
from litestar.enums import MediaType
from litestar.exceptions import HTTPException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter, QueryParameter
from litestar.response import File, Redirect, Response
from litestar.types import ExceptionHandlersMap
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.access.identity import Principal
from app.analytics import exports
from app.analytics import reports as analytics
from app.analytics.reports import (
    Cancellations,
    NoShowReport,
    NoShowRow,
    PopularSlots,
    ReportScope,
    ReportTimedOut,
    Utilisation,
    UtilisationRow,
)
from app.errors import Invalid, NotFound
from app.i18n import gettext
from app.routes.inputs import INT64_MAX, YEARS, Day, IdField, check_day
from app.routes.responses import MEANINGS
from app.routes.responses import error as _error
from app.services import Services
from app.web.guards import allow, client_addr
from db.models import Clinic
from tasks.analytics import enqueue_export

log = logging.getLogger(__name__)
STAFF = ("admin", "front_desk")
REPORTS = ("no-shows", "popular-slots", "utilisation", "cancellations")


async def provide_reports_db(services: Services) -> AsyncIterator[AsyncConnection]:
    """A connection of the analytics engine (replica or primary, long timeout) for one
    request."""
    async with services.analytics_engine.connect() as conn:
        yield conn


DEPENDENCIES = {"reports_db": Provide(provide_reports_db)}

From = Annotated[
    dt.date | None,
    QueryParameter(
        name="from", description="first clinic-local day (inclusive)", schema_extra=YEARS
    ),
]
To = Annotated[
    dt.date | None,
    QueryParameter(name="to", description="last clinic-local day (inclusive)", schema_extra=YEARS),
]
ClinicId = Annotated[
    int | None,
    Parameter(
        description="one clinic; front desks default to (and may only ask for) theirs",
        ge=1,
        le=INT64_MAX,
        schema_extra={"minimum": 1, "maximum": INT64_MAX},
    ),
]
GroupBy = Annotated[
    str,
    Parameter(
        description="what to group no-show rates by (weekday and hour are clinic-local)",
        schema_extra={"enum": list(analytics.GROUPS)},
    ),
]
ReportName = Annotated[
    str, Parameter(description="which report", schema_extra={"enum": list(REPORTS)})
]


def report_errors(unknown: str) -> dict[int, ResponseSpec]:
    """What a report route really answers besides 200 (tests/integration/test_analytics_api.py
    checks these against the schema and against the app). `unknown`: its enum parameters."""
    return {
        400: _error(
            "a parameter that does not parse: a date not YYYY-MM-DD, a non-integer clinic_id"
        ),
        401: _error("not signed in"),
        403: _error(
            "not an admin or front desk, or a front desk asking for another clinic than its own"
        ),
        422: _error(
            f"`from` after `to`, a range longer than {analytics.MAX_RANGE_DAYS:,} days or a "
            "day outside 1900-01-01..2999-12-31" + (f"; an unknown {unknown}" if unknown else "")
        ),
        429: _error(MEANINGS[429]),
        503: _error(
            "the report ran past the analytics statement timeout and was cancelled, or "
            "PostgreSQL or Redis is briefly unavailable; try a shorter range or a single clinic"
        ),
    }


REPORT_ERRORS = report_errors("")
EXPORT_ERRORS = {
    400: _error("a body that does not parse: missing `from`/`to`, a date not YYYY-MM-DD"),
    401: REPORT_ERRORS[401],
    403: REPORT_ERRORS[403],
    404: _error("no such clinic"),
    422: _error(
        f"`from` after `to`, a range longer than {analytics.MAX_EXPORT_DAYS:,} days, or a "
        "day outside 1900-01-01..2999-12-31"
    ),
    429: REPORT_ERRORS[429],
    503: _error("the job queue is unavailable; the export is marked failed, ask again later"),
}
MY_EXPORT_ERRORS = {
    400: _error(MEANINGS[400]),
    401: REPORT_ERRORS[401],
    403: _error("not an admin or front desk"),
    404: _error(
        "no such export, someone else's (only the requester or an admin sees one), "
        "not finished yet, or expired"
    ),
    429: REPORT_ERRORS[429],
    503: _error(MEANINGS[503]),
}


def json_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    """A refusal as JSON, like every other route's: Litestar would answer it in the CSV
    routes' own media type (text/csv), which the schema and clients do not expect."""
    body: dict[str, Any] = {"status_code": exc.status_code, "detail": exc.detail}
    if exc.extra:
        body["extra"] = exc.extra
    return Response(
        body, status_code=exc.status_code, headers=exc.headers, media_type=MediaType.JSON
    )


CSV_ERRORS_AS_JSON: ExceptionHandlersMap = {HTTPException: json_error}


async def scope_for(
    reports_db: AsyncConnection,
    actor: Principal,
    now: dt.datetime,
    first: dt.date | None,
    last: dt.date | None,
    clinic_id: int | None,
) -> ReportScope:
    check_day(first, "from")
    check_day(last, "to")
    return await analytics.scope_of(reports_db, actor, first, last, clinic_id, now)


class NoShowOut(msgspec.Struct):
    key: int
    label: str
    appointments: int
    attended: int
    no_show: int
    no_show_rate: float | None


class NoShowsOut(msgspec.Struct, rename={"first": "from", "last": "to"}):
    first: dt.date
    last: dt.date
    clinic_id: int | None
    group_by: str
    rows: list[NoShowOut]
    total: NoShowOut


class PopularSlotsOut(msgspec.Struct, rename={"first": "from", "last": "to"}):
    first: dt.date
    last: dt.date
    clinic_id: int | None
    weekdays: list[str]
    bookings: list[list[int]]  # [weekday 0 = Monday][hour 0-23], clinic-local
    max: int


class UtilisationRowOut(msgspec.Struct):
    key: int
    label: str
    available_minutes: int
    booked_minutes: int
    idle_minutes: int
    utilisation: float | None


class UtilisationOut(msgspec.Struct, rename={"first": "from", "last": "to"}):
    first: dt.date
    last: dt.date
    clinic_id: int | None
    by: str
    rows: list[UtilisationRowOut]
    total: UtilisationRowOut


class CancellationsOut(msgspec.Struct, rename={"first": "from", "last": "to"}):
    first: dt.date
    last: dt.date
    clinic_id: int | None
    cancelled: int
    appointments: int
    cancellation_rate: float | None
    by_lead_time: dict[str, int]


class ExportOut(msgspec.Struct, rename={"first": "from", "last": "to"}):
    """An export's state; `download_url` once it is done, until `expires_at`."""

    id: str
    status: str  # queued, running, done, failed, expired
    first: dt.date
    last: dt.date
    clinic_id: int | None
    rows_total: int | None
    rows_done: int
    percent: int
    size_bytes: int
    error: str | None
    created_at: dt.datetime
    finished_at: dt.datetime | None
    expires_at: dt.datetime | None
    download_url: str | None


def export_out(view: exports.ExportView) -> ExportOut:
    return msgspec.convert(view.as_dict(), ExportOut)


class ExportIn(msgspec.Struct, forbid_unknown_fields=True, rename={"first": "from", "last": "to"}):
    first: Day
    last: Day
    clinic_id: IdField | None = None


def _no_show(r: NoShowRow) -> NoShowOut:
    return NoShowOut(r.key, r.label, r.appointments, r.attended, r.no_show, r.rate)


def no_shows_out(report: NoShowReport) -> NoShowsOut:
    s = report.scope
    return NoShowsOut(
        s.first_day,
        s.last_day,
        s.clinic_id,
        report.group_by,
        [_no_show(r) for r in report.rows],
        _no_show(report.total),
    )


def popular_out(report: PopularSlots) -> PopularSlotsOut:
    s = report.scope
    matrix = [[report.counts.get((w, h), 0) for h in range(24)] for w in range(7)]
    return PopularSlotsOut(
        s.first_day, s.last_day, s.clinic_id, list(analytics.WEEKDAYS), matrix, report.max
    )


def _util(r: UtilisationRow) -> UtilisationRowOut:
    return UtilisationRowOut(
        r.key, r.label, r.available_minutes, r.booked_minutes, r.idle_minutes, r.utilisation
    )


def utilisation_out(report: Utilisation) -> UtilisationOut:
    s = report.scope
    return UtilisationOut(
        s.first_day,
        s.last_day,
        s.clinic_id,
        report.by,
        [_util(r) for r in report.rows],
        _util(report.total),
    )


def cancellations_out(report: Cancellations) -> CancellationsOut:
    s = report.scope
    return CancellationsOut(
        s.first_day,
        s.last_day,
        s.clinic_id,
        report.cancelled,
        report.appointments,
        report.rate,
        dict(report.by_lead),
    )


async def report_csv(db: AsyncConnection, scope: ReportScope, report: str, group_by: str) -> str:
    """One report as CSV text (reports are small: at most one row per doctor)."""
    if report == "no-shows":
        return exports.no_shows_csv(await analytics.no_shows(db, scope, group_by))
    if report == "popular-slots":
        return exports.popular_slots_csv(await analytics.popular_slots(db, scope))
    if report == "utilisation":
        return exports.utilisation_csv(await analytics.utilisation(db, scope))
    if report == "cancellations":
        return exports.cancellations_csv(await analytics.cancellations(db, scope))
    raise Invalid(gettext("report must be one of %(choices)s") % {"choices": ", ".join(REPORTS)})


class AnalyticsController(Controller):
    path = "/api/analytics"
    tags = ["analytics"]
    dependencies = DEPENDENCIES

    @get("/no-shows", guards=[allow(*STAFF)], responses=report_errors("`group_by`"))
    async def no_shows(
        self,
        reports_db: AsyncConnection,
        actor: Principal,
        now: dt.datetime,
        first: From = None,
        last: To = None,
        group_by: GroupBy = "clinic",
        clinic_id: ClinicId = None,
    ) -> NoShowsOut:
        """No-show rates (no-shows among appointments with an outcome), grouped."""
        scope = await scope_for(reports_db, actor, now, first, last, clinic_id)
        return no_shows_out(await analytics.no_shows(reports_db, scope, group_by))

    @get("/popular-slots", guards=[allow(*STAFF)], responses=REPORT_ERRORS)
    async def popular_slots(
        self,
        reports_db: AsyncConnection,
        actor: Principal,
        now: dt.datetime,
        first: From = None,
        last: To = None,
        clinic_id: ClinicId = None,
    ) -> PopularSlotsOut:
        """Appointments (not cancelled) per clinic-local weekday x start hour."""
        scope = await scope_for(reports_db, actor, now, first, last, clinic_id)
        return popular_out(await analytics.popular_slots(reports_db, scope))

    @get("/utilisation", guards=[allow(*STAFF)], responses=REPORT_ERRORS)
    async def utilisation(
        self,
        reports_db: AsyncConnection,
        actor: Principal,
        now: dt.datetime,
        first: From = None,
        last: To = None,
        clinic_id: ClinicId = None,
    ) -> UtilisationOut:
        """Booked vs. available slot minutes: per clinic, or per doctor of one clinic."""
        scope = await scope_for(reports_db, actor, now, first, last, clinic_id)
        return utilisation_out(await analytics.utilisation(reports_db, scope))

    @get("/cancellations", guards=[allow(*STAFF)], responses=REPORT_ERRORS)
    async def cancellations(
        self,
        reports_db: AsyncConnection,
        actor: Principal,
        now: dt.datetime,
        first: From = None,
        last: To = None,
        clinic_id: ClinicId = None,
    ) -> CancellationsOut:
        """Cancellations by how long before the start they came, and their share."""
        scope = await scope_for(reports_db, actor, now, first, last, clinic_id)
        return cancellations_out(await analytics.cancellations(reports_db, scope))

    @get(
        "/report.csv",
        guards=[allow(*STAFF)],
        media_type="text/csv",
        responses=report_errors("`report` or `group_by`"),
        exception_handlers=CSV_ERRORS_AS_JSON,
    )
    async def report_as_csv(
        self,
        reports_db: AsyncConnection,
        actor: Principal,
        now: dt.datetime,
        report: ReportName,
        first: From = None,
        last: To = None,
        group_by: GroupBy = "clinic",
        clinic_id: ClinicId = None,
    ) -> Response[str]:
        """One report as a CSV download."""
        scope = await scope_for(reports_db, actor, now, first, last, clinic_id)
        body = await report_csv(reports_db, scope, report, group_by)
        name = f"{report}-{scope.first_day}-{scope.last_day}.csv"
        return Response(
            body,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @post("/exports", guards=[allow(*STAFF)], status_code=202, responses=EXPORT_ERRORS)
    async def request_export(
        self,
        request: Request[Any, Any, Any],
        db_session: AsyncSession,
        actor: Principal,
        now: dt.datetime,
        data: ExportIn,
    ) -> ExportOut:
        """Export the appointments of a range as CSV: a job; poll its status."""
        view = await start_export(
            request, db_session, actor, now, data.first, data.last, data.clinic_id
        )
        return export_out(view)

    @get("/exports/{export_id:str}", guards=[allow(*STAFF)], responses=MY_EXPORT_ERRORS)
    async def export_status(
        self, db_session: AsyncSession, actor: Principal, export_id: str
    ) -> ExportOut:
        """An export's progress and, once done, its download URL and expiry."""
        return export_out(await exports.get_export(db_session, actor, export_id))

    @get(
        "/exports/{export_id:str}/file",
        guards=[allow(*STAFF)],
        media_type="text/csv",
        exception_handlers=CSV_ERRORS_AS_JSON,
        responses={
            302: ResponseSpec(
                None, description="with S3 storage: a redirect to a pre-signed URL (15 minutes)"
            ),
            **MY_EXPORT_ERRORS,
        },
    )
    async def export_file(
        self,
        request: Request[Any, Any, Any],
        db_session: AsyncSession,
        actor: Principal,
        now: dt.datetime,
        export_id: str,
    ) -> File | Redirect:
        """The CSV file of a finished export (or a short-lived S3 link to it)."""
        store = Services.of(request.app).exports
        view, found = await exports.download(
            db_session, store, actor, export_id, client_addr(request), now
        )
        if found.url:
            # The route's text/csv would be taken for the redirect's own (empty) body,
            # which Litestar refuses with a 500: a redirect is plain text.
            return Redirect(found.url, media_type=MediaType.TEXT)
        assert found.path is not None
        return File(path=found.path, filename=view.filename, media_type="text/csv")


async def start_export(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    actor: Principal,
    now: dt.datetime,
    first: dt.date | None,
    last: dt.date | None,
    clinic_id: int | None,
) -> exports.ExportView:
    """Record the request, then (after commit) queue its job."""
    check_day(first, "from")
    check_day(last, "to")
    scope = await analytics.scope_of(
        db_session, actor, first, last, clinic_id, now, max_days=analytics.MAX_EXPORT_DAYS
    )
    if scope.clinic_id is not None and await db_session.get(Clinic, scope.clinic_id) is None:
        raise NotFound(
            gettext("clinic %(clinic_id)s does not exist") % {"clinic_id": scope.clinic_id}
        )
    view = await exports.create_export(db_session, actor, scope, client_addr(request))
    try:
        await enqueue_export(Services.of(request.app).queue, view.id)
    except (RedisError, OSError) as exc:
        log.warning("export %s not queued: %s", view.id, exc)
        message = "the job queue is unavailable; please try again in a few minutes"
        await exports.mark_failed(db_session, view.id, message)
        raise ReportTimedOut(message) from None  # 503, like any analytics outage
    return view
