"""create_app(): plugins, routes and lifespan; nothing else."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

from advanced_alchemy.extensions.litestar import (
    AsyncSessionConfig,
    SQLAlchemyAsyncConfig,
    SQLAlchemyPlugin,
)
from litestar import Litestar, Request
from litestar.di import Provide
from litestar.exceptions import InternalServerException, NotAuthorizedException
from litestar.exceptions.responses import create_exception_response
from litestar.logging.config import LoggingConfig
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Response
from litestar.static_files import create_static_files_router
from litestar.template import TemplateConfig
from litestar.types import ASGIApp, Logger, Scope
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import EmulatedDBAPIException, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.access import identity
from app.appointments import commands
from app.errors import DomainError
from app.routes import (
    actions,
    admin_pages,
    admin_queries,
    admin_users,
    analytics_pages,
    audit,
    auth,
    auth_api,
    deps,
    fhir,
    health,
    language,
    live,
    pages,
    patient_pages,
    records,
    reminder_answers,
    staff_pages,
    visit_type_pages,
    waitlist_pages,
)
from app.routes.api_analytics import AnalyticsController
from app.routes.api_appointments import AppointmentController
from app.routes.api_directory import DirectoryController
from app.routes.api_visit_types import VisitTypeController
from app.routes.api_waitlist import WaitlistController
from app.routes.inputs import refuse_bad_input
from app.routes.notifications_pages import NOTIFICATION_ROUTES
from app.scheduling import slots
from app.services import start_services
from app.settings import PROJECT_ROOT, Settings, get_settings
from app.web import csrf, page_context, sequential_dependencies, uncopied_guards
from app.web.admission import Admission, AdmissionMiddleware
from app.web.api_docs import ClosedStructs, VendoredSwagger
from app.web.csrf import CSRFMiddleware
from app.web.guards import PUBLIC, AuthMiddleware, RateLimitMiddleware, not_signed_in_handler
from app.web.i18n import LanguageMiddleware
from app.web.metrics import MetricsMiddleware, metrics, metrics_lifespan
from app.web.outages import OUTAGE_HANDLERS, PAGES_STATE_KEY, render_pages
from app.web.security_headers import add_security_headers
from db.session import create_engine

# Static files, probes and the metrics scrape need no user, rate limit or CSRF token.
UNGUARDED = ["^/static/", "^/health/", "^/metrics$"]
# What Litestar raises (as a 500) when the client hangs up before its body has arrived.
CLIENT_GONE = "client disconnected prematurely"
CLIENT_CLOSED_REQUEST = 499  # nginx's status for it: no one reads it, metrics count it apart


def domain_error_handler(_: Request, exc: DomainError) -> Response[dict[str, object]]:
    """A domain error becomes its 4xx status with `{status_code, detail, **extra}`."""
    body = {"status_code": exc.status_code, "detail": exc.detail, **exc.extra}
    retry = exc.extra.get("retry_after")
    headers = {"Retry-After": str(retry)} if retry is not None else None
    return Response(body, status_code=exc.status_code, headers=headers)


def client_gone(exc: BaseException | None) -> bool:
    return isinstance(exc, InternalServerException) and exc.detail == CLIENT_GONE


def internal_error_handler(request: Request, exc: InternalServerException) -> Response[object]:
    """A client that hung up mid-upload is no server error: 499, not 500."""
    if client_gone(exc):
        body = {"status_code": CLIENT_CLOSED_REQUEST, "detail": "the client closed the request"}
        return Response(body, status_code=CLIENT_CLOSED_REQUEST)
    return create_exception_response(request, exc)


def log_uncaught(logger: Logger, scope: Scope, _: list[str]) -> None:
    """Litestar's log of an unhandled exception (ERROR, with its traceback), except for a
    client that hung up mid-request or mid-handshake: one line at INFO, since nothing went
    wrong here."""
    exc = sys.exc_info()[1]
    if client_gone(exc):
        logger.info("client hung up mid-request: %s %s", scope.get("method", ""), scope["path"])
        return
    if scope["type"] == "websocket" and isinstance(exc, OSError):
        # The server's way of saying the socket is gone (uvicorn's ClientDisconnected is an
        # OSError), e.g. a browser that left before its live socket's handshake was
        # accepted; the server closes the connection itself.
        logger.info("client hung up on a websocket: %s", scope["path"])
        return
    logger.exception(
        "Uncaught exception (connection_type=%s, path=%r):", scope["type"], scope["path"]
    )


async def warm_pool(engine: AsyncEngine, count: int) -> None:
    """Open `count` pooled connections before the first request, and on each run the hot
    statements once (availability, the Principal, booking's two).

    Opening them spares the first requests after a start or deploy the fork and
    authentication of new PostgreSQL backends. Running the statements spares them the rest
    of a backend's first use: asyncpg prepares each statement and introspects its types
    once per connection, and a new backend plans with cold catalog caches (a statement's
    first run on a fresh connection is many times slower than its second; bench/README.md).
    That was the stall of the first burst of cache misses in a new process. A database
    that is down only logs here: /health/ready reports it, and requests retry the pool."""

    async def hold() -> None:
        async with engine.connect() as connection:
            await slots.prepare(connection)
            await identity.prepare(connection)
            await commands.warm_up(connection)
            await asyncio.sleep(0.05)  # held together, so each opens its own connection

    try:
        await asyncio.gather(*(hold() for _ in range(count)))
    except (OSError, SQLAlchemyError, EmulatedDBAPIException) as exc:
        logging.getLogger("medbook").warning("database not reachable at start: %s", exc)


async def warm_redis(redis: Redis, count: int) -> None:
    """Open `count` Redis connections at start (concurrent PINGs each take one): redis-py
    opens them on demand, and a request that opens one pays its connect and handshake
    round trips. Redis being down only logs here, as for the database."""
    try:
        await asyncio.gather(*(redis.execute_command("PING") for _ in range(count)))
    except RedisError as exc:
        logging.getLogger("medbook").warning("Redis not reachable at start: %s", exc)


@asynccontextmanager
async def freeze_startup_heap(_: Litestar) -> AsyncIterator[None]:
    """Once everything has started, move every object alive so far (modules, the app, its
    routes, pools, compiled templates) out of the garbage collector's reach.

    Those few hundred thousand objects live as long as the process, yet each full
    (generation 2) collection walked them all, several times in the first seconds after a
    start (measured with gc.callbacks; bench/README.md), and every request in flight
    stalled with it (the first requests after a deploy). After `gc.freeze()` a
    full collection walks only what came later. Runs
    last among the lifespans, so everything they set up is included; at shutdown the
    objects are handed back (an app built and stopped in a test process is collected)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the web application for the given (or the process's) settings."""
    settings = settings or get_settings()
    sequential_dependencies.install()
    uncopied_guards.install()
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    if warning := csrf.insecure_origin_warning(settings.public_origin):
        logging.getLogger("medbook").warning(warning)
    engine = create_engine(settings, application_name="medbook-web")
    db = SQLAlchemyAsyncConfig(
        engine_instance=engine,
        session_config=AsyncSessionConfig(expire_on_commit=False),
        enable_touch_updated_timestamp_listener=False,
        enable_file_object_listener=False,
        set_default_exception_handler=False,
    )

    @asynccontextmanager
    async def services(app: Litestar) -> AsyncIterator[None]:
        started = await start_services(
            settings, process="web", engine=engine, render=live.make_renderer(app)
        )
        app.state.services = started
        try:
            await warm_pool(engine, settings.db_pool_size)
            await warm_redis(started.redis, settings.db_pool_size)
            yield
        finally:
            await started.stop()
            del app.state.services

    admission = Admission.from_settings(settings)

    async def render_unavailable_pages(app: Litestar) -> None:
        """The 503 pages in every language and admission's whole 503 answers, once per
        process, before the first request."""
        pages = app.state[PAGES_STATE_KEY] = render_pages(app)
        await admission.prepare(app, pages[True], settings.default_language)

    return Litestar(
        debug=settings.log_level == "DEBUG",
        on_startup=[render_unavailable_pages],
        route_handlers=[
            health.live,
            health.ready,
            metrics,
            pages.home,
            language.choose_language,
            DirectoryController,
            VisitTypeController,
            AppointmentController,
            WaitlistController,
            *waitlist_pages.ROUTES,
            *patient_pages.ROUTES,
            *staff_pages.ROUTES,
            live.live,
            AnalyticsController,
            *analytics_pages.ROUTES,
            *auth.PAGES,
            *auth_api.ROUTES,
            *admin_users.ROUTES,
            *admin_pages.ROUTES,
            *visit_type_pages.ROUTES,
            *reminder_answers.ROUTES,
            admin_queries.queries_page,
            *audit.ROUTES,
            *NOTIFICATION_ROUTES,
            *records.ROUTES,
            *records.upload_routes(settings),
            fhir.ROUTER,
            create_static_files_router(
                path="/static", directories=[PROJECT_ROOT / "static"], opt=PUBLIC
            ),
        ],
        middleware=[
            # Outermost, so request times include authentication and rate limiting.
            DefineMiddleware(MetricsMiddleware),
            # Next, so a refused request is counted and timed, and costs nothing more.
            DefineMiddleware(AdmissionMiddleware, admission=admission),
            DefineMiddleware(AuthMiddleware, exclude=UNGUARDED),
            # Once the user is known: the rest (refusals included) speak their language.
            DefineMiddleware(LanguageMiddleware, exclude=UNGUARDED),
            DefineMiddleware(RateLimitMiddleware, exclude=UNGUARDED),
            DefineMiddleware(CSRFMiddleware, exclude=UNGUARDED),
        ],
        before_send=[add_security_headers],
        # NUL characters and deeply nested JSON: one 400 before any handler parses them.
        before_request=refuse_bad_input,
        request_max_body_size=settings.request_max_body_bytes,
        plugins=[SQLAlchemyPlugin(config=db), ClosedStructs()],
        exception_handlers={
            DomainError: domain_error_handler,
            NotAuthorizedException: not_signed_in_handler,
            **OUTAGE_HANDLERS,  # PostgreSQL or Redis down or overloaded: 503, not 500
            InternalServerException: internal_error_handler,
        },
        # A 5xx is a bug: log every unhandled exception with its traceback, not only in
        # debug. An expected 4xx answer (a taken slot, a bad query, a rate limit) is not an
        # error: Litestar would log each with a traceback too, flooding the log under load.
        # LOG_LEVEL sets the root level (Litestar's default is INFO whatever it says), so
        # WARNING also silences SAQ's line for each job enqueued.
        logging_config=LoggingConfig(
            root={"handlers": ["queue_listener"], "level": settings.log_level},
            loggers={
                "litestar": {
                    "level": settings.log_level,
                    "handlers": ["queue_listener"],
                    "propagate": False,
                }
            },
            log_exceptions="always",
            disable_stack_trace=set(range(400, 500)),
            exception_logging_handler=log_uncaught,
        ),
        lifespan=[
            services,
            metrics_lifespan,
            freeze_startup_heap,
        ],
        dependencies={
            "services": Provide(deps.provide_services, sync_to_thread=False),
            "settings": Provide(deps.provide_settings, sync_to_thread=False),
            "effects": Provide(deps.provide_effects, sync_to_thread=False),
            "slot_cache": Provide(deps.provide_slot_cache, sync_to_thread=False),
            "rules": Provide(deps.provide_rules, sync_to_thread=False),
            "read_session": Provide(deps.provide_read_session),
            "now": Provide(deps.provide_now, sync_to_thread=False),
            "actor": Provide(deps.provide_actor, sync_to_thread=False),
            "command": Provide(actions.provide_command, sync_to_thread=False),
        },
        template_config=TemplateConfig(
            directory=PROJECT_ROOT / "templates",
            engine=JinjaTemplateEngine,
            engine_callback=page_context.register,
        ),
        # Swagger UI only, served from static/vendor (the CDN renderers broke under our CSP).
        openapi_config=OpenAPIConfig(
            title="medbook",
            version="0.1.0",
            path="/schema",
            render_plugins=[VendoredSwagger(path=["/", "/swagger"])],
        ),
    )


def create_proxied_app() -> ASGIApp:
    """create_app() for granian, which has no proxy-header option of its own: the client
    address and scheme come from X-Forwarded-For/-Proto when, and only when, the peer is
    one of FORWARDED_ALLOW_IPS (uvicorn's --proxy-headers does the same)."""
    from granian.utils.proxies import wrap_asgi_with_proxy_headers

    settings = get_settings()
    return cast(
        "ASGIApp", wrap_asgi_with_proxy_headers(create_app(settings), settings.forwarded_allow_ips)
    )
