"""create_app(): plugins, routes and lifespan; nothing else."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from advanced_alchemy.extensions.litestar import (
    AsyncSessionConfig,
    SQLAlchemyAsyncConfig,
    SQLAlchemyPlugin,
)
from litestar import Litestar
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template import TemplateConfig

from app.guards import PUBLIC, AuthMiddleware
from app.redis import create_redis
from app.routes import health, pages
from app.settings import PROJECT_ROOT, Settings, get_settings
from db.session import create_engine, session_factory


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the web application for the given (or the process's) settings."""
    settings = settings or get_settings()
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
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
        app.state.redis = create_redis(settings)
        try:
            yield
        finally:
            await app.state.redis.aclose()

    return Litestar(
        route_handlers=[
            health.live,
            health.ready,
            pages.home,
            create_static_files_router(
                path="/static", directories=[PROJECT_ROOT / "static"], opt=PUBLIC
            ),
        ],
        middleware=[DefineMiddleware(AuthMiddleware, exclude=["^/static/", "^/health/"])],
        plugins=[SQLAlchemyPlugin(config=db)],
        lifespan=[services],
        template_config=TemplateConfig(
            directory=PROJECT_ROOT / "templates", engine=JinjaTemplateEngine
        ),
        state=State({"settings": settings, "engine": engine, "sessions": session_factory(engine)}),
        openapi_config=OpenAPIConfig(title="medbook", version="0.1.0", path="/schema"),
    )
