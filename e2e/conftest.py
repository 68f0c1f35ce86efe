"""Browser fixtures: a headless system Chromium driven by Playwright, and the SAQ worker
beside the live server ("real server + worker")."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from e2e.browser import chromium_path
from tests.processes import start_process, stop_process

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


class Worker:
    """`medbook worker` in its own process, with the live server's environment (the same
    database, Redis and secret); ready once it has run a job enqueued just for that."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = {**os.environ, **(env or {})}
        ARTIFACTS.mkdir(exist_ok=True)
        self.log = ARTIFACTS / f"worker-{os.getpid()}-{time.monotonic_ns()}.log"
        with self.log.open("w") as log:
            self.process = start_process(
                [sys.executable, "-m", "app.cli", "-v", "worker"],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=self.env,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float = 30) -> None:
        import asyncio
        import threading

        from app.redis import sync_redis_from_url
        from app.settings import load_settings
        from tasks.housekeeping import HEARTBEAT_KEY
        from tasks.queue import create_queue

        client = sync_redis_from_url(self.env["REDIS_URL"])  # a Sentinel URL too
        client.delete(HEARTBEAT_KEY)

        async def enqueue() -> None:
            queue = create_queue(load_settings(self.env))
            await queue.connect()
            try:
                await queue.enqueue("heartbeat")
            finally:
                await queue.disconnect()

        # In a thread: the test session may already run an event loop (pytest-asyncio).
        thread = threading.Thread(target=lambda: asyncio.run(enqueue()))
        thread.start()
        thread.join()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"worker exited; see {self.log}:\n{self.log.read_text()}")
                if client.get(HEARTBEAT_KEY):
                    return
                time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"worker ran no job in {timeout}s; see {self.log}")

    def stop(self) -> None:
        stop_process(self.process)


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class _Kept:
    """The job worker and the Chromium the browser test modules of this process share:
    started by the first module that needs them and kept while the process runs browser
    tests, not started again for every module (each start is a new Python process that
    imports the app, or a browser and Playwright's driver: seconds of CPU each, see
    docs/testing.md). Stopped before any test outside e2e/ runs (conftest.py's
    pytest_runtest_setup; the worker also before a browser test that has none beside it),
    and at the session's end: a job worker left running would take an integration test's
    jobs and send its pending messages, and while the sync Playwright API is started the
    main thread counts as running an event loop, under which no async test can run. One
    that has died is started again."""

    def __init__(self) -> None:
        self.worker: Worker | None = None
        self.playwright = None
        self.chromium = None

    def started_worker(self) -> Worker:
        if self.worker is not None and self.worker.process.poll() is not None:
            self.worker = None  # it died: a new one
        if self.worker is None:
            # No SMTP or SMS provider here: messages land in the dev mailbox, where a test
            # reads the e-mail a person would get (e2e/test_day_at_the_clinic.py's reset link).
            self.worker = Worker(env={"NOTIFY_DEV_MAILBOX": "1"})
        return self.worker

    def started_chromium(self):
        if self.chromium is not None and not self.chromium.is_connected():
            self.stop_chromium()
        if self.chromium is None:
            path = chromium_path()
            assert path, "no Chromium: run `python e2e/browser.py --ensure` (make test does)"
            self.playwright = sync_playwright().start()
            try:
                self.chromium = self.playwright.chromium.launch(
                    executable_path=path, args=CHROMIUM_ARGS
                )
            except BaseException:
                self.stop_chromium()
                raise
        return self.chromium

    def stop_chromium(self) -> None:
        chromium, self.chromium = self.chromium, None
        playwright, self.playwright = self.playwright, None
        try:
            if chromium is not None and chromium.is_connected():
                chromium.close()
        finally:
            if playwright is not None:
                playwright.stop()

    def stop_worker(self) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.stop()

    def stop(self) -> None:
        try:
            self.stop_chromium()
        finally:
            self.stop_worker()


_kept = _Kept()


def stop_kept(item: pytest.Item | None = None) -> None:
    """Before `item` (None: at the session's end): stop the shared Chromium unless it is a
    browser test, and the shared job worker unless it runs beside this one (see _Kept)."""
    if item is None or not item.nodeid.startswith("e2e/"):
        _kept.stop()
    elif "worker" not in getattr(item, "fixturenames", ()):
        _kept.stop_worker()  # a browser test with no worker beside it had none before


@pytest.fixture(scope="module")
def worker(settings) -> Worker:
    """The job worker beside the live server, shared by consecutive browser modules."""
    return _kept.started_worker()


@pytest.fixture(scope="module")
def live_server(live_server, worker):
    """The root conftest's server, with a worker running beside it for every browser test."""
    return live_server


@pytest.fixture(scope="module")
def chromium() -> Iterator:
    """Chromium under Playwright, shared by consecutive browser modules (see _Kept); every
    context a module leaves open is closed at its end."""
    chromium = _kept.started_chromium()
    yield chromium
    if chromium.is_connected():
        for context in chromium.contexts:
            context.close()


@pytest.fixture
def browser(chromium, request, failed):
    """The run's Chromium; every context a test opens in it is closed after the test. A
    failed test first prints what each of its pages showed (see `describe_pages`)."""
    yield chromium
    try:
        if failed():
            print(describe_pages(chromium, request.node.name))
    finally:
        for context in chromium.contexts:
            context.close()


def describe_pages(chromium, test_name: str, limit: int = 4000) -> str:
    """Each open page's address, live-socket counts and main content (the first `limit`
    characters), with a screenshot in test-artifacts/failed/: what a failure in CI, where
    nothing else is kept, needs to be understood."""
    folder = ARTIFACTS / "failed"
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    pages = [page for context in chromium.contexts for page in context.pages]
    for number, page in enumerate(pages):
        try:
            shot = folder / f"{test_name}-{number}.png"
            page.screenshot(path=str(shot), full_page=True, caret="initial", timeout=5000)
            counts = page.evaluate("[window.__live, window.__offers]")
            main = page.evaluate("(document.querySelector('main') || document.body).outerHTML")
            lines.append(f"page {number}: {page.url} live/offers={counts} screenshot={shot}")
            lines.append(main[:limit])
        except Exception as exc:  # a page that died: say so, keep describing the others
            lines.append(f"page {number}: {page.url} not described: {exc!r}")
    return "\n".join(lines)


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    yield page
    context.close()


# Counts the page's live-socket events (htmx-ext-ws), so a test waits on them, not on time.
# The page's own live socket counts in window.__live; the offer banner every patient page
# carries (#offer-live) in window.__offers, so waiting for one never passes on the other's.
_COUNT_LIVE_EVENTS = """
window.__live = {opens: 0, closes: 0, messages: 0};
window.__offers = {opens: 0, closes: 0, messages: 0};
const __count = (name) => (e) => {
  const banner = e.target.closest && e.target.closest("#offer-live");
  (banner ? window.__offers : window.__live)[name]++;
};
document.addEventListener("htmx:wsOpen", __count("opens"));
document.addEventListener("htmx:wsClose", __count("closes"));
document.addEventListener("htmx:wsAfterMessage", __count("messages"));
"""
LIVE_EVENT_WAIT_MS = 30_000  # a deadline, not a speed check (a loaded 2-core machine)


def live_context(browser, **context_options):
    """A fresh browser context whose pages' live-socket events `wait_for_live` sees."""
    context = browser.new_context(**context_options)
    context.add_init_script(_COUNT_LIVE_EVENTS)
    return context


def live_page(browser, **context_options):
    """A page of a fresh browser context whose live-socket events `wait_for_live` sees."""
    return live_context(browser, **context_options).new_page()


def wait_for_live(page, event: str = "messages", count: int = 1, socket: str = "live") -> None:
    """Until the page's live socket (`socket="offers"`: the patient's offer banner) has had
    `count` of `event` (opens, closes, messages) since the page loaded. The server sends
    its first message (the whole view) only once Redis has confirmed the socket's
    subscriptions: from then on no event is missed."""
    # A function, not an expression: polling an expression needs eval, which the CSP bars.
    page.wait_for_function(
        "([socket, event, count]) => window['__' + socket] !== undefined"
        " && window['__' + socket][event] >= count",
        arg=[socket, event, count],
        timeout=LIVE_EVENT_WAIT_MS,
    )


def mark_document(page) -> None:
    """Mark the loaded document; `same_document` is False after any reload or navigation."""
    page.evaluate("window.__sameDocument = true")


def same_document(page) -> bool:
    return page.evaluate("window.__sameDocument === true")


def report_live_time(record_property, what: str, started: float) -> float:
    """Note how long a live change took to show (printed at the end of the run). The
    one-second promise is bench/websocket_bench.py's to check, on a quiet machine."""
    seconds = time.monotonic() - started
    record_property(f"live update: {what}", f"{seconds:.2f} s")
    return seconds


def pytest_terminal_summary(terminalreporter) -> None:
    lines = [
        f"{report.nodeid.split('::')[-1]}: {name.removeprefix('live update: ')} {value}"
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
        if name.startswith("live update: ")
    ]
    if lines:
        terminalreporter.write_sep("-", "time from a change to its live update in a browser")
        for line in lines:
            terminalreporter.write_line(line)


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    # caret="initial": hiding the caret leaves style="" on inputs, which htmx would then
    # copy onto swapped-in elements and the CSP (no inline style) refuses.
    page.screenshot(path=str(path), full_page=True, caret="initial")
    return path
