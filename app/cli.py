"""The `medbook` command: serve, worker, db, seed, users and demo."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import click

from app import embedded, supervisor
from app.settings import PROJECT_ROOT, Settings, SettingsError, get_settings, plain_database_url

T = TypeVar("T")


@contextmanager
def _services(
    ctx: click.Context, *, database: bool = True, redis: bool = False, migrated: bool = False
) -> Iterator[Settings]:
    """Start embedded services for whatever URL is missing, then read settings once.

    Args:
        ctx: the command's context (its `--data-dir`).
        database: stop with one line unless PostgreSQL answers.
        redis: stop with one line unless Redis answers.
        migrated: stop with one line unless the database's schema is migrated.
    """
    data_dir = Path(ctx.obj["data_dir"]).resolve()
    os.environ["MEDBOOK_DATA_DIR"] = str(data_dir)
    starts_any = not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"))
    try:
        with supervisor.terminate_cleanly(starts_any), embedded.services(data_dir):
            try:
                settings = get_settings()
            except SettingsError as exc:
                raise click.ClickException(str(exc)) from None
            problem = (database and _database_problem(settings, migrated=migrated)) or (
                redis and _redis_problem(settings)
            )
            if problem:
                raise click.ClickException(problem)
            yield settings
    except embedded.EmbeddedError as exc:
        raise click.ClickException(str(exc)) from None


def database_address(url: str) -> str:
    """Where a PostgreSQL URL points (host:port/database or the socket folder), never
    its password."""
    parts = urlsplit(plain_database_url(url))
    hosts = parts.netloc.rpartition("@")[2] or ",".join(
        parse_qs(parts.query).get("host", ["localhost"])
    )
    return f"{hosts}{parts.path}"


def redis_address(url: str) -> str:
    """Where a Redis URL points (host:port/db or the socket path), never its password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.netloc.rpartition('@')[2]}{parts.path}"


def _database_problem(settings: Settings, *, migrated: bool = False) -> str | None:
    """None when PostgreSQL accepts a connection; else one line saying why not.

    With `migrated`, also when its schema lags this code's migrations: a server started
    on an unmigrated database failed its start-up with a page of traceback. A revision
    this code does not know (a newer release migrated first) is let through, so a
    rollout whose migrations only add can run old and new servers side by side.
    """
    import asyncpg

    from db.session import driver_options

    async def revision() -> str | None:
        conn = await asyncpg.connect(
            plain_database_url(settings.database_url), timeout=5, **driver_options(settings)
        )
        try:
            if migrated:
                return await conn.fetchval("SELECT version_num FROM alembic_version")
        except asyncpg.UndefinedTableError:
            pass  # never migrated
        finally:
            await conn.close()
        return None

    where = database_address(settings.database_url)
    try:
        at = asyncio.run(revision())
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        reason = "no answer within 5 s" if isinstance(exc, TimeoutError) else _one_line(exc)
        return f"cannot reach PostgreSQL at {where} (DATABASE_URL): {reason}"
    if not migrated:
        return None
    from db import migrate

    known = migrate.revisions()
    if at is None or at in known[1:]:
        return (
            f"the database at {where} is at migration {at or 'none'}, this medbook needs "
            f"{known[0]}: run `medbook db upgrade` first"
        )
    return None


def _redis_problem(settings: Settings) -> str | None:
    """None when Redis answers PING; else one line saying why not."""
    import redis

    from app.redis import sync_redis_from_url

    client = sync_redis_from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_timeout,
        socket_timeout=settings.redis_timeout,
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        where = redis_address(settings.redis_url)
        return f"cannot reach Redis at {where} (REDIS_URL): {_one_line(exc)}"
    finally:
        client.close()
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _metrics_dir(settings: Settings, process: str) -> None:
    """Prometheus multiprocess mode for `process` (web or worker): set
    PROMETHEUS_MULTIPROC_DIR before any server process imports prometheus-client, and
    empty it, since values left by an earlier run would be summed into this one's."""
    folder = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or settings.data_dir / "metrics")
    folder = folder / process
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink(missing_ok=True)  # two workers may start at once
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def _exit_at_once(code: int = 0) -> None:
    """End the process now that it has stopped in order (its jobs finished or given up,
    its pools and connections closed, the services it started stopped), skipping the
    interpreter's teardown: its full collections over the whole heap and the freeing of
    every module, which took most of an idle worker's stop on a loaded machine
    (bench/README.md, "The demo's stop"). Logs and stdout are flushed first; nothing
    else is registered to run at exit (logging's flush, futures' thread joins: none left)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    os._exit(code)


def _run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(coro_fn())


@click.group()
@click.option(
    "--data-dir",
    envvar="MEDBOOK_DATA_DIR",
    default=str(PROJECT_ROOT / "var"),
    show_default=True,
    help="Where embedded PostgreSQL/Redis, the secret key and documents live.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
@click.pass_context
def main(ctx: click.Context, data_dir: str, verbose: bool) -> None:
    """medbook: multi-clinic medical appointments."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = {"data_dir": data_dir}


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="Server processes.")
@click.option(
    "--server",
    type=click.Choice(["uvicorn", "granian"]),
    default="uvicorn",
    show_default=True,
    help="HTTP server (bench/server_bench.py compares them).",
)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, workers: int, server: str) -> None:
    """Run the web server.

    uvicorn by default: with two processes on two cores it served about a third more
    cached availability requests per second than granian in the same run, at the same
    bare-route ceiling (bench/server_bench.py, bench/results/servers.md). Both trust
    X-Forwarded-* only from FORWARDED_ALLOW_IPS (default 127.0.0.1: a proxy on the host).
    """
    with _services(ctx, redis=True, migrated=True) as settings:
        _metrics_dir(settings, "web")
        level = settings.log_level.lower()
        if server == "uvicorn":
            import uvicorn

            from app.web.coalesced_http import CoalescingHttpToolsProtocol

            _raise_open_files_limit()
            uvicorn.run(
                "app.web.asgi:create_app",
                factory=True,
                http=CoalescingHttpToolsProtocol,
                host=host,
                port=port,
                workers=workers,
                timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
                # Live fragments go out uncompressed: compressing each once per socket
                # was a third of a fan-out's CPU, and each socket's compressor about half
                # its memory; a fragment is a few KB of HTML (bench/README.md).
                ws_per_message_deflate=False,
                # Keepalive, a product choice (bench/README.md, cpu17f): a ping every 20 s,
                # closed when unanswered 20 s later. A dead peer (a closed laptop, a phone
                # out of coverage, a NAT that dropped the mapping) is let go within 40 s,
                # and a quiet page's socket keeps traffic on it well inside the 60-s idle
                # cut of common proxies and load balancers; a reconnect costs the page a
                # resync, more than a ping. N sockets cost N/20 pings a second.
                ws_ping_interval=WS_PING_SECONDS,
                ws_ping_timeout=WS_PING_SECONDS,
                log_level=level,
                access_log=False,
                proxy_headers=True,
                forwarded_allow_ips=settings.forwarded_allow_ips,
            )
            return
        from granian.constants import Interfaces, Loops
        from granian.log import LogLevels
        from granian.server import Server

        Server(
            "app.web.asgi:create_proxied_app",
            factory=True,
            address=host,
            port=port,
            interface=Interfaces.ASGI,
            workers=workers,
            loop=Loops.uvloop,
            log_level=LogLevels(level),
            log_access=False,
        ).serve()


# Seconds between the server's websocket pings, and for each pong (uvicorn's default, kept
# on purpose: see `serve`).
WS_PING_SECONDS = 20.0


# uvicorn's supervisor replaces a server process that has not answered its health check
# in this many seconds (its default, 5, is shorter than what a process holding thousands of
# websockets on a loaded 2-core box may take: every socket of the killed process dropped
# at once, bench/README.md "Live updates").
WORKER_HEALTHCHECK_SECONDS = 30


def _raise_open_files_limit() -> None:
    """Every websocket is a file descriptor: lift the soft limit (often 1,024) to the hard
    one, which the server processes inherit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@main.command()
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run the SAQ worker (reminders, analytics, housekeeping)."""
    with _services(ctx, redis=True, migrated=True) as settings:
        _metrics_dir(settings, "worker")  # for job metrics; the worker serves no /metrics
        from tasks.worker import run, worker_settings  # prometheus-client: after the line above

        # The imported code lives as long as the process: frozen, so that the worker's
        # own full collections do not walk it.
        gc.freeze()
        run(worker_settings())
    _exit_at_once()


@main.group()
def db() -> None:
    """Database migrations."""


@db.command()
@click.argument("revision", default="head")
@click.pass_context
def upgrade(ctx: click.Context, revision: str) -> None:
    """Migrate the database up to REVISION (default: head)."""
    from db import migrate

    with _services(ctx) as settings:
        migrate.upgrade(plain_database_url(settings.database_url), revision)
        click.echo(f"database at {migrate.current(plain_database_url(settings.database_url))}")


@db.command()
@click.argument("revision", default="-1")
@click.pass_context
def downgrade(ctx: click.Context, revision: str) -> None:
    """Migrate the database down to REVISION (default: one step; `base` for empty)."""
    from db import migrate

    with _services(ctx) as settings:
        migrate.downgrade(plain_database_url(settings.database_url), revision)
        click.echo(f"database at {migrate.current(plain_database_url(settings.database_url))!r}")


@db.command()
@click.pass_context
def current(ctx: click.Context) -> None:
    """Show the database's migration revision."""
    from db import migrate

    with _services(ctx) as settings:
        click.echo(migrate.current(plain_database_url(settings.database_url)) or "(empty)")


@main.group()
def seed() -> None:
    """Load demo or year-scale data."""


async def _seed_demo(settings: Settings) -> bool:
    from db.seed_demo import seed_demo
    from db.session import create_engine, session_factory

    engine = create_engine(settings, application_name="medbook-seed")
    try:
        async with session_factory(engine)() as session:
            return await seed_demo(
                session, max_future_per_doctor=settings.max_future_appointments_per_doctor
            )
    finally:
        await engine.dispose()


@seed.command("demo")
@click.pass_context
def seed_demo_cmd(ctx: click.Context) -> None:
    """Two clinics, doctors, patients, a week of bookings, one login per role."""
    with _services(ctx, migrated=True) as settings:
        loaded = _run(lambda: _seed_demo(settings))
        click.echo("demo data loaded" if loaded else "demo data already present")


@seed.command("scale")
@click.option("--seed", "seed_value", default=42, show_default=True, type=int)
@click.option("--clinics", default=50, show_default=True, type=int)
@click.option("--doctors-per-clinic", default=10, show_default=True, type=int)
@click.option("--patients", default=100_000, show_default=True, type=int)
@click.option("--appointments", default=1_800_000, show_default=True, type=int)
@click.option(
    "--today",
    type=click.DateTime(["%Y-%m-%d"]),
    help="The day the year is built around (9 months back, 3 ahead); default: today. "
    "With the same --seed and --today, every run loads the same rows.",
)
@click.option("--replace", is_flag=True, help="Empty every table first.")
@click.pass_context
def seed_scale_cmd(
    ctx: click.Context,
    seed_value: int,
    clinics: int,
    doctors_per_clinic: int,
    patients: int,
    appointments: int,
    today: Any,
    replace: bool,
) -> None:
    """The review's year: 50 clinics, 500 doctors, 100,000 patients, 1.8 M appointments."""
    from rich.progress import Progress, TaskID

    from app.access.passwords import hash_password
    from db.seed_demo import DEMO_PASSWORD
    from db.seed_scale import ScaleLoadRefused, ScaleSpec, load_scale

    spec = ScaleSpec(
        clinics=clinics,
        doctors_per_clinic=doctors_per_clinic,
        patients=patients,
        target_appointments=appointments,
        seed=seed_value,
        today=today.date() if today else None,
    )
    with _services(ctx, migrated=True) as settings, Progress() as bar:
        tasks: dict[str, TaskID] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        started = time.perf_counter()
        try:
            counts = _run(
                lambda: load_scale(
                    plain_database_url(settings.database_url),
                    spec,
                    password_hash=hash_password(DEMO_PASSWORD),
                    replace=replace,
                    progress=progress,
                )
            )
        except ScaleLoadRefused as exc:
            raise click.ClickException(f"{exc} (add --replace to empty it first)") from None
        elapsed = time.perf_counter() - started
    total = sum(counts.values())
    for table, n in counts.items():
        click.echo(f"{table:>28}: {n:>10,}")
    click.echo(f"loaded {total:,} rows in {elapsed:.1f} s ({total / elapsed:,.0f} rows/s)")


@main.group()
def analytics() -> None:
    """Analytics rollups."""


ROLLUP_TABLES = (
    "clinic_daily_stats",
    "clinic_bucket_stats",
    "clinic_monthly_stats",
    "clinic_monthly_buckets",
)


@analytics.command("backfill")
@click.option("--from", "first", required=True, type=click.DateTime(["%Y-%m-%d"]))
@click.option("--to", "last", required=True, type=click.DateTime(["%Y-%m-%d"]))
@click.option("--chunk-days", default=14, show_default=True, type=click.IntRange(1, 92))
@click.pass_context
def analytics_backfill(ctx: click.Context, first: Any, last: Any, chunk_days: int) -> None:
    """Rebuild the rollups of every clinic for clinic-local days FROM..TO (inclusive)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    from sqlalchemy import text

    from app.analytics.rollups import day_chunks, refresh_days
    from db.session import create_engine

    if last < first:
        raise click.BadParameter("--to is before --from")
    chunks = day_chunks(first.date(), last.date(), chunk_days)

    async def backfill(settings: Settings, advance: Callable[[int], None]) -> None:
        engine = create_engine(
            settings,
            statement_timeout_ms=settings.analytics_statement_timeout_ms,
            application_name="medbook-backfill",
        )
        try:
            for days in chunks:  # one transaction per chunk: short locks, resumable
                async with engine.begin() as conn:
                    await refresh_days(conn, days)
                advance(len(days))
            # Fresh statistics for the planner: a bulk rewrite leaves the rollups
            # unanalysed until autovacuum gets to them (never, where it is off), and the
            # reports' plans then spill small sorts to disk.
            async with engine.begin() as conn:
                await conn.execute(text(f"ANALYZE {', '.join(ROLLUP_TABLES)}"))
        finally:
            await engine.dispose()

    total = sum(len(c) for c in chunks)
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} days"),
        TimeRemainingColumn(),
    )
    with _services(ctx, migrated=True) as settings, Progress(*columns) as bar:
        task = bar.add_task("rollups", total=total)
        started = time.perf_counter()
        _run(lambda: backfill(settings, lambda n: bar.advance(task, n)))
        elapsed = time.perf_counter() - started
    click.echo(f"rebuilt {total} days of rollups in {elapsed:.1f} s")


@main.group()
def users() -> None:
    """User accounts."""


@users.command("create")
@click.option(
    "--role", required=True, type=click.Choice(["patient", "doctor", "front_desk", "admin"])
)
@click.option("--email", required=True)
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--name", "full_name", help="Full name (patients).")
@click.option("--clinic", "clinic_id", type=int, help="Clinic id (front desk).")
@click.option("--doctor", "doctor_id", type=int, help="Doctor id (doctor logins).")
@click.pass_context
def users_create(
    ctx: click.Context,
    role: str,
    email: str,
    password: str,
    full_name: str | None,
    clinic_id: int | None,
    doctor_id: int | None,
) -> None:
    """Create a login; staff accounts are only made here or by an admin."""
    from app.access.accounts import create_user
    from app.errors import DomainError
    from db.session import create_engine, session_factory

    async def create(settings: Settings) -> int:
        engine = create_engine(settings, application_name="medbook-cli")
        try:
            async with session_factory(engine)() as session:
                user = await create_user(
                    session,
                    role=role,
                    email=email,
                    password=password,
                    full_name=full_name,
                    clinic_id=clinic_id,
                    doctor_id=doctor_id,
                )
                return user.id
        finally:
            await engine.dispose()

    with _services(ctx, migrated=True) as settings:
        try:
            user_id = _run(lambda: create(settings))
        except DomainError as exc:
            raise click.ClickException(exc.detail) from None
    click.echo(f"created {role} {email} (user id {user_id})")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--ready-timeout",
    default=120.0,
    show_default=True,
    type=float,
    help="Seconds to wait for /health/ready.",
)
@click.pass_context
def demo(ctx: click.Context, host: str, port: int, ready_timeout: float) -> None:
    """Everything at once: services, migrations, demo data, web server and worker.

    The URL and logins are printed only once the server answers /health/ready. If the
    server or the worker exits (a port in use, a crash), the other is stopped and the
    command fails with one line saying which and why.
    """
    from db import migrate
    from db.seed_demo import DEMO_PASSWORD, LOGINS

    with _services(ctx, redis=True) as settings:
        migrate.upgrade(plain_database_url(settings.database_url))
        _run(lambda: _seed_demo(settings))
        # What this process holds now (the migration's and the seed's modules and data)
        # lives until it exits: frozen, so that no collection walks it again (at exit,
        # whichever way it ends: on Ctrl-C `_exit_at_once` skips the teardown).
        gc.freeze()
        base = [sys.executable, "-m", "app.cli", "--data-dir", ctx.obj["data_dir"]]

        def announce() -> None:
            click.echo(f"\nmedbook is running at http://{host}:{port}/  (Ctrl-C stops everything)")
            click.echo(f"demo logins, password {DEMO_PASSWORD!r}:")
            for email, role, _ in LOGINS:
                click.echo(f"  {role:<11} {email}")

        failure = supervisor.supervise(
            {
                "web server": [*base, "serve", "--host", host, "--port", str(port)],
                "worker": [*base, "worker"],
            },
            probe=f"http://{supervisor.loopback(host)}:{port}/health/ready",
            ready_timeout=ready_timeout,
            host=host,
            port=port,
            on_ready=announce,
        )
    if failure:
        raise click.ClickException(failure)
    _exit_at_once()  # everything it started has stopped


if __name__ == "__main__":
    main()
