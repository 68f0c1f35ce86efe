"""Liveness and readiness against real and unreachable services."""

import dataclasses

from litestar.testing import AsyncTestClient

from app.services import Services
from app.web.asgi import create_app
from conftest import free_port


async def test_live_and_ready(client):
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "down": []}


async def test_ready_is_503_naming_redis_when_redis_is_unreachable(settings):
    broken = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with AsyncTestClient(app=create_app(broken)) as client:
        response = await client.get("/health/ready")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "down": ["redis"]}


async def test_ready_is_503_naming_postgresql_when_it_is_unreachable(settings):
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none"
    broken = dataclasses.replace(settings, database_url=url)
    async with AsyncTestClient(app=create_app(broken)) as client:
        response = await client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["down"] == ["postgresql"]


async def test_home_page_loads_vendored_htmx(client):
    page = await client.get("/")
    assert page.status_code == 200
    assert "/static/vendor/htmx-2.0.8.min.js" in page.text
    script = await client.get("/static/vendor/htmx-2.0.8.min.js")
    assert script.status_code == 200
    assert 'version:"2.0.8"' in script.text.replace(" ", "")


async def test_the_pool_is_filled_at_start(settings, db, redis):
    app = create_app(settings)
    async with AsyncTestClient(app=app):
        assert Services.of(app).engine.pool.checkedin() == settings.db_pool_size


async def test_a_started_app_keeps_its_start_up_heap_out_of_collections(settings):
    """After start every object alive is frozen (full collections skip them: app/web/asgi.py);
    at shutdown they are handed back to the collector."""
    import gc

    gc.unfreeze()
    async with AsyncTestClient(app=create_app(settings)) as client:
        assert (await client.get("/health/live")).status_code == 200
        frozen = gc.get_freeze_count()
    assert frozen > 10_000  # modules, the app, its routes and pools
    assert gc.get_freeze_count() == 0
