"""The home page in a real browser: served, styled, htmx and its ws extension loaded."""

from e2e.conftest import screenshot


def test_home_page_runs_htmx(page, live_server):
    errors, scripts = [], {}
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("response", lambda r: scripts.__setitem__(r.url.rsplit("/", 1)[-1], r.status))
    page.goto(live_server.url + "/")
    assert page.locator("h1").inner_text() == "Book a doctor in a minute"
    page.wait_for_function("() => window.htmx !== undefined")
    assert page.evaluate("window.htmx.version").startswith("2.")
    assert scripts.get("htmx-ext-ws-2.0.4.min.js") == 200
    assert errors == []
    assert screenshot(page, "home").stat().st_size > 0
