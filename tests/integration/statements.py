"""Which statements an engine's connections sent: through SQLAlchemy (its
`before_cursor_execute` event) and straight through asyncpg (`db.session.driver_fetch`
and the like, which that event does not see: asyncpg's query loggers do, and they see
BEGIN and COMMIT, not the prepared statements SQLAlchemy runs)."""

from __future__ import annotations

import asyncio
import functools

from sqlalchemy import event


class Statements(list):
    """Every statement sent on an engine's connections while watched, with whether its
    connection was in a transaction when it was sent."""

    def __init__(self, engine) -> None:
        super().__init__()
        self.engine = engine
        self.loggers: dict[int, tuple[object, object]] = {}  # id -> connection, its logger
        self.open: set[int] = set()  # connections between a BEGIN and its end

    def before(self, conn, cursor, statement, params, context, many) -> None:
        self.append((statement, conn.connection.driver_connection.is_in_transaction()))

    def checkout(self, dbapi_connection, record, proxy) -> None:
        driver = record.driver_connection
        if id(driver) not in self.loggers:
            logger = functools.partial(self.logged, id(driver))
            self.loggers[id(driver)] = (driver, logger)
            driver.add_query_logger(logger)

    def logged(self, connection: int, query) -> None:
        """asyncpg's log of a statement it ran, after it ran: in a transaction when sent
        after a BEGIN and before its COMMIT or ROLLBACK."""
        words = query.query.strip().upper()
        if words.startswith("BEGIN"):
            self.open.add(connection)
        self.append((query.query, connection in self.open))
        if words.startswith(("COMMIT", "ROLLBACK")):
            self.open.discard(connection)

    async def settled(self) -> Statements:
        """The list once asyncpg has called the loggers: it schedules them with `call_soon`
        on its connection's loop, which for the `client` fixture's app is another thread's
        (conftest.py's SharedApp runs on a portal), so a response can reach the test before
        that loop has run them. A step run on each such loop after them says they have."""
        here = asyncio.get_running_loop()
        for loop in {driver._loop for driver, _ in self.loggers.values()}:
            if loop is here:
                for _ in range(3):
                    await asyncio.sleep(0)
            else:
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop))
        return self

    def stop(self) -> None:
        event.remove(self.engine.sync_engine, "checkout", self.checkout)
        event.remove(self.engine.sync_engine, "before_cursor_execute", self.before)
        for driver, logger in self.loggers.values():
            driver.remove_query_logger(logger)


def watch(engine) -> Statements:
    """Start watching what `engine`'s connections send (`.stop()` ends it)."""
    statements = Statements(engine)
    event.listen(engine.sync_engine, "checkout", statements.checkout)
    event.listen(engine.sync_engine, "before_cursor_execute", statements.before)
    return statements
