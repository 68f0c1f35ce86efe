"""Running child processes: the demo's web server and worker, which die with it however
it dies, watchdogs that stop detached servers when their owner is killed, and the signals
that stop them and us."""

from __future__ import annotations

import ctypes
import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import click

# A `kill` sends SIGTERM, a closed terminal SIGHUP.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextmanager
def terminate_cleanly(enabled: bool) -> Iterator[None]:
    """While embedded services run, SIGTERM and SIGHUP end the command as a SystemExit
    (status 128 + the signal's number, as a shell reports a death by that signal), so the
    `with` blocks unwind and stop what this command started. Dying by the signal left the
    embedded PostgreSQL and Redis running, and the next `make run` then refused to start
    ("an embedded Redis is already running"). A signal that was ignored (nohup) stays
    ignored. While a server runs it handles these signals itself: the SAQ worker then
    returns, and uvicorn raises the signal again once it has stopped, which lands here."""
    if not enabled:
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = {
        sig: signal.signal(sig, stop)
        for sig in STOP_SIGNALS
        if signal.getsignal(sig) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def supervise(
    commands: Mapping[str, Sequence[str]],
    *,
    probe: str,
    ready_timeout: float,
    host: str,
    port: int,
    on_ready: Callable[[], None],
) -> str | None:
    """Run `commands` as children that die with us, call `on_ready` once `probe` answers
    200, then run until a child exits or Ctrl-C; stop every child either way.

    Args:
        commands: the children's command lines by name ("web server", "worker").
        probe: the URL that answers 200 once the web server is ready.
        ready_timeout: seconds to wait for that.
        host: the web server's address, and
        port: its port, both named when it exits because the port is taken.
        on_ready: called once, when ready.

    Returns:
        None after Ctrl-C, else one line saying which child failed and why.
    """
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, command in commands.items():
            children[name] = start_child(command)
        failure = _wait_ready(children, probe, ready_timeout, host, port)
        if failure is None:
            on_ready()
            failure = _watch(children, host, port)
    except KeyboardInterrupt:
        failure = None
    finally:
        stop(list(children.values()))
    return failure


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def start_child(command: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start a child that gets SIGTERM from the kernel when we die, however we die (a
    SIGKILL included; Linux only), and that holds our watchdogs' pipes open (see
    `watchdog`), so the services it uses stop only after it has gone too."""
    return subprocess.Popen(command, preexec_fn=_dies_with_us(), pass_fds=tuple(_watchdog_pipes))


def _dies_with_us() -> Callable[[], None] | None:
    """A preexec_fn setting the child's parent-death signal; None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded before the fork
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong]
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # we died before the line above took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


# The writing ends of the pipes our watchdogs wait on; children from `start_child` get
# copies, so a watchdog acts only once we and they are all gone.
_watchdog_pipes: list[int] = []
STAND_DOWN = b"stand down"


@contextmanager
def watchdog(action: str, *args: str) -> Iterator[None]:
    """If this process dies inside the block (a SIGKILL, a crash), a process of its own
    calls `action` ("module:function") with `args`: how servers that detach themselves
    (the embedded PostgreSQL and Redis) are stopped when nobody is left to stop them.

    The watchdog reads a pipe whose writing end only we and our `start_child` children
    hold; the kernel closes it however a process ends. Leaving the block tells the
    watchdog to stand down. It runs in a session of its own, so a Ctrl-C, a closed
    terminal or a signal to our process group does not end it with us.
    """
    read_end, write_end = os.pipe()
    try:
        dog = subprocess.Popen(
            [sys.executable, "-m", __name__, action, *args],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parent.parent,  # where `app` is importable
            start_new_session=True,
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    _watchdog_pipes.append(write_end)
    try:
        yield
    finally:
        _watchdog_pipes.remove(write_end)
        with suppress(OSError):
            os.write(write_end, STAND_DOWN)
        os.close(write_end)
        with suppress(subprocess.TimeoutExpired):  # a child still holds the pipe: it
            dog.wait(timeout=5)  # stands down once that one is gone


def _keep_watch(action: str, args: list[str]) -> None:
    """The watchdog: wait until every writer of the pipe on stdin is gone; unless told
    to stand down first, run the action."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.stdin.buffer.read() == STAND_DOWN:
        return
    module, _, name = action.partition(":")
    getattr(importlib.import_module(module), name)(*args)


def loopback(host: str) -> str:
    """Where to reach a server bound to `host` from this machine."""
    return {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(  # noqa: S104
        host, f"[{host}]" if ":" in host else host
    )


def _exited(
    children: dict[str, subprocess.Popen[bytes]], host: str, port: int, when: str
) -> str | None:
    """One line for the first child that has exited, or None while all run."""
    for name, child in children.items():
        code = child.poll()
        if code is None:
            continue
        line = f"the {name} exited {when} (exit code {code}); stopped everything"
        if name == "web server" and not _port_free(host, port):
            line += f": port {port} on {host} is in use (choose another with --port)"
        return line
    return None


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _wait_ready(
    children: dict[str, subprocess.Popen[bytes]],
    probe: str,
    timeout: float,
    host: str,
    port: int,
) -> str | None:
    """Poll /health/ready until 200; None then, else one line saying what went wrong."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if failure := _exited(children, host, port, "before medbook was ready"):
            return failure
        try:
            if httpx.get(probe, timeout=2).status_code == 200:
                return None
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return f"{probe} did not answer 200 within {timeout:.0f} s; stopped everything"


def _watch(children: dict[str, subprocess.Popen[bytes]], host: str, port: int) -> str | None:
    """Wait until a child exits (then say which) or Ctrl-C (KeyboardInterrupt)."""
    while True:
        if failure := _exited(children, host, port, "unexpectedly"):
            return failure
        time.sleep(0.5)


# The worker lets running jobs finish for up to 20 s (tasks/worker.py); the services
# stop only after every child has exited, so wait a little longer than that.
STOP_WAIT_SECONDS = 30


def stop(children: list[subprocess.Popen[bytes]]) -> None:
    """Stop the children gracefully, then (past the wait) for good. A Ctrl-C in the
    terminal has already sent them SIGINT; a second one there, or a second SIGINT from us
    (uvicorn takes it as "force quit"), must not cut their shutdown short, so we send
    SIGTERM and ignore further Ctrl-Cs (and SIGTERM, SIGHUP) until they are gone."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, *STOP_SIGNALS)}
    try:
        if any(child.poll() is None for child in children):
            click.echo("stopping medbook…", err=True)
        for child in children:
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    _keep_watch(sys.argv[1], sys.argv[2:])
