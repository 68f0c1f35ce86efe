"""FHIR R4 scheduling API under /fhir/R4 (docs/fhir.md): thin handlers over app/fhir/.

Every answer is `application/fhir+json`; every error, including those of the
authentication and rate-limit middleware and an unavailable database, is an
OperationOutcome with the right status (the router's exception handlers).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, Router, get, patch, post
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.handlers import HTTPRouteHandler
from litestar.params import HeaderParameter
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.identity import Principal
from app.appointments.rules import BookingRules
from app.errors import BUSY, DomainError, outage, refused_value
from app.fhir import bundles, capability, feed, interactions, scheduling
from app.fhir.bundles import outcome, searchset
from app.fhir.resources import Resource
from app.fhir.search import FIND_PARAMS, BadSearch, Search, parse, wants_strict
from app.live.effects import Effects
from app.services import Services
from app.settings import Settings
from app.web.admission import RETRY_AFTER_SECONDS
from app.web.guards import PUBLIC, allow, client_addr
from app.web.outages import DOWN_RETRY_AFTER_SECONDS, OUTAGE_HANDLERS, REFUSED_VALUE_DETAIL
from tasks import fhir_holds

log = logging.getLogger("medbook")

FHIR_JSON = "application/fhir+json"
_STARTED = dt.datetime.now(dt.UTC).date().isoformat()


def base_url(settings: Settings) -> str:
    return bundles.base_url(settings.public_origin)


def fhir(
    body: Resource, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response[Any]:
    return Response(body, status_code=status_code, media_type=FHIR_JSON, headers=headers)


def _search(request: Request[Any, Any, Any], resource_type: str) -> Search:
    return parse(
        resource_type,
        request.query_params.multi_items(),
        strict=wants_strict(request.headers.get("prefer")),
    )


async def _body(request: Request[Any, Any, Any]) -> Any:
    try:
        return msgspec.json.decode(await request.body())
    except msgspec.DecodeError:
        raise BadSearch("the body is not JSON") from None


@get("/metadata", opt=PUBLIC)
async def metadata(settings: Settings) -> Response[Any]:
    """The CapabilityStatement: public, as FHIR clients ask for it before signing in."""
    return fhir(capability.capability_statement(base_url(settings), "0.1.0", _STARTED))


def _caller(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    actor: Principal,
    rules: BookingRules,
    now: dt.datetime,
) -> interactions.Caller:
    cache = Services.of(request.app).slot_cache
    return interactions.Caller(db_session, cache, actor, rules, now, client_addr(request))


def _search_handler(resource_type: str) -> HTTPRouteHandler:
    async def search_type(
        request: Request[Any, Any, Any],
        db_session: AsyncSession,
        actor: Principal,
        rules: BookingRules,
        now: dt.datetime,
        settings: Settings,
    ) -> Response[Any]:
        """Search one resource type; a Bundle with paging links."""
        search = _search(request, resource_type)
        caller = _caller(request, db_session, actor, rules, now)
        page = await interactions.search(caller, search)
        return fhir(
            searchset(
                base_url(settings),
                resource_type,
                search,
                page.matches,
                more=page.more,
                total=page.total,
                included=page.included,
            )
        )

    return get(f"/{resource_type}", guards=[allow()], name=f"fhir-search-{resource_type}")(
        search_type
    )


def _read_handler(resource_type: str) -> HTTPRouteHandler:
    async def read(
        request: Request[Any, Any, Any],
        db_session: AsyncSession,
        actor: Principal,
        rules: BookingRules,
        now: dt.datetime,
        resource_id: str,
    ) -> Response[Any]:
        """Read one resource by its id (404 when unknown or not the caller's)."""
        caller = _caller(request, db_session, actor, rules, now)
        return fhir(await interactions.read(caller, resource_type, resource_id))

    return get(
        f"/{resource_type}/{{resource_id:str}}",
        guards=[allow()],
        name=f"fhir-read-{resource_type}",
    )(read)


@get("/Appointment/$find", guards=[allow()])
async def find(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    actor: Principal,
    rules: BookingRules,
    now: dt.datetime,
    settings: Settings,
) -> Response[Any]:
    """Free slots of doctors or of a clinic as proposed Appointments (a Bundle)."""
    search = parse(
        "Appointment",
        request.query_params.multi_items(),
        strict=wants_strict(request.headers.get("prefer")),
        known=FIND_PARAMS,
    )
    cache = Services.of(request.app).slot_cache
    page = await scheduling.find(db_session, cache, search, rules=rules, now=now, role=actor.role)
    body = searchset(
        base_url(settings),
        "Appointment/$find",
        search,
        page.matches,
        more=page.more,
        total=page.total,
    )
    return fhir(body)


@post("/Appointment/$book", guards=[allow("patient", "front_desk", "admin")])
async def book(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    effects: Effects,
    actor: Principal,
    rules: BookingRules,
    now: dt.datetime,
    settings: Settings,
    idempotency_key: Annotated[
        str | None, HeaderParameter(name="Idempotency-Key", max_length=200)
    ] = None,
) -> Response[Any]:
    """Book a proposed Appointment or a free slot: 201, or 409 when it has been taken."""
    wanted = scheduling.booking_request(await _body(request))
    resource, replayed = await scheduling.book(
        db_session, effects, actor, wanted, rules=rules, now=now, idempotency_key=idempotency_key
    )
    headers = {"Location": f"{base_url(settings)}/Appointment/{resource['id']}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return fhir(resource, status_code=201, headers=headers)


@post("/Appointment/$hold", guards=[allow("patient", "front_desk", "admin")])
async def hold(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    effects: Effects,
    actor: Principal,
    rules: BookingRules,
    now: dt.datetime,
    settings: Settings,
) -> Response[Any]:
    """Hold a proposed Appointment or a free slot: 201 with the pending Appointment and
    its expiry (a retry: the same hold, `Idempotent-Replayed`), or 409 when it is taken
    or held."""
    wanted = scheduling.booking_request(await _body(request))
    hold_for = dt.timedelta(seconds=settings.waitlist_hold_seconds)
    resource, replayed = await scheduling.hold(
        db_session, effects, actor, wanted, rules=rules, now=now, hold_for=hold_for
    )
    if replayed:
        return fhir(resource, status_code=201, headers={"Idempotent-Replayed": "true"})
    await fhir_holds.enqueue_expiry(
        Services.of(request.app).queue, int(resource["id"]), now + hold_for
    )
    return fhir(resource, status_code=201)


@patch("/Appointment/{resource_id:str}", guards=[allow()])
async def change(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    effects: Effects,
    actor: Principal,
    now: dt.datetime,
    resource_id: str,
) -> Response[Any]:
    """Cancel (or check in, complete, mark a no-show) with a JSON Patch of /status."""
    status, reason = scheduling.patched_status(await _body(request))
    resource = await scheduling.change_status(
        db_session, effects, actor, resource_id, status, reason, now=now
    )
    return fhir(resource)


@get("/$bulk-publish", opt=PUBLIC)
async def bulk_publish(request: Request[Any, Any, Any]) -> Response[Any]:
    """The SMART Scheduling Links manifest (public: no patient data, like the slot pages)."""
    body = await feed.manifest(Services.of(request.app).exports)
    return Response(body, media_type="application/json")


@get("/$bulk-publish/{generation:str}/{name:str}", opt=PUBLIC)
async def bulk_publish_file(
    request: Request[Any, Any, Any], generation: str, name: str
) -> Response[Any]:
    """One NDJSON file the manifest names."""
    body = await feed.feed_file(Services.of(request.app).exports, f"{generation}/{name}")
    return Response(body, media_type=feed.NDJSON)


# --- every error as an OperationOutcome -------------------------------------------------


def _domain_error(_: Request[Any, Any, Any], exc: DomainError) -> Response[Any]:
    notes = [f"free instead: {a['start']} to {a['end']}" for a in exc.extra.get("alternatives", [])]
    retry = exc.extra.get("retry_after")
    headers = {"Retry-After": str(retry)} if retry is not None else None
    return fhir(outcome(exc.status_code, exc.detail, notes), exc.status_code, headers)


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    headers = dict(exc.headers or {})
    if exc.status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return fhir(outcome(exc.status_code, str(exc.detail)), exc.status_code, headers or None)


def _outage(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """As app/web/outages.py decides (503 with Retry-After, 400 for a refused value, else
    500), in FHIR's words."""
    kind = outage(exc)
    if kind is None and refused_value(exc):
        return fhir(outcome(400, REFUSED_VALUE_DETAIL), 400)
    if kind is None:
        return _bug(request, exc)
    log.warning("503 for %s %s: %s: %s", request.method, request.url.path, kind, exc)
    seconds = RETRY_AFTER_SECONDS if kind == BUSY else DOWN_RETRY_AFTER_SECONDS
    retry = {"Retry-After": str(seconds)}
    return fhir(outcome(503, "the service is briefly unavailable; try again shortly"), 503, retry)


def _bug(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Anything else is a bug (Litestar has logged its traceback): 500, still FHIR."""
    return fhir(outcome(500, "internal error"), 500)


EXCEPTION_HANDLERS: dict[type[Exception], Callable[..., Response[Any]]] = {
    DomainError: _domain_error,
    HTTPException: _http_error,
    # The app answers this one itself (pages redirect to the login form): not here.
    NotAuthorizedException: _http_error,
    **{error: _outage for error in OUTAGE_HANDLERS},
    Exception: _bug,
}

ROUTER = Router(
    path=bundles.BASE_PATH,
    route_handlers=[
        metadata,
        bulk_publish,
        bulk_publish_file,
        find,
        hold,
        book,
        change,
        *(_search_handler(t) for t in interactions.TYPES),
        *(_read_handler(t) for t in interactions.TYPES),
    ],
    exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
    include_in_schema=False,
)
