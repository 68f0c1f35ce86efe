"""Engines and sessions: pooling, per-connection timeouts and the slow-query log.

Review findings handled here: S-2 (pool size, overflow, wait, and the wait timed for
/metrics), M-5 (validation and recycle,
so a connection cut by a firewall or a server restart is replaced instead of failing a
request), S-4 (statement and idle-in-transaction timeouts set on every connection) and S-5
(statements slower than a threshold are logged with their duration).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import TextClause, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util import await_, greenlet_spawn

from app.settings import Settings

slow_log = logging.getLogger("medbook.slow_query")

# A connection back in the pool for less than this is handed out without a ping (M-5).
PING_AFTER_IDLE_SECONDS = 1.0

# The engine's slow-query threshold in ms, kept in its execution options (0: no log).
SLOW_QUERY_OPTION = "medbook_slow_query_ms"

# Called with (seconds a checkout waited for a connection, whether the wait timed out).
PoolWaitObserver = Callable[[float, bool], None]


class TimedPool(AsyncAdaptedQueuePool):
    """The asyncio queue pool, reporting how long each checkout waited: for an idle
    connection, for a new one to open, or until DB_POOL_TIMEOUT gave up (S-2)."""

    on_wait: PoolWaitObserver | None = None
    # Log under SQLAlchemy's own pool logger, so logging set for `sqlalchemy` covers it.
    _sqla_logger_namespace = "sqlalchemy.pool.impl.AsyncAdaptedQueuePool"

    def _do_get(self) -> Any:
        observe = self.on_wait
        if observe is None:
            return super()._do_get()
        started = time.perf_counter()
        try:
            connection = super()._do_get()
        except PoolTimeout:
            observe(time.perf_counter() - started, True)
            raise
        observe(time.perf_counter() - started, False)
        return connection

    def recreate(self) -> TimedPool:
        pool = super().recreate()
        assert isinstance(pool, TimedPool)
        pool.on_wait = self.on_wait  # dispose() swaps the pool: keep reporting
        return pool


def observe_pool_waits(engine: AsyncEngine, observe: PoolWaitObserver | None) -> None:
    """Report how long each checkout from `engine`'s pool waits (None stops reporting)."""
    pool = engine.sync_engine.pool
    if isinstance(pool, TimedPool):
        pool.on_wait = observe


def create_engine(
    settings: Settings,
    *,
    url: str | None = None,
    statement_timeout_ms: int | None = None,
    application_name: str = "medbook",
    ping_after_idle_seconds: float = PING_AFTER_IDLE_SECONDS,
) -> AsyncEngine:
    """Create a pooled asyncpg engine with medbook's timeouts.

    Args:
        settings: pool sizes and timeouts.
        url: another database URL (the read replica); the primary when omitted.
        statement_timeout_ms: a longer limit for analytics and exports.
        application_name: shown in pg_stat_activity, to tell web, worker and jobs apart.
        ping_after_idle_seconds: validate a connection on checkout only when it has been
            idle in the pool at least this long (see `_validate_idle_connections`).
    """
    timeout = statement_timeout_ms or settings.statement_timeout_ms
    idle_timeout = settings.idle_in_transaction_timeout_ms
    pooled = behind_transaction_pooler(settings)
    server_settings = {"application_name": application_name, "timezone": "UTC"}
    if not pooled:
        # Startup parameters: set once per connection, which is a server session of its own.
        server_settings["statement_timeout"] = str(timeout)
        server_settings["idle_in_transaction_session_timeout"] = str(idle_timeout)
    engine = create_async_engine(
        url or settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_recycle=settings.db_pool_recycle,
        poolclass=TimedPool,
        connect_args={
            "server_settings": server_settings,
            # Client-side bound a little above the server's, in case the server is gone
            # (behind a transaction pooler, the only bound on a statement run outside a
            # transaction: see `_set_timeouts_per_transaction`).
            "command_timeout": timeout / 1000 + 5,
            "timeout": 10,
            **driver_options(settings),
            # SQLAlchemy's own cache of prepared statements (an asyncpg dialect option).
            **({"prepared_statement_cache_size": 0} if pooled else {}),
        },
        # Read back by `driver_fetchrow`, which times its statements itself.
        execution_options={SLOW_QUERY_OPTION: settings.slow_query_ms},
    )
    if pooled:
        _set_timeouts_per_transaction(engine, timeout, idle_timeout)
    _validate_idle_connections(engine, ping_after_idle_seconds)
    _log_slow_statements(engine)
    return engine


def behind_transaction_pooler(settings: Settings) -> bool:
    """True when DATABASE_POOL_MODE=transaction: a pooler (PgBouncer) hands each
    transaction whichever server connection is free, so nothing may outlive a transaction
    on it: no prepared statement, no SET, no session advisory lock, no LISTEN."""
    return settings.database_pool_mode == "transaction"


def driver_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for every `asyncpg.connect` to DATABASE_URL (the engines' and
    the command line's own).

    Behind a transaction pooler, asyncpg's statement cache is off: its named statements
    would stay on one server connection and collide on the next client's (`prepared
    statement "__asyncpg_stmt_1__" already exists`). asyncpg then uses the unnamed
    statement and sends its Parse again with each Bind, so no statement relies on a Parse
    sent in an earlier transaction.
    """
    return {"statement_cache_size": 0} if behind_transaction_pooler(settings) else {}


# Per transaction behind a transaction pooler: one statement, one round trip. `true`:
# local to the transaction (SET LOCAL), so the server connection goes back clean.
_SET_TIMEOUTS = (
    "SELECT set_config('statement_timeout', '{statement}', true),"
    " set_config('idle_in_transaction_session_timeout', '{idle}', true)"
)


def _set_timeouts_per_transaction(engine: AsyncEngine, statement_ms: int, idle_ms: int) -> None:
    """Behind a transaction pooler, S-4's timeouts are set at the start of every
    transaction (SET LOCAL): a pooler refuses them as startup parameters (PgBouncer:
    `unsupported startup parameter: statement_timeout`), and a session-level SET would
    stay on a server connection that the next transaction may be another client's.

    A statement run outside a transaction (autocommit: a booking's one batch, an
    availability cache miss through `driver_fetchrow`) gets no server-side timeout from
    here: asyncpg's `command_timeout` (the statement timeout plus 5 s) cancels it from the
    client; docs/deploy.md has the server-side backstop (`ALTER ROLE … SET`).
    """
    statement = _SET_TIMEOUTS.format(statement=int(statement_ms), idle=int(idle_ms))

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            return  # no transaction to set them in: each statement is its own
        conn.exec_driver_sql(statement)


def _validate_idle_connections(engine: AsyncEngine, idle_seconds: float) -> None:
    """Ping a connection on checkout only if it sat idle in the pool for `idle_seconds`.

    M-5 asks for connection validation. SQLAlchemy's `pool_pre_ping` pings on *every*
    checkout, and for asyncpg a ping is three round trips (BEGIN, an empty statement,
    ROLLBACK: the dialect wraps it in a transaction for pgbouncer), on every request that
    touches the database. A connection that was in use a moment ago is alive
    as far as any ping could tell, so, like HikariCP's alive-bypass window, we ping only
    connections idle for a while: those are the ones a firewall or a restart can have
    cut. A failed ping raises `DisconnectionError`, and the pool replaces the connection
    and retries the checkout, so the request never sees it. A connection that dies within
    the window fails its statement instead; SQLAlchemy then invalidates the whole pool
    (every older connection is replaced), so a server restart costs at most the requests
    in flight, as it would with a ping per checkout.
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def _checkin(dbapi_connection: Any, record: Any) -> None:
        record.info["medbook_idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        idle_since = record.info.pop("medbook_idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return  # new, or in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError("connection failed its ping; replacing it") from exc


def _slow_query_ms(engine: AsyncEngine) -> int:
    """The engine's slow-query threshold in ms (0: no log), set once by `create_engine`."""
    return int(engine.sync_engine.get_execution_options().get(SLOW_QUERY_OPTION, 0))


def _log_if_slow(threshold_ms: int, started: float, statement: str) -> None:
    elapsed_ms = (time.perf_counter() - started) * 1000
    if threshold_ms and elapsed_ms >= threshold_ms:
        # The statement text is the normalised form: values are bound, never inlined.
        slow_log.warning("slow query %.1f ms: %s", elapsed_ms, " ".join(statement.split())[:2000])


def _log_slow_statements(engine: AsyncEngine) -> None:
    threshold_ms = _slow_query_ms(engine)
    if threshold_ms <= 0:
        return

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _start(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool):
        conn.info.setdefault("medbook_query_start", []).append(time.perf_counter())

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def _end(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool):
        _log_if_slow(threshold_ms, conn.info["medbook_query_start"].pop(), statement)


async def driver_fetchrow(engine: AsyncEngine, query: str, *args: Any) -> Any:
    """One row of a read-only statement, run straight through asyncpg on a connection
    checked out of `engine`'s pool: asyncpg's own prepared-statement cache, no
    transaction (PostgreSQL runs a lone statement in its own), none of SQLAlchemy's
    Connection, cursor and result layers. For the hottest read (an availability cache
    miss): the layers cost a third of the query's time in process, and the Connection
    around a checkout doubles the CPU of the checkout and return (bench/README.md).
    The connection is still the pool's: checkout pings, recycling and the pool-wait
    metric apply. The slow-query log applies too; a connection that failed other than by
    the server refusing the statement is invalidated (replaced), as SQLAlchemy does for
    its own.

    Args:
        engine: whose pool lends the connection for this one statement.
        query: SQL with asyncpg's $1, $2 ... placeholders.
    """
    return await _on_pooled(engine, query, args, one=True)


async def driver_fetchall(engine: AsyncEngine, query: str, *args: Any) -> list:
    """Every row (asyncpg Records) of a read-only statement, run as `driver_fetchrow`
    runs it: on a pooled connection, outside any transaction and session."""
    return await _on_pooled(engine, query, args, one=False)


async def driver_execute(engine: AsyncEngine, query: str, *args: Any) -> None:
    """One statement that writes, run as `driver_fetchrow` runs a read: on a pooled
    connection, outside any session, its own transaction (all of it or nothing)."""
    await _on_pooled(engine, query, args, one=True)


async def _on_pooled(engine: AsyncEngine, query: str, args: Sequence[Any], *, one: bool) -> Any:
    return await greenlet_spawn(_run_pooled, engine, query, args, one)


def _run_pooled(engine: AsyncEngine, query: str, args: Sequence[Any], one: bool) -> Any:
    """Check out, run, return, in one greenlet: SQLAlchemy's pool is sync code that
    awaits through a greenlet, and one for the checkout and the return both costs ~10 µs
    less a statement than one each (bench/README.md, cpu17f)."""
    pooled = engine.sync_engine.raw_connection()
    try:
        driver = pooled.driver_connection
        assert driver is not None
        started = time.perf_counter()
        try:
            row = await_(driver.fetchrow(query, *args) if one else driver.fetch(query, *args))
        except asyncpg.PostgresError as exc:  # the server refused the statement
            if isinstance(exc, asyncpg.PostgresConnectionError) or driver.is_closed():
                pooled.invalidate()
            raise
        except BaseException:
            # Anything else leaves the connection's protocol state unknown (a dead backend
            # mid-exchange, a cancellation mid-statement): it is not given out again.
            pooled.invalidate()
            raise
    finally:
        pooled.close()  # back to the pool (or, invalidated, dropped)
    _log_if_slow(_slow_query_ms(engine), started, query)
    return row


async def driver_fetchmany(connection: AsyncConnection, query: str, args: list[tuple]) -> list:
    """The rows of one statement run once per tuple of `args`, sent together straight
    through asyncpg on `connection`: one round trip, and one transaction (the connection's
    own, or PostgreSQL's implicit one around the batch, committed at its end). Each run
    takes a fresh snapshot (READ COMMITTED). The slow-query log applies.

    Args:
        query: SQL with asyncpg's $1, $2 ... placeholders.
    """
    return await (await connection_statements(connection)).fetchmany(query, args)


def session_factory(engine: AsyncEngine) -> async_sessionmaker:
    """Sessions that keep loaded objects usable after commit (rendering happens after)."""
    return async_sessionmaker(engine, expire_on_commit=False)


# A bind parameter of a `text()` statement, as SQLAlchemy's own TextClause finds them
# (`::type` casts and `\:` escapes are not parameters).
_BIND = re.compile(r"(?<![:\w\x5c]):(\w+)(?![:\w])")


@dataclass(frozen=True, slots=True)
class NativeStatement:
    """A `text()` statement in asyncpg's $1, $2 ... placeholders, for `driver_fetch`:
    the same SQL without SQLAlchemy's execution, result and row layers, which cost more
    CPU than the driver's own work for a hot one-statement request (bench/README.md)."""

    sql: str
    names: tuple[str, ...]  # the parameter of each placeholder, $1 first

    @classmethod
    def of(cls, statement: str | TextClause) -> NativeStatement:
        source = statement.text if isinstance(statement, TextClause) else statement
        names: list[str] = []

        def placeholder(match: re.Match[str]) -> str:
            if match[1] not in names:
                names.append(match[1])
            return f"${names.index(match[1]) + 1}"

        return cls(_BIND.sub(placeholder, source), tuple(names))

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[name] for name in self.names]


async def driver_fetch(connection: AsyncConnection, query: str, args: Sequence[Any]) -> list:
    """The rows (asyncpg Records: by name or position) of one statement run straight
    through asyncpg on `connection`: its transaction, or in autocommit PostgreSQL's
    implicit one around the statement. The slow-query log applies.

    Args:
        query: SQL with asyncpg's $1, $2 ... placeholders (`NativeStatement`).
    """
    return await (await connection_statements(connection)).fetch(query, args)


class DriverStatements:
    """Statements straight through one asyncpg connection, each timed for the slow-query
    log: a pooled connection's outside any session (`pooled_statements`), or a session's
    (`connection_statements`)."""

    __slots__ = ("driver", "slow_ms")

    def __init__(self, driver: asyncpg.Connection, slow_ms: int) -> None:
        self.driver = driver
        self.slow_ms = slow_ms

    async def fetch(self, query: str, args: Sequence[Any]) -> list:
        started = time.perf_counter()
        rows = await self.driver.fetch(query, *args)
        _log_if_slow(self.slow_ms, started, query)
        return rows

    async def fetchmany(self, query: str, args: list[tuple]) -> list:
        """One run per tuple of `args`, sent together: one round trip (`driver_fetchmany`)."""
        started = time.perf_counter()
        rows = await self.driver.fetchmany(query, args)
        _log_if_slow(self.slow_ms, started, query)
        return rows


async def connection_statements(connection: AsyncConnection) -> DriverStatements:
    """`DriverStatements` on a session's or engine's connection (its transaction, if any)."""
    driver = (await connection.get_raw_connection()).driver_connection
    assert driver is not None
    return DriverStatements(driver, _slow_query_ms(connection.engine))


# What leaves a connection in an unknown state: it is replaced, not given out again.
_BROKEN = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
    asyncio.CancelledError,
)


@asynccontextmanager
async def pooled_statements(engine: AsyncEngine) -> AsyncIterator[DriverStatements]:
    """A connection of `engine`'s pool for a few statements outside any session and
    transaction (each its own, in autocommit), as `driver_fetchrow` lends one for one; back
    to the pool at the end, or replaced when it failed as a connection (an error of the
    caller's own, a refused request, leaves it usable)."""
    pooled = await engine.raw_connection()
    driver = pooled.driver_connection
    assert driver is not None
    try:
        yield DriverStatements(driver, _slow_query_ms(engine))
    except BaseException as exc:
        if isinstance(exc, _BROKEN) or driver.is_closed():
            await greenlet_spawn(pooled.invalidate)
        raise
    finally:
        await greenlet_spawn(pooled.close)
