"""Running child processes: the demo's web server and worker, and the signals that stop
them and us."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

# A `kill` sends SIGTERM, a closed terminal SIGHUP.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextmanager
def _terminate_cleanly(enabled: bool) -> Iterator[None]:
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


def _loopback(host: str) -> str:
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


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
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
