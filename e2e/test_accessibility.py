"""WCAG 2.1 AA in a real browser, in English and in German: axe-core (axe-playwright-python)
over every page of every role finds no serious or critical violation. Each page's counts
(all impacts) are written to test-artifacts/axe-<language>.jsonl; docs/accessibility.md
holds the figures. The pages are signed in once per role and language (storage state),
then each page gets a fresh tab that starts as a fresh context's would (that state's
cookies, no local or session storage), so one page's state never leaks into another's
result. The language is chosen as a person chooses it: the browser's Accept-Language
(its locale) for a visitor, the header's switcher for the signed-in (a cookie, and a
patient's saved preference, which outranks Accept-Language)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, CDPSession, Page, Route, expect

from app import i18n
from conftest import LiveServer
from e2e.conftest import ARTIFACTS, ROOT, live_context, screenshot, wait_for_live
from e2e.test_journeys import Api, past_appointment, sql
from e2e.test_live import fresh_world, sign_in
from tests.integration.world import BERLIN, World, at, day_after_tomorrow

# The languages every page is checked in (the context's locale sets Accept-Language).
LANGUAGES = ["en", "de"]

# Every rule axe runs by default: WCAG 2.0/2.1 A and AA (the bar the issue sets) and
# axe's best practices (landmarks, heading order, regions). No rule is disabled.
AXE_OPTIONS = {"resultTypes": ["violations", "incomplete"]}
FAILING_IMPACTS = {"serious", "critical"}
# axe is injected with page.evaluate (the DevTools protocol), which the page's CSP
# (`script-src 'self'`) does not govern: the pages are checked under their real CSP, so
# no context needs bypass_csp.
AXE = Axe()

ROLES = {
    "patient": "p0@t.test",
    "desk": "desk@t.test",
    "doctor": "doc@t.test",
    "admin": "admin@t.test",
}
# A patient's saved language outranks the browser's, and pages of both languages run at
# once: each language has its own patient (patient 1 chooses German in the header), with
# the same kind of bookings, wish and past visit.
PATIENTS = {"en": 0, "de": 1}
BOOKED_HOURS = {"en": 10, "de": 14}


def _t(language: str, message: str) -> str:
    """`message` as the catalogue of `language` has it (what the page shows)."""
    return i18n.translations(language).gettext(message)


@dataclass
class Site:
    server: LiveServer
    world: World
    day: dt.date
    sessions: dict[tuple[str, str], Any]  # (role, language) -> Playwright storage state


def _email(role: str, language: str) -> str:
    return f"p{PATIENTS[language]}@t.test" if role == "patient" else ROLES[role]


def _signed_in(chromium: Browser, server: LiveServer, email: str, language: str) -> Any:
    """A storage state of `email` signed in, the page switched to `language` with the
    header's switcher (saved for a patient, a cookie for everyone)."""
    context = chromium.new_context(locale="en-US")
    try:
        page = context.new_page()
        sign_in(page, server, email, "/me")
        page.wait_for_url(f"{server.url}/me")  # ("**/me*" matches /login?next=/me too)
        if language != i18n.SOURCE_LANGUAGE:
            page.locator("#language-choice").select_option(language)
            page.locator(".language-switcher button[type=submit]").click()
            expect(page.locator("html")).to_have_attribute("lang", language)
        return context.storage_state()
    finally:
        context.close()


@pytest.fixture(scope="module")
def site(chromium, live_server, settings) -> Iterator[Site]:
    """One world for the module: for each language's patient an appointment two days
    ahead (the lists, the board and the patient search show it), one today (the doctor's
    day), an hour of the doctor's leave that day and a waitlist wish; a signed-in storage
    state per role and language."""
    world = fresh_world(settings)
    day = day_after_tomorrow()
    today = dt.datetime.now(BERLIN).date()
    for language, patient in PATIENTS.items():
        api = Api(live_server, f"p{patient}@t.test")
        try:
            api.book(world.doctor_id, at(day, BOOKED_HOURS[language]))
            joined = api.http.post(
                "/api/waitlist",
                json={
                    "doctor_id": world.doctor_id,
                    "from": day.isoformat(),
                    "to": day.isoformat(),
                },
            )
            assert joined.status_code in (200, 201), joined.text
        finally:
            api.close()
        past_appointment(settings, world, patient, at(today, patient))
    sql(  # an hour of leave: slots that say "doctor away", board rows that are not bookable
        settings,
        "INSERT INTO schedule_exceptions (clinic_id, doctor_id, kind, starts_at, ends_at) "
        "VALUES (:c, :d, 'leave', :s, :e)",
        c=world.clinic_id,
        d=world.doctor_id,
        s=at(day, 15),
        e=at(day, 16),
    )
    sessions = {
        (role, language): _signed_in(chromium, live_server, _email(role, language), language)
        for role in ROLES
        for language in LANGUAGES
    }
    yield Site(live_server, world, day, sessions)


# Run in every document of a check's tab before its own scripts: it starts with no local
# or session storage, as in a fresh context (htmx keeps its history cache there).
_NO_STORAGE = "try { localStorage.clear(); sessionStorage.clear(); } catch (e) {}"


class Tabs:
    """A fresh tab for each check, in a browser context kept per role, language and window
    for the module, not a new context per check (which cost more browser CPU than a tab,
    docs/testing.md). What a context keeps between tabs is reset: its cookies to the
    role's signed-in state before each tab, local and session storage emptied in
    every document (_NO_STORAGE); its HTTP cache holds only /static/ (every other answer
    is no-store), and a tab's routes and sockets end with it."""

    def __init__(self, chromium: Browser, site: Site) -> None:
        self.chromium = chromium
        self.site = site
        self.contexts: dict[str, Any] = {}

    def open(self, role: str | None, language: str | None, **options: Any) -> Page:
        state = self.site.sessions[(role, language or "en")] if role else None
        if language is not None:
            options["locale"] = language
        key = json.dumps([role, options], sort_keys=True)
        context = self.contexts.get(key)
        if context is None:
            # What a fresh context would start with is its cookies: no local storage.
            assert state is None or not any(o.get("localStorage") for o in state["origins"])
            context = live_context(self.chromium, storage_state=state, **options)
            context.add_init_script(_NO_STORAGE)
            self.contexts[key] = context
        context.clear_cookies()
        if state is not None:
            context.add_cookies(state["cookies"])
        return context.new_page()

    def close(self) -> None:
        for context in self.contexts.values():
            context.close()
        self.contexts.clear()


@pytest.fixture(scope="module")
def tabs(chromium, site) -> Iterator[Tabs]:
    opened = Tabs(chromium, site)
    try:
        yield opened
    finally:
        opened.close()


def _slots(site: Site) -> str:
    return f"/doctors/{site.world.doctor_id}/slots?date={site.day.isoformat()}"


def _pick_a_slot(page: Page, site: Site, language: str) -> None:
    page.locator(f'.slot[data-slot-start="{at(site.day, 11).isoformat()}"]').click()
    confirm = _t(language, "Confirm booking")
    expect(page.get_by_role("button", name=confirm)).to_be_visible()


def _join_form(page: Page, site: Site, language: str) -> None:
    expect(page.locator("form[hx-post='/me/waitlist']")).to_be_visible()


def _live(page: Page, site: Site, language: str) -> None:
    wait_for_live(page)


def _desk_search(page: Page, site: Site, language: str) -> None:
    wait_for_live(page)
    page.get_by_label(_t(language, "Patient name")).fill("Patient")
    expect(page.locator("#patient-hits input[type=radio]").first).to_be_visible()


def _show_error_page(page: Page, site: Site) -> None:
    """The 503 page, as the app renders it at start-up (once per language; an outage
    cannot be caused from a browser), served from the site's origin so its stylesheet and
    CSP-free markup apply, in the language the browser's Accept-Language asks for."""
    from types import SimpleNamespace

    from jinja2 import Environment, FileSystemLoader, select_autoescape

    from app.web.admission import render_unavailable
    from app.web.outages import DOWN_PAGE, DOWN_RETRY_AFTER_SECONDS

    loader = FileSystemLoader(ROOT / "templates")
    templates = Environment(loader=loader, autoescape=select_autoescape())
    i18n.install_jinja(templates)
    app = SimpleNamespace(template_engine=templates)
    pages = render_unavailable(app, DOWN_PAGE, DOWN_RETRY_AFTER_SECONDS)

    def serve(route: Route) -> None:
        asked = i18n.preferred(None, route.request.all_headers().get("accept-language"))
        body = pages[asked or i18n.SOURCE_LANGUAGE]
        route.fulfill(status=503, body=body, content_type="text/html")

    page.route(f"{site.server.url}/unavailable-page", serve)


@dataclass(frozen=True)
class Check:
    name: str
    role: str | None
    path: Callable[[Site], str]
    ready: Callable[[Page, Site, str], None] | None = None  # (page, site, language)
    before: Callable[[Page, Site], None] | None = None  # before the page loads


PAGES = [
    Check("home", None, lambda s: "/"),
    Check("login", None, lambda s: "/login"),
    Check("register", None, lambda s: "/register"),
    Check("password reset", None, lambda s: "/password-reset"),
    Check("slots (anonymous)", None, _slots, _live),
    Check(
        "error page (503)",
        None,
        lambda s: "/unavailable-page",
        before=_show_error_page,
    ),
    Check("find a doctor", "patient", lambda s: "/doctors"),
    Check("slots", "patient", _slots, _live),
    Check(
        "slot picked",
        "patient",
        _slots,
        lambda p, s, lang: (_live(p, s, lang), _pick_a_slot(p, s, lang)),
    ),
    Check("my appointments + waitlist", "patient", lambda s: "/me/appointments", _join_form),
    Check("reminders", "patient", lambda s: "/me/notifications"),
    Check("me", "patient", lambda s: "/me"),
    Check("profile", "patient", lambda s: "/me/profile"),
    Check("my records", "patient", lambda s: "/me/records"),
    Check("board", "desk", lambda s: f"/desk?date={s.day.isoformat()}", _live),
    Check("board patient search", "desk", lambda s: f"/desk?date={s.day}", _desk_search),
    Check("desk waitlist", "desk", lambda s: "/desk/waitlist"),
    Check("doctor's day", "doctor", lambda s: "/doctor/day", _live),
    Check("records", "doctor", lambda s: f"/patients/{s.world.patients[0]}/records"),
    Check("clinics", "admin", lambda s: "/admin/clinics"),
    Check("doctors", "admin", lambda s: "/admin/doctors"),
    Check("schedule", "admin", lambda s: f"/admin/doctors/{s.world.doctor_id}/schedule"),
    Check("visit types", "admin", lambda s: f"/admin/doctors/{s.world.doctor_id}/visit-types"),
    Check("users", "admin", lambda s: "/admin/users"),
    Check("audit", "admin", lambda s: "/admin/audit"),
    Check("analytics", "admin", lambda s: "/analytics"),
    Check("exports", "admin", lambda s: "/analytics/exports"),
    Check("undelivered", "admin", lambda s: "/admin/notifications"),
]


def _open(tabs: Tabs, site: Site, check: Check, language: str, **options: Any) -> Page:
    """A fresh tab showing `check`'s page in `language`, ready to be judged (close it).
    The page must really be in that language (`<html lang>`, which screen readers
    pronounce by), or the German run would check English pages."""
    page = tabs.open(check.role, language, **options)
    try:
        if check.before:
            check.before(page, site)
        page.goto(site.server.url + check.path(site))
        if check.ready:
            check.ready(page, site, language)
        expect(page.locator("html")).to_have_attribute("lang", language)
    except BaseException:
        page.close()
        raise
    return page


def _record(language: str, page: str, counts: dict[str, Any]) -> None:
    """Add one page's counts to the run's figures: a line each, appended (xdist workers
    write to the same file; one short append is not interleaved)."""
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / f"axe-{language}.jsonl").open("a") as figures:
        figures.write(json.dumps({"page": page, **counts}, sort_keys=True) + "\n")


def _describe(violations: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"{v['impact']}: {v['id']} ({v['help']}) at "
        + "; ".join(" ".join(n["target"]) for n in v["nodes"][:5])
        for v in violations
    )


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("check", PAGES, ids=[c.name for c in PAGES])
def test_no_serious_or_critical_axe_violation(
    tabs: Tabs, site: Site, check: Check, language: str
) -> None:
    page = _open(tabs, site, check, language)
    try:
        results = AXE.run(page, options=AXE_OPTIONS).response
        if check.name in REFLOW_NAMES:
            _measure_reflows(page, check, language)
    finally:
        page.close()
    violations = results["violations"]
    counts: dict[str, Any] = {
        "violations": len(violations),
        "nodes": sum(len(v["nodes"]) for v in violations),
        "rules": sorted(f"{v['id']} ({v['impact']})" for v in violations),
        # What axe could not decide alone (e.g. contrast over a gradient): for a person.
        "needs review": sorted(
            f"{v['id']} at " + "; ".join(" ".join(n["target"]) for n in v["nodes"][:3])
            for v in results["incomplete"]
        ),
        "rules run": len(results["passes"]) + len(violations) + len(results["incomplete"]),
    }
    for impact in ("minor", "moderate", "serious", "critical"):
        counts[impact] = sum(1 for v in violations if v["impact"] == impact)
    _record(language, check.name, counts)
    failing = [v for v in violations if v["impact"] in FAILING_IMPACTS]
    assert failing == [], f"{check.name}:\n{_describe(failing)}"


def test_axe_finds_a_missing_label(chromium: Browser, site: Site) -> None:
    """The check itself can fail: an input without a label is a critical violation."""
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(site.server.url + "/login")
        # The form's own label (the header's first is the language switcher's).
        page.evaluate("document.querySelector('main label').remove()")
        violations = AXE.run(page, options=AXE_OPTIONS).response["violations"]
    finally:
        context.close()
    assert "label" in {v["id"] for v in violations}


_NO_STYLES = "document.querySelectorAll('link[rel=stylesheet]').forEach(l => l.remove())"


def _page_named(name: str) -> Check:
    return next(c for c in PAGES if c.name == name)


@pytest.mark.parametrize("language", LANGUAGES)
def test_colour_is_never_the_only_carrier_of_a_state(tabs: Tabs, site: Site, language: str) -> None:
    """WCAG 1.4.1: a taken time differs from a free one, and an appointment shows its
    status, in words of the page's language, shown on screen and in the accessible name;
    with the stylesheet gone (no colour, no strike-through, no dashed border) the words
    still tell them apart."""
    taken_at = at(site.day, BOOKED_HOURS[language]).isoformat()
    free_at = at(site.day, 11).isoformat()
    page = _open(tabs, site, _page_named("slots"), language)
    try:
        taken = page.locator(f'#live .slot[data-slot-start="{taken_at}"]')
        free = page.locator(f'#live .slot[data-slot-start="{free_at}"]')
        word = _t(language, "taken")
        expect(taken.locator(".why")).to_be_visible()
        expect(taken.locator(".why")).to_have_text(word)
        taken_label = taken.get_attribute("data-label")
        free_label = free.get_attribute("data-label")
        expect(taken).to_have_accessible_name(f"{taken_label} {word}")
        page.evaluate(_NO_STYLES)
        assert taken.inner_text().split() == [taken_label, *word.split()]
        assert free.inner_text().split() == [free_label]
    finally:
        page.close()
    page = _open(tabs, site, _page_named("my appointments + waitlist"), language)
    try:
        page.evaluate(_NO_STYLES)
        booked = page.locator("li[data-status=booked] .status").first
        expect(booked).to_be_visible()
        expect(booked).to_have_text(_t(language, "booked"))
    finally:
        page.close()


# WCAG 1.4.10 reflow: 320 CSS px is a 1280 px window at 400 % zoom; 640 px at 200 %
# (rendered at twice the pixel density, as a zoomed page is).
WIDTHS = {"320px": (320, 1), "200pct": (640, 2)}
REFLOW_NAMES = {
    "home",
    "login",
    "slots (anonymous)",
    "error page (503)",
    "find a doctor",
    "slot picked",
    "my appointments + waitlist",
    "reminders",
    "board",
    "desk waitlist",
    "doctor's day",
    "records",
    "clinics",
    "schedule",
    "users",
    "audit",
    "analytics",
}
REFLOW_PAGES = [c for c in PAGES if c.name in REFLOW_NAMES]


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("width", WIDTHS, ids=list(WIDTHS))
@pytest.mark.parametrize("check", REFLOW_PAGES, ids=[c.name for c in REFLOW_PAGES])
def test_no_horizontal_scrolling_at_320_px_and_200_percent(
    tabs: Tabs, site: Site, check: Check, width: str, language: str
) -> None:
    """Wide content (the board's columns, admin tables) scrolls inside its own box; the
    page itself never does. A screenshot of each goes to test-artifacts/."""
    sizes = _MEASURED.pop((check.name, width, language), None)
    if sizes is None:  # not measured in the axe check's tab: in a tab of its own
        pixels, scale = WIDTHS[width]
        page = _open(
            tabs,
            site,
            check,
            language,
            viewport={"width": pixels, "height": 800},
            device_scale_factor=scale,
        )
        try:
            sizes = _reflow(page, check, width, language)
        finally:
            page.close()
    # Measured at the window and density the width names (not the axe check's own).
    assert (sizes["window"], sizes["density"]) == WIDTHS[width], sizes
    assert sizes["scroll"] <= sizes["client"], sizes


def _reflow(
    page: Page, check: Check, width: str, language: str, session: CDPSession | None = None
) -> dict[str, Any]:
    """How wide the page is against its window, and a screenshot of it (through `session`
    where that session set the window: Playwright's own capture of a full page would put
    its own device metrics back)."""
    sizes = page.evaluate(
        """() => ({scroll: document.documentElement.scrollWidth,
                   client: document.documentElement.clientWidth,
                   window: innerWidth,
                   density: devicePixelRatio,
                   wide: [...document.querySelectorAll('body *')]
                     .filter(e => e.getBoundingClientRect().right > innerWidth + 1)
                     .slice(0, 5).map(e => e.tagName + '.' + e.className)})"""
    )
    name = f"reflow-{language}-{width}-{check.name.replace(' ', '-')}"
    if session is None:
        screenshot(page, name)
    else:
        size = session.send("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = session.send(
            "Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True}
        )
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))
    return sizes


# Both reflows of a page the axe check already has open and ready: the same tab,
# resized to each reflow check's window, measured there, so the reflow test does not load
# the page again (a page load is most of a check's browser CPU, docs/testing.md). 320 px
# is the axe check's own density (1): a resize. 200 % renders at twice the density, which
# Playwright sets only for a new context: the tab gets DevTools' device-metrics override
# instead (640 px at a device pixel ratio of 2, as Playwright's own context option sets
# it), and the figures say the window and density the page saw, which the reflow test
# asserts. A reflow test that finds no figures (run alone, its axe check on another xdist
# worker, or a measurement that failed) loads its own tab as before.
_MEASURED: dict[tuple[str, str, str], dict[str, Any]] = {}


def _measure_reflows(page: Page, check: Check, language: str) -> None:
    session = None
    try:
        for width, (pixels, scale) in WIDTHS.items():
            if scale == 1:
                page.set_viewport_size({"width": pixels, "height": 800})
            else:
                session = page.context.new_cdp_session(page)
                metrics = {"width": pixels, "height": 800, "deviceScaleFactor": scale}
                session.send("Emulation.setDeviceMetricsOverride", {**metrics, "mobile": False})
            _MEASURED[(check.name, width, language)] = _reflow(
                page, check, width, language, session
            )
    except Exception:  # the axe check's result stands; the reflow tests load their own tabs
        for width in WIDTHS:
            _MEASURED.pop((check.name, width, language), None)
    finally:
        if session is not None:
            session.detach()


# Where a state is shown, the words that say it (WCAG 1.4.1: colour is never the only
# carrier). Each selector must match at least once on its page, so the check cannot pass
# by finding nothing.
STATE_WORDS = {
    "slots": {
        '.slot[data-state="taken"]': "taken",
        '.slot[data-state="away"]': "doctor away",
    },
    "my appointments + waitlist": {'li[data-status="booked"]': "booked"},
    "board": {
        '.card[data-status="booked"]': "booked",
        ".row.closed": "not bookable",
    },
    "doctor's day": {'.card[data-status="booked"]': "booked"},
}


@pytest.mark.parametrize("name", STATE_WORDS)
def test_a_state_is_said_in_words_not_only_in_colour(tabs: Tabs, site: Site, name: str) -> None:
    """In English; test_colour_is_never_the_only_carrier_of_a_state checks the slot page's
    words in both languages."""
    [check] = [c for c in PAGES if c.name == name]
    page = tabs.open(check.role, None)  # the browser's own locale (en-US), signed in in English
    try:
        page.goto(site.server.url + check.path(site))
        if check.ready:
            check.ready(page, site, "en")
        for selector, words in STATE_WORDS[name].items():
            shown = page.locator(selector)
            assert shown.count() > 0, f"{name}: nothing matches {selector}"
            for text in shown.all_inner_texts():
                assert words in text, f"{name}: {selector} shows {text!r}, not {words!r}"
    finally:
        page.close()
