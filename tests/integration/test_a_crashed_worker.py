"""A test run survives a crashed pytest-xdist worker (a segfault, os._exit, the OOM
killer): the crashed test is reported as failed, every other test still runs, and what
the crashed worker's tests had started is stopped. A real `pytest` run with this
repository's conftest and `make test`'s scheduler, over a few tests written for it."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import psutil

from tests.processes import run_process

ROOT = Path(__file__).resolve().parents[2]
# make test's scheduler: the one this run must survive a crash under.
DIST = re.search(r"--dist (\w+)", (ROOT / "Makefile").read_text())

CRASHING = """
import os, subprocess, sys
from pathlib import Path

from tests.processes import start_process


def test_kills_its_worker():
    child = start_process([sys.executable, "-c", "import time; time.sleep(600)"])
    Path(os.environ["CHILD_PID_FILE"]).write_text(str(child.pid))
    os._exit(9)  # as a segfault or the OOM killer: no teardown, no report
"""

OTHERS = """
import os

import pytest


@pytest.mark.parametrize("n", range({count}))
def test_still_runs(n):
    assert os.environ["DATABASE_URL"].endswith(f"_{{os.environ['PYTEST_XDIST_WORKER']}}")
"""


def test_a_crashed_worker_fails_its_test_and_the_run_goes_on(tmp_path):
    assert DIST, "the Makefile names no --dist"
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_a_crash.py").write_text(CRASHING)
    for name in ("b", "c"):
        (suite / f"test_{name}_others.py").write_text(OTHERS.format(count=6))
    child_pid_file = tmp_path / "child.pid"

    result = run_process(
        [
            sys.executable,
            "-m",
            "pytest",
            "-n",
            "2",
            "--dist",
            DIST.group(1),
            "-p",
            "conftest",  # this repository's: services, claims, clean-up
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "--rootdir",
            str(suite),
            str(suite),
        ],
        cwd=suite,
        env={**os.environ, "PYTHONPATH": str(ROOT), "CHILD_PID_FILE": str(child_pid_file)},
        timeout=240,
    )
    out = result.stdout + result.stderr
    assert "INTERNALERROR" not in out, out
    assert result.returncode == 1, out  # tests failed: not interrupted, not an internal error
    assert re.search(r"worker 'gw\d+' crashed while running '.*test_kills_its_worker'", out), out
    assert re.search(r"\b1 failed, 12 passed\b", out), out
    assert "replacing crashed worker" in out
    # The crashed test's own child was stopped (and named), not left running.
    child = int(child_pid_file.read_text())
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie"
    assert re.search(rf"{child}: .*time\.sleep\(600\).*\(of crashed worker gw\d+\)", out), out
