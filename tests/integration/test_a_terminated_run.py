"""A test run stopped with SIGTERM (a cancelled CI job, `kill` of pytest) stops every
process it started: its xdist workers and what their tests started (here a child of a
test, in a process group of its own as tests/processes.py makes them), and drops its
databases. A real `pytest -n 2` with this repository's conftest and `make test`'s
scheduler, whose controller gets the SIGTERM while a test is running."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import asyncpg
import psutil

from tests import processes
from tests.integration.test_a_crashed_worker import DIST, ROOT
from tests.processes import start_process, stop_process

RUNNING = """
import os, sys, time
from pathlib import Path

from tests.processes import start_process


def test_runs_until_the_run_is_stopped(worker_id):
    child = start_process([sys.executable, "-c", "import time; time.sleep(600)"])
    Path(os.environ["STARTED_FOLDER"], worker_id).write_text(
        f"{child.pid} {os.getpid()} {os.environ['MEDBOOK_TEST_RUN']}"
    )
    time.sleep(600)
"""


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_sigterm_to_the_controller_stops_every_process_of_the_run(tmp_path, database_url):
    assert DIST, "the Makefile names no --dist"
    suite = tmp_path / "suite"
    suite.mkdir()
    for name in ("a", "b"):
        (suite / f"test_{name}_running.py").write_text(RUNNING)
    started = tmp_path / "started"
    started.mkdir()
    log = (tmp_path / "run.log").open("w")
    run = start_process(
        [
            *(sys.executable, "-m", "pytest", "-n", "2", "--dist", DIST.group(1)),
            *("-p", "conftest", "-p", "no:cacheprovider", "-p", "no:randomly"),
            *("--rootdir", str(suite), str(suite)),
        ],
        cwd=suite,
        env={**os.environ, "PYTHONPATH": str(ROOT), "STARTED_FOLDER": str(started)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    mark = ""
    try:
        # Both workers are inside a test, each with a child of its own running.
        _wait_for(lambda: len(list(started.iterdir())) == 2, 240, "test started on both workers")
        found = [path.read_text().split() for path in started.iterdir()]
        children = [int(child) for child, _, _ in found]
        workers = [int(worker) for _, worker, _ in found]
        mark = found[0][2]
        assert mark.split(":")[1] == str(run.pid)  # the mark is the run's own
        assert len(processes.marked("MEDBOOK_TEST_RUN", mark)) >= 4  # the workers, children

        os.kill(run.pid, signal.SIGTERM)  # the controller alone, as `kill` does
        assert run.wait(timeout=60) == -signal.SIGTERM

        assert all(_gone(pid) for pid in children + workers)
        assert processes.marked("MEDBOOK_TEST_RUN", mark) == []
        assert asyncio.run(_databases_of(database_url, run.pid)) == []
    finally:
        stop_process(run)
        processes.stop_marked("MEDBOOK_TEST_RUN", mark)  # when the run failed to
        log.close()


async def _databases_of(admin_url: str, pid: int) -> list[str]:
    conn = await asyncpg.connect(admin_url)
    try:
        rows = await conn.fetch(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
            f"medbook_test_{pid}_",
        )
    finally:
        await conn.close()
    return [row["datname"] for row in rows]
