"""Every route declares who may use it; adding one without a guard fails here."""

from litestar.routes import HTTPRoute, WebSocketRoute

from app.web.asgi import create_app

# Litestar's OpenAPI pages are made by the framework and carry neither a guard nor
# opt=PUBLIC. They are public by a written decision (docs/security.md, "OpenAPI schema"):
# listed here one by one, so a new unguarded path under /schema fails like any other.
OPENAPI_PAGES = {
    "/schema",
    "/schema/{path:str}",
    "/schema/openapi.json",
    "/schema/swagger",
}


def declared(handler) -> bool:
    if getattr(handler, "http_methods", None) == {"OPTIONS"}:
        return True  # Litestar's automatic CORS preflight answer, which returns no data
    return bool(handler.resolve_guards()) or handler.opt.get("public") is True


def test_every_route_declares_its_guard(settings):
    app = create_app(settings)
    missing, openapi = [], set()
    for route in app.routes:
        handlers = route.route_handlers if isinstance(route, HTTPRoute) else [route.route_handler]
        assert isinstance(route, HTTPRoute | WebSocketRoute) and handlers
        undeclared = [h for h in handlers if not declared(h)]
        if undeclared and route.path in OPENAPI_PAGES:
            assert all(h.http_methods <= {"GET", "HEAD"} for h in undeclared), route.path
            openapi.add(route.path)
            continue
        missing += [f"{route.path} {h}" for h in undeclared]
    assert missing == []
    # Every exempted page still exists and is still unguarded; drop it here when it goes.
    assert openapi == OPENAPI_PAGES


async def test_the_openapi_pages_are_public_and_say_nothing_private(client):
    schema = await client.get("/schema/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/auth/token" in paths and "/api/appointments" in paths
    # Only the API is described: no pages, no secrets or settings.
    assert not any(p.startswith(("/admin", "/desk", "/me/")) for p in paths)
    assert "secret" not in schema.text.lower()


async def test_no_oauth2_redirect_page_is_served(client):
    """Swagger's OAuth2 redirect page is an inline script our CSP refuses, for OAuth2
    browser flows medbook does not have: it is not served (docs/security.md)."""
    assert (await client.get("/schema/swagger")).status_code == 200
    answer = await client.get("/schema/oauth2-redirect.html")
    assert answer.status_code == 404
    assert "swaggerUIRedirectOauth2" not in answer.text
