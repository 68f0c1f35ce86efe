"""Which failures are a dependency's outage (503) and which are bugs (500)."""

import errno

import asyncpg
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.errors import BUSY, DOWN, outage


def wrapped(driver_error: Exception) -> DBAPIError:
    """As SQLAlchemy raises it: the adapted error in .orig, the driver's as its cause."""

    class Adapted(Exception):
        sqlstate = getattr(driver_error, "sqlstate", None)

    adapted = Adapted(str(driver_error))
    adapted.__cause__ = driver_error
    return DBAPIError("SELECT 1", {}, adapted)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (PoolTimeout("QueuePool limit reached"), BUSY),
        (wrapped(asyncpg.QueryCanceledError("canceling statement due to statement timeout")), BUSY),
        (wrapped(asyncpg.TooManyConnectionsError("too many clients")), BUSY),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"), DOWN),
        (OSError("Multiple exceptions: [Errno 111] Connect call failed"), DOWN),
        (wrapped(asyncpg.CannotConnectNowError("the database system is starting up")), DOWN),
        (wrapped(asyncpg.AdminShutdownError("terminating connection")), DOWN),
        (asyncpg.ConnectionDoesNotExistError("connection was closed"), DOWN),
        (asyncpg.InterfaceError("connection is closed"), DOWN),
        (RedisConnectionError("Error 111 connecting"), DOWN),
        (RedisTimeoutError("Timeout reading from socket"), DOWN),
        (TimeoutError(), DOWN),
    ],
)
def test_outages(error, kind):
    assert outage(error) == kind


@pytest.mark.parametrize(
    "error",
    [
        IntegrityError("INSERT", {}, Exception("duplicate key")),
        wrapped(asyncpg.UniqueViolationError("duplicate key")),
        wrapped(asyncpg.UndefinedTableError('relation "x" does not exist')),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        OSError(errno.ENOSPC, "No space left on device"),
        FileNotFoundError(errno.ENOENT, "No such file"),
        ResponseError("WRONGTYPE"),
        RuntimeError("a bug"),
    ],
)
def test_bugs_are_not_outages(error):
    assert outage(error) is None
