"""PgBouncer (Debian's package) in transaction mode in front of a PostgreSQL server, started
by the tests on a free port of its own and stopped by process group (tests/processes.py).

Used two ways: `MEDBOOK_TEST_PGBOUNCER=1` puts one in front of the whole run's database
(conftest.py), and tests/topology/ start their own with a tiny server pool, so that
client connections really share server connections.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import asyncpg

from conftest import free_port
from tests.processes import start_process, stop_process

# Debian installs it here; on PATH elsewhere.
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


class PgBouncer:
    """`pgbouncer` with `pool_mode = transaction` in front of the server of `server_url`,
    accepting any database name (a wildcard entry) as the server's user, no password."""

    def __init__(self, server_url: str, *, pool_size: int = 20, log: Path | None = None) -> None:
        if not Path(PGBOUNCER).exists():
            raise RuntimeError(
                "pgbouncer is not installed: `apt-get install pgbouncer` (Debian's 1.18 is "
                "what the topology tests are written against)"
            )
        parts = urlsplit(server_url)
        query = parse_qs(parts.query)
        self.user = unquote(parts.username or "postgres")
        host = (query.get("host") or [parts.hostname or "127.0.0.1"])[0]
        server = f"host={host} port={parts.port or 5432} user={self.user}"
        if parts.password:
            server += f" password={unquote(parts.password)}"
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="medbook-pgbouncer-"))
        self.folder.chmod(0o755)  # readable by `nobody` when we run as root
        config = self.folder / "pgbouncer.ini"
        (self.folder / "users.txt").write_text(f'"{self.user}" ""\n')
        config.write_text(
            "\n".join(
                [
                    "[databases]",
                    f"* = {server}",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "auth_type = trust",
                    f"auth_file = {self.folder / 'users.txt'}",
                    "pool_mode = transaction",
                    "max_client_conn = 2000",
                    f"default_pool_size = {pool_size}",
                    "reserve_pool_size = 0",
                    "query_wait_timeout = 60",
                    "",
                ]
            )
        )
        for path in self.folder.iterdir():
            path.chmod(0o644)
        # PgBouncer refuses to run as root; it drops to `nobody` when asked.
        command = [PGBOUNCER, *(["-u", "nobody"] if os.geteuid() == 0 else []), str(config)]
        self.log = log or self.folder / "pgbouncer.log"
        with self.log.open("w") as out:
            self.process = start_process(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(server_url)
        except BaseException:
            self.stop()
            raise

    def url(self, database_url: str) -> str:
        """`database_url` (same user and database) pointed at this pooler."""
        parts = urlsplit(database_url)
        netloc = f"{self.user}@127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc, query=""))

    def _wait_ready(self, server_url: str, timeout: float = 15) -> None:
        url = self.url(server_url)

        async def probe() -> None:
            conn = await asyncpg.connect(url, timeout=2, statement_cache_size=0)
            try:
                await conn.fetchval("SELECT 1")
            finally:
                await conn.close()

        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited:\n{self.log.read_text()}")
            try:
                asyncio.run(probe())
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.folder, ignore_errors=True)
