"""CPU per test, for finding where the suite's time goes (docs/testing.md).

    pytest -p tests.cpu_per_test [-n 3 ...]       # writes test-artifacts/cpu/<worker>.jsonl
    python -m tests.cpu_per_test [folder] [rows]  # the modules, most CPU first

Each test's line holds the CPU of the test process (`self`) and of the processes it
started (`children`: those reaped during the test, from getrusage(RUSAGE_CHILDREN), and
what live descendants such as a module's server or browser used meanwhile, from psutil),
and its wall time, from its setup to its teardown. Each worker also writes its start and
collection. CPU_PER_TEST_DIR names another folder; lines are appended.

Approximate where process trees end: a grandchild's CPU (a browser's renderer) counted as
it went is counted again when its parent, ended and reaped during a later test, reports
it; that test shows it. The exact figure is the run's whole CPU (`/usr/bin/time`)."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import psutil
import pytest

_out = None
_seen: dict[tuple[int, float], tuple[float, float, bool]] = {}


def _own() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, reaped.ru_utime + reaped.ru_stime


def _descendants() -> tuple[float, float]:
    """CPU the live descendants used since the last call, and what the direct children
    that have gone since had used by then, their own reaped children's included (all of
    which RUSAGE_CHILDREN counts once this process reaps them). A grandchild's CPU counts
    as it goes; its parent's reaping it is not counted again."""
    global _seen
    now: dict[tuple[int, float], tuple[float, float, bool]] = {}
    me = os.getpid()
    for proc in psutil.Process().children(recursive=True):
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                own = times.user + times.system
                total = own + times.children_user + times.children_system
                now[(proc.pid, proc.create_time())] = (own, total, proc.ppid() == me)
        except psutil.Error:
            pass
    for key, seen in _seen.items():  # missed by this walk (a race), but still running
        if key not in now and _running(*key):
            now[key] = seen
    used = sum(own - _seen[key][0] if key in _seen else own for key, (own, _, _) in now.items())
    gone = sum(total for key, (_, total, direct) in _seen.items() if key not in now and direct)
    _seen = now
    return used, gone


def _running(pid: int, created: float) -> bool:
    try:
        return psutil.Process(pid).create_time() == created
    except psutil.Error:
        return False


def _write(config: pytest.Config, line: dict) -> None:
    global _out
    if _out is None:
        worker = getattr(config, "workerinput", {}).get("workerid", "main")
        folder = Path(os.environ.get("CPU_PER_TEST_DIR", "test-artifacts/cpu"))
        folder.mkdir(parents=True, exist_ok=True)
        _out = (folder / f"{worker}.jsonl").open("a", buffering=1)
    _out.write(json.dumps(line) + "\n")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    me, _ = _own()
    _write(config, {"event": "start", "self": me, "t": time.time()})


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session):
    me, _ = _own()
    started = time.monotonic()
    try:
        return (yield)
    finally:
        me2, _ = _own()
        wall = time.monotonic() - started
        _write(session.config, {"event": "collection", "self": me2 - me, "wall": wall})


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    _descendants()
    me, reaped = _own()
    started, at = time.monotonic(), time.time()
    try:
        return (yield)
    finally:
        me2, reaped2 = _own()
        used, gone = _descendants()
        children = reaped2 - reaped - gone + used
        wall = time.monotonic() - started
        line = {"id": item.nodeid, "self": me2 - me, "children": children, "wall": wall}
        _write(item.config, {**line, "start": at})


def summary(folder: Path, rows: int = 30) -> list[str]:
    """The modules, most CPU first: tests, CPU, of it in children, wall (summed)."""
    modules: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for path in sorted(folder.glob("*.jsonl")):
        for text in path.read_text().splitlines():
            line = json.loads(text)
            if "id" in line:
                module = modules[line["id"].split("::")[0]]
                module[0] += 1
                module[1] += line["self"] + line["children"]
                module[2] += line["children"]
                module[3] += line["wall"]
    ranked = sorted(modules.items(), key=lambda kv: -kv[1][1])[:rows]
    return [
        f"{name:70} {n:5.0f} tests  CPU {cpu:7.1f} s (children {kids:6.1f})  wall {wall:7.1f} s"
        for name, (n, cpu, kids, wall) in ranked
    ]


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "test-artifacts/cpu")
    print("\n".join(summary(folder, int(sys.argv[2]) if len(sys.argv) > 2 else 30)))
