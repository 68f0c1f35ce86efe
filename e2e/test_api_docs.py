"""The API documentation in a real browser: Swagger UI runs from our own files under the
page's Content-Security-Policy and lists the operations."""

from app.web.api_docs import SWAGGER_SCRIPTS
from e2e.conftest import screenshot


def test_swagger_page_lists_the_operations(page, live_server):
    errors, refused, loaded = [], [], {}
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None,
    )
    page.on("response", lambda r: loaded.__setitem__(r.url.rsplit("/", 1)[-1], r.status))
    for path in ("/schema/swagger", "/schema"):
        answer = page.goto(live_server.url + path)
        assert answer is not None
        csp = answer.headers["content-security-policy"]
        scripts = " ".join(live_server.url + src for src in SWAGGER_SCRIPTS)
        assert f"script-src {scripts};" in csp and "unsafe" not in csp  # exactly those files
        booking = page.locator(".opblock-post", has_text="/api/appointments").first
        booking.wait_for()
        assert "POST" in booking.inner_text() and "/api/appointments" in booking.inner_text()
        assert page.locator(".opblock").count() > 30  # every operation, not a blank page
    assert loaded.get("swagger-ui-bundle.js") == 200 and loaded.get("api-docs.js") == 200
    assert errors == [] and refused == []
    assert screenshot(page, "api-docs").stat().st_size > 0
