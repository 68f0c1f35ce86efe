"""The search for processes a run left behind (tests/processes.py) takes the run's own and
nothing else, even when a group id the run once made now names a stranger's group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil

from tests import processes

MARK = ("MEDBOOK_TEST_PROCESSES_MARK", "this-run")


def _orphan(env: dict[str, str]) -> int:
    """The pid of a process in a session (so a group) of its own that is no descendant of
    this one: a shell starts it in the background and exits, as a daemon is started."""
    sleeper = f"{sys.executable} -c 'import time; time.sleep(60)'"
    shell = subprocess.run(
        ["sh", "-c", f"setsid {sleeper} >/dev/null 2>&1 & echo $!"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(shell.stdout)


def test_a_reused_group_id_does_not_make_a_stranger_s_process_ours():
    """A group id the run made (recorded here by hand, as a test server long gone once had
    that pid) that now names another group: its members are not the run's unless they carry
    the run's mark; without a mark no group id is trusted."""
    stranger = _orphan({k: v for k, v in os.environ.items() if k != MARK[0]})
    ours = _orphan({**os.environ, MARK[0]: MARK[1]})
    try:
        assert {stranger, ours}.isdisjoint(processes.descendants())
        assert os.getpgid(stranger) == stranger and os.getpgid(ours) == ours
        processes._groups.update({stranger, ours})
        found = {p.pid for p in processes.left_behind([], spared=set(), mark=MARK)}
        assert ours in found
        assert stranger not in found
        unmarked = {p.pid for p in processes.left_behind([], spared=set(), mark=None)}
        assert {stranger, ours}.isdisjoint(unmarked)
    finally:
        processes._groups.difference_update({stranger, ours})
        for pid in (stranger, ours):
            try:
                os.kill(pid, signal.SIGKILL)
                psutil.Process(pid).wait(5)
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
