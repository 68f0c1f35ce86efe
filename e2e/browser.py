"""Find a Chromium for Playwright, installing one when none is found.

`python e2e/browser.py --ensure` (run by `make test`) looks for MEDBOOK_CHROMIUM, then a
system Chromium, then Playwright's own download; failing all three it installs one: with
apt-get when running as root on Debian/Ubuntu, else with `playwright install chromium`.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    """The Chromium executable to drive, or None."""
    explicit = os.environ.get("MEDBOOK_CHROMIUM")
    if explicit and os.access(explicit, os.X_OK):
        return explicit
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    cache = os.path.expanduser("~/.cache/ms-playwright/chromium-*/chrome-linux*/chrome")
    downloaded = sorted(glob.glob(cache))
    return downloaded[-1] if downloaded else None


def install() -> None:
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)
    else:
        subprocess.run([sys.executable, "-m", "playwright", "install", "chromium"], check=True)


def main() -> int:
    path = chromium_path()
    if path is None and "--ensure" in sys.argv:
        print("no Chromium found: installing one for the browser tests", flush=True)
        install()
        path = chromium_path()
    if path is None:
        print("no Chromium found; set MEDBOOK_CHROMIUM to its path", file=sys.stderr)
        return 1
    print(f"browser tests use {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
