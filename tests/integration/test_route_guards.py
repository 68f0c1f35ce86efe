"""Every route declares who may use it; adding one without a guard fails here."""

from litestar.routes import HTTPRoute, WebSocketRoute

from app.asgi import create_app


def declared(handler) -> bool:
    if getattr(handler, "http_methods", None) == {"OPTIONS"}:
        return True  # Litestar's automatic CORS preflight answer, which returns no data
    return bool(handler.resolve_guards()) or handler.opt.get("public") is True


def test_every_route_declares_its_guard(settings):
    app = create_app(settings)
    missing = []
    for route in app.routes:
        if route.path.startswith("/schema"):
            continue  # Litestar's OpenAPI pages: public documentation of the public API
        handlers = route.route_handlers if isinstance(route, HTTPRoute) else [route.route_handler]
        assert isinstance(route, HTTPRoute | WebSocketRoute) or handlers
        missing += [f"{route.path} {h}" for h in handlers if not declared(h)]
    assert missing == []
