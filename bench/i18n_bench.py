"""What the language layer adds to a cached availability fragment (issue 20).

A cached week of slots costs one Redis round trip and then the render of the week's seven
`patient/_day.html` blocks (what htmx and the live socket get); the language layer adds the
choice of language per request (LanguageMiddleware) and gettext and Babel inside that
render. This times, in one process with no server or network noise:

- `before`: the week rendered by the templates without i18n (`--before DIR`, e.g. the main
  branch's templates/ before issue 20: strftime, no gettext), for the baseline;
- `en` and `de`: the same week through the i18n templates, in English and in German;
- `negotiate`: choosing the language from a request's headers (a visitor's
  Accept-Language and cookies), what LanguageMiddleware does per request.

    PYTHONPATH=. .venv/bin/python bench/i18n_bench.py [--before /path/to/old/templates]

Figures in bench/README.md ("Languages").
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from app import i18n
from app.live.boards import DayView, SlotView
from app.settings import PROJECT_ROOT
from app.web.i18n import request_language

STATES = ("free", "taken", "free", "away", "free", "too_soon")


def week() -> list[DayView]:
    """Seven days of 24 half-hour slots (08:00-20:00), mixed states, as the cache gives."""
    first = dt.date(2027, 3, 29)
    days = []
    for offset in range(7):
        day = first + dt.timedelta(days=offset)
        slots = []
        for n in range(24):
            hour, minute = 8 + n // 2, 30 * (n % 2)
            start = f"{day.isoformat()}T{hour:02d}:{minute:02d}:00+02:00"
            slots.append(SlotView(start, start[11:16], STATES[n % len(STATES)]))
        days.append(DayView(7, day, slots))
    return days


def environment(directory: Path, with_i18n: bool) -> Environment:
    env = Environment(loader=FileSystemLoader(directory), autoescape=select_autoescape())
    if with_i18n:
        i18n.install_jinja(env)
    return env


def render_week(env: Environment, days: list[DayView]) -> str:
    template = env.get_template("patient/_day.html")
    return "".join(template.render(day=day, oob=True) for day in days)


def timed(fn, rounds: int) -> tuple[float, float]:
    """Median and p95 of `rounds` calls, in microseconds."""
    for _ in range(50):
        fn()
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, help="templates/ without i18n, for the baseline")
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    days = week()
    rows = []
    if args.before:
        old = environment(args.before, with_i18n=False)
        rows.append(
            ("week fragment, before (no i18n)", timed(lambda: render_week(old, days), args.rounds))
        )
    new = environment(PROJECT_ROOT / "templates", with_i18n=True)
    for language in ("en", "de"):

        def in_language(language: str = language) -> str:
            with i18n.use_language(language):
                return render_week(new, days)

        rows.append((f"week fragment, i18n, {language}", timed(in_language, args.rounds)))
    scope = {
        "headers": [
            (b"accept-language", b"de-DE,de;q=0.9,en-US;q=0.8,en;q=0.7"),
            (b"cookie", b"medbook_csrf=abc; medbook_session=def"),
        ]
    }
    rows.append(
        ("negotiate (per request)", timed(lambda: request_language(scope, "en"), args.rounds * 10))
    )
    print("| what | median µs | p95 µs |\n| --- | --- | --- |")
    for name, (median, p95) in rows:
        print(f"| {name} | {median:,.1f} | {p95:,.1f} |")


if __name__ == "__main__":
    main()
