"""Processes that tests start: each in a process group of its own, registered the moment it
starts, and stopped whole (the process and whatever it started) whatever the test's
outcome; and, at the end of a run, the search for any process left behind."""

from __future__ import annotations

import os
import select
import signal
import subprocess
from collections.abc import Iterable, Sequence
from contextlib import suppress
from typing import Any

import psutil

# Started by start_process and not yet stopped, oldest first.
_running: list[subprocess.Popen] = []
# The ids of the process groups start_process made (each one its leader's pid).
_groups: set[int] = set()


def start_process(args: Sequence[str], **popen: Any) -> subprocess.Popen:
    """`subprocess.Popen(args, **popen)` in a new session (so a process group of its own,
    away from the terminal's signals), registered at once for stop_process."""
    process = subprocess.Popen(args, start_new_session=True, **popen)
    _running.append(process)
    _groups.add(process.pid)
    return process


def run_process(
    args: Sequence[str], *, timeout: float, **popen: Any
) -> subprocess.CompletedProcess[str]:
    """`subprocess.run(args, capture_output=True, text=True, timeout=timeout)`, whose
    process group is stopped whole when it ends, times out or the test fails."""
    process = start_process(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    )
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        stop_process(process)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def stop_process(process: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM to the process's whole group, up to `grace` seconds for the process to
    end, then SIGKILL to whatever of the group is left; reaped either way."""
    try:
        if process.returncode is None:
            _signal_group(process, signal.SIGTERM)
            _wait_unreaped(process, grace)
        _signal_group(process, signal.SIGKILL)
        process.wait()
    finally:
        with suppress(ValueError):
            _running.remove(process)


def kill_process(process: subprocess.Popen) -> None:
    """SIGKILL to the process's whole group at once (a crash, or a server pulled away)."""
    stop_process(process, grace=0)


def running() -> frozenset[subprocess.Popen]:
    """The processes started and not stopped yet."""
    return frozenset(_running)


def stop_all_except(kept: frozenset[subprocess.Popen]) -> None:
    """Stop every running process not in `kept` (at a test's end: what it started)."""
    for process in reversed(_running):
        if process not in kept:
            stop_process(process)


# The environment variable the test run marks itself with (conftest.py sets it before any
# process starts, so every process a test starts inherits it).
RUN_MARK = "MEDBOOK_TEST_RUN"


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    # Until it is reaped, the leader's pid (its group's id) cannot be reused, so the whole
    # group is signalled. Once reaped, the id may already name a stranger's group (pids
    # wrap within a run here; a second test run beside this one makes groups too): then
    # only the members that carry this run's mark are signalled.
    with suppress(ProcessLookupError, PermissionError):
        if process.pid in _groups and process.returncode is None:
            os.killpg(process.pid, sig)
        elif process.pid in _groups:
            for member in _marked_members(process.pid):
                with suppress(psutil.Error):
                    member.send_signal(sig)
        elif process.returncode is None:
            process.send_signal(sig)


def _marked_members(pgid: int) -> list[psutil.Process]:
    """The live members of group `pgid` that carry this run's mark."""
    mark = (RUN_MARK, os.environ.get(RUN_MARK, ""))
    found = []
    for proc in psutil.process_iter():
        with suppress(OSError, psutil.Error):
            if os.getpgid(proc.pid) == pgid and _alive(proc) and _carries(proc, mark):
                found.append(proc)
    return found


def _wait_unreaped(process: subprocess.Popen, timeout: float) -> None:
    """Wait until the process has ended, leaving it unreaped so its group id stays ours
    for the SIGKILL that follows (a pidfd on Linux; elsewhere it is reaped)."""
    if timeout <= 0:
        return
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
        return
    try:
        select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)


def descendants() -> set[int]:
    """The ids of this process's live descendants."""
    return {p.pid for p in psutil.Process().children(recursive=True) if _alive(p)}


def left_behind(
    markers: Iterable[str], spared: set[int], mark: tuple[str, str] | None = None
) -> list[psutil.Process]:
    """Live processes this run started and never stopped: its descendants, members of
    the groups start_process made, and whatever names one of `markers` (the run's own
    folders) on its command line; not those in `spared`, nor this process.

    A group's id is its leader's pid, which the system gives to another process once the
    whole group has ended (this machine's pids wrap within a run): a member of a group of
    that id counts only if it carries `mark` (a variable and value every process the run
    starts inherits) in its environment. Without that, a run killed a backend of the
    shared PostgreSQL (whose group id a long-gone test server's pid had been) and sent
    the server into recovery."""
    markers = [m for m in markers if m]
    mine = descendants()
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid == os.getpid() or proc.pid in spared or not _alive(proc):
            continue
        cmdline = " ".join(proc.info["cmdline"] or [])
        with suppress(OSError, psutil.Error):
            if (
                proc.pid in mine
                or (os.getpgid(proc.pid) in _groups and _carries(proc, mark))
                or any(m in cmdline for m in markers)
            ):
                found.append(proc)
    return found


def _carries(proc: psutil.Process, mark: tuple[str, str] | None) -> bool:
    """`proc` has `mark` (name, value) in its environment (False without a mark)."""
    if mark is None or not mark[1]:
        return False
    return proc.environ().get(mark[0]) == mark[1]


def stop_left_behind(
    markers: Iterable[str], spared: set[int], grace: float = 5, mark: tuple[str, str] | None = None
) -> list[str]:
    """Give the processes left behind `grace` seconds to end by themselves (a watchdog
    stopping a server, a browser closing), then kill the rest; their command lines."""
    found = left_behind(markers, spared, mark)
    _, alive = psutil.wait_procs(found, timeout=grace)
    lines = []
    for proc in alive:
        with suppress(psutil.Error):
            lines.append(f"{proc.pid}: {' '.join(proc.cmdline())}")
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)
    return lines


def marked(name: str, value: str, spared: Iterable[int] = ()) -> list[psutil.Process]:
    """Live processes started with `name`=`value` in their environment (a mark the test
    run sets, which every process it starts inherits), but this one and those `spared`."""
    skip = {os.getpid(), *spared}
    found = []
    for proc in psutil.process_iter():
        if proc.pid in skip or not _alive(proc):
            continue
        with suppress(psutil.Error):
            if proc.environ().get(name) == value:
                found.append(proc)
    return found


def stop_marked(name: str, value: str, spared: Iterable[int] = (), grace: float = 5) -> list[str]:
    """Stop what `marked` finds: SIGTERM, `grace` seconds, then SIGKILL; their command
    lines. Nothing when `value` is empty (no mark was set)."""
    if not value:
        return []
    found = marked(name, value, spared)
    lines = []
    for proc in found:
        with suppress(psutil.Error):
            lines.append(f"{proc.pid}: {' '.join(proc.cmdline())}")
            proc.terminate()
    _, alive = psutil.wait_procs(found, timeout=grace)
    for proc in alive:
        with suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)
    return lines


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
