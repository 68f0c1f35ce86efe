"""Redis with Sentinel, all local and of the test's own: one primary, one replica and three
sentinels (Debian's redis-server and redis-sentinel), each on a free port, started and
stopped by process group (tests/processes.py)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis as redis_sync

from conftest import free_port
from tests.processes import kill_process, start_process

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
SERVICE = "medbook"
# How long a primary must be silent before the sentinels call it down (the failover
# starts then); short here, 5-30 s in production (docs/deploy.md).
DOWN_AFTER_MS = 1000


class RedisSentinelSet:
    """Started in `folder`; `url` is the `redis+sentinel://` URL medbook takes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ports = {"primary": free_port(), "replica": free_port()}
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.processes: dict[str, subprocess.Popen] = {}
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        self.url = f"redis+sentinel://{hosts}/{SERVICE}/0"
        try:
            self._start_server("primary")
            self._start_server("replica", "--replicaof", "127.0.0.1", str(self.ports["primary"]))
            for n, port in enumerate(self.sentinel_ports):
                self._start_sentinel(n, port)
            self._wait_until_sentinels_know_everyone()
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str, args: list[str]) -> None:
        log = (self.folder / f"{name}.log").open("w")
        self.processes[name] = start_process(
            [REDIS_SERVER, *args], stdout=log, stderr=subprocess.STDOUT, cwd=self.folder
        )
        log.close()

    def _start_server(self, role: str, *extra: str) -> None:
        data = self.folder / role
        data.mkdir()
        port = str(self.ports[role])
        args = ["--port", port, "--bind", "127.0.0.1", "--save", "", "--dir", str(data)]
        self._start(role, [*args, "--appendonly", "yes", *extra])
        self._client(self.ports[role]).ping()

    def _start_sentinel(self, n: int, port: int) -> None:
        config = self.folder / f"sentinel-{n}.conf"  # sentinels rewrite their config file
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.folder}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.ports['primary']} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        self._start(f"sentinel-{n}", [str(config), "--sentinel"])

    def _client(self, port: int, timeout: float = 10) -> redis_sync.Redis:
        client = redis_sync.Redis(port=port, socket_timeout=2, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return client
            except redis_sync.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _wait_until_sentinels_know_everyone(self, timeout: float = 30) -> None:
        """Each sentinel has found the replica and the two other sentinels (they learn of
        each other through hello messages every 2 s), so a failover can be voted."""
        deadline = time.monotonic() + timeout
        for port in self.sentinel_ports:
            sentinel = self._client(port)
            while True:
                replicas = sentinel.execute_command("SENTINEL", "REPLICAS", SERVICE)
                others = sentinel.execute_command("SENTINEL", "SENTINELS", SERVICE)
                if len(replicas) == 1 and len(others) == 2:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the sentinels did not find each other in time")
                time.sleep(0.2)
            sentinel.close()

    def primary_port(self) -> int:
        """The primary's port as the first sentinel sees it now."""
        sentinel = self._client(self.sentinel_ports[0])
        try:
            _, port = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        finally:
            sentinel.close()
        return int(port)

    def wait_for_replica(self, timeout_ms: int = 5000) -> None:
        """Until the replica has every write the primary took so far (replication is
        asynchronous: without this, the last writes before a kill may be lost)."""
        primary = self._client(self.primary_port())
        try:
            assert primary.execute_command("WAIT", 1, timeout_ms) == 1
        finally:
            primary.close()

    def kill_primary(self) -> None:
        """The primary's process is gone at once (a crash or a lost host)."""
        kill_process(self.processes.pop("primary"))

    def stop(self) -> None:
        for process in self.processes.values():
            kill_process(process)
        self.processes.clear()
