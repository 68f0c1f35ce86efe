"""HAProxy (Debian's) in front of several `medbook serve` instances, started by the tests on
a free port: round robin, no stickiness, health checks on /health/ready, websockets passed
through, and its runtime API on a unix socket for draining a server (what an operator's
rolling restart does: drain, stop, start, enable)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from conftest import free_port
from tests.processes import start_process, stop_process

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
BACKEND = "medbook"


class HAProxy:
    """`servers` maps a name to a local port. `url` is the proxy's address; each
    response says which server answered in `X-Served-By`."""

    def __init__(self, servers: dict[str, int]) -> None:
        if not Path(HAPROXY).exists():
            raise RuntimeError("haproxy is not installed: `apt-get install haproxy`")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = Path(tempfile.mkdtemp(prefix="medbook-haproxy-"))
        self.admin = self.folder / "admin.sock"
        lines = [
            "global",
            f"  stats socket {self.admin} mode 600 level admin",
            "defaults",
            "  mode http",
            "  timeout connect 2s",
            "  timeout client 60s",
            "  timeout server 60s",
            "  timeout tunnel 1h",  # websockets
            # A request that could not reach a server (refused, reset before an answer)
            # goes to another one: it was never processed.
            "  retries 3",
            "  option redispatch",
            "  retry-on conn-failure empty-response",
            "  option http-buffer-request",
            "frontend web",
            f"  bind 127.0.0.1:{self.port}",
            "  default_backend " + BACKEND,
            f"backend {BACKEND}",
            "  balance roundrobin",
            "  option httpchk GET /health/ready",
            "  http-check expect status 200",
            "  default-server inter 300ms fall 2 rise 2",
            "  http-response set-header X-Served-By %s",
        ]
        lines += [f"  server {name} 127.0.0.1:{port} check" for name, port in servers.items()]
        config = self.folder / "haproxy.cfg"
        config.write_text("\n".join(lines) + "\n")
        self.log = self.folder / "haproxy.log"
        with self.log.open("w") as log:
            self.process = start_process(
                [HAPROXY, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self.wait_until(lambda state: all(state[name] == "UP" for name in servers))
        except BaseException:
            self.stop()
            raise

    def command(self, line: str) -> str:
        """One command on HAProxy's runtime API."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.admin))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[str, str]:
        """Each server's state as HAProxy's health checks see it (UP, DOWN, MAINT, ...)."""
        states = {}
        for line in self.command("show stat").splitlines():
            fields = line.split(",")
            if len(fields) > 17 and fields[0] == BACKEND and fields[1] != "BACKEND":
                states[fields[1]] = fields[17].split(" ")[0]
        return states

    def wait_until(self, ready, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited:\n{self.log.read_text()}")
            try:
                if ready(self.states()):
                    return
            except (OSError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"haproxy servers not as expected: {self.states()}")
            time.sleep(0.1)

    def drain(self, name: str) -> None:
        """No new requests or connections to `name`; those under way go on."""
        self.command(f"set server {BACKEND}/{name} state drain")

    def enable(self, name: str) -> None:
        self.command(f"set server {BACKEND}/{name} state ready")

    def current_sessions(self, name: str) -> int:
        for line in self.command("show stat").splitlines():
            fields = line.split(",")
            if len(fields) > 4 and fields[0] == BACKEND and fields[1] == name:
                return int(fields[4] or 0)
        raise KeyError(name)

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kwargs)

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.folder, ignore_errors=True)
