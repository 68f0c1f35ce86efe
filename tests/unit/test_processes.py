"""The search for processes a run left behind (tests/processes.py) takes the run's own and
nothing else, even when a group id the run once made now names a stranger's group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from unittest import mock

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
        _forget_and_kill(stranger, ours)


def test_stopping_a_reaped_process_spares_a_stranger_s_group_of_its_old_id():
    """Once a test's process is reaped, its group id may be given to someone else's group
    (pids wrap; a second run beside this one starts servers in groups of their own):
    stopping it again signals only the members that carry this run's mark."""
    stranger = _orphan({k: v for k, v in os.environ.items() if k != processes.RUN_MARK})
    ours = _orphan({**os.environ, processes.RUN_MARK: "this-run"})
    done = [processes.start_process([sys.executable, "-c", "pass"]) for _ in range(2)]
    try:
        for process, now_named in zip(done, (stranger, ours), strict=True):
            process.wait()  # reaped: from here its id is free for anyone to take
            processes._groups.discard(process.pid)
            process.pid = now_named  # as if the system had given the id to that group
            processes._groups.add(now_named)
        with mock.patch.dict(os.environ, {processes.RUN_MARK: "this-run"}):
            for process in done:
                processes.stop_process(process, grace=0)
        assert _ended(ours, within=5)
        assert not _ended(stranger, within=1)  # a kill would show at once; 1 s to be plain
    finally:
        _forget_and_kill(stranger, ours)


def _ended(pid: int, within: float) -> bool:
    """Whether `pid` ends (gone, or a zombie nobody has reaped yet) within `within` s."""
    deadline = time.monotonic() + within
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _forget_and_kill(*pids: int) -> None:
    """A test's end: the group ids it recorded by hand forgotten, its orphans killed."""
    processes._groups.difference_update(pids)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            psutil.Process(pid).wait(5)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
