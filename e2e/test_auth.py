"""Sign-in in a real browser: register, sign out, sign in, see who you are; CSP holds."""

import uuid

from e2e.conftest import screenshot


def test_register_logout_login_shows_name_and_role(page, live_server):
    errors, csp_violations = [], []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: (
            csp_violations.append(msg.text) if "Content Security Policy" in msg.text else None
        ),
    )
    email = f"e2e-{uuid.uuid4().hex[:8]}@example.test"
    page.goto(live_server.url + "/register")
    page.get_by_label("Full name").fill("Erika Example")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("a long e2e password")
    page.get_by_label("Date of birth").fill("1985-06-15")
    page.get_by_role("button", name="Register").click()
    page.wait_for_url("**/me")
    assert page.locator("h1").inner_text() == "Erika Example"
    assert "patient" in page.locator(".whoami").inner_text()

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/login")
    assert page.get_by_role("link", name="Sign in").is_visible()

    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("wrong password here")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "the email or password is wrong"
    assert page.get_by_label("Email").input_value() == email  # kept what was typed

    page.get_by_label("Password").fill("a long e2e password")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(live_server.url + "/me/appointments")  # a patient's own start
    whoami = page.locator(".whoami").inner_text()
    assert "Erika Example" in whoami and "patient" in whoami
    page.wait_for_function("() => window.htmx !== undefined")
    assert errors == [] and csp_violations == []
    assert screenshot(page, "auth-signed-in").stat().st_size > 0
