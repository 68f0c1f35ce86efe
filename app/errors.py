"""Domain errors, which the web layer maps to 4xx answers, which failures of PostgreSQL
and Redis are outages (503), not bugs, and which are a value the database refuses (400)."""

from __future__ import annotations

import errno
import socket
from typing import Any

import asyncpg
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import TimeoutError as PoolTimeout


class DomainError(Exception):
    """A request that cannot be carried out, with a message a person can act on."""

    status_code = 400

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotFound(DomainError):
    status_code = 404


class Forbidden(DomainError):
    status_code = 403


class Conflict(DomainError):
    status_code = 409


class Invalid(DomainError):
    status_code = 422


class Overloaded(Exception):
    """This process already has as much of some work as it takes on (password hashing):
    answered like an overloaded database, 503 with Retry-After."""


# What a failure of PostgreSQL or Redis means for the request that met it (`outage`).
BUSY = "busy"  # overloaded: no pool connection in time, a statement cancelled by its timeout
DOWN = "down"  # unreachable, restarting or refusing connections

# SQLSTATEs that say the database cannot serve now, not that the request is wrong.
_BUSY_STATES = frozenset({"57014", "53300"})  # statement timeout, too many connections
_DOWN_STATES = frozenset({"57P01", "57P02", "57P03"})  # shutdown, crash, still starting
# Socket errors of a peer that is down or unreachable (a full disk or a missing file is not).
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
    }
)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the errors it wraps (SQLAlchemy's `.orig`, then causes), at most six."""
    found: list[BaseException] = []
    error: BaseException | None = exc
    while error is not None and len(found) < 6:  # a chain is short; never follow a cycle
        found.append(error)
        error = getattr(error, "orig", None) or error.__cause__ or error.__context__
    return found


def refused_value(exc: BaseException) -> bool:
    """Whether `exc` is PostgreSQL's (or asyncpg's, before sending) refusal of a value: a
    data exception (SQLSTATE class 22) such as a number beyond bigint, a NUL in text or a
    date out of range. The request's fault (400), never a 500; routes bound their inputs
    first, so this is the last line, for a value no route check foresaw."""
    for error in _chain(exc):
        state = getattr(error, "sqlstate", None)
        if isinstance(state, str) and state.startswith("22"):
            return True
    return False


def outage(exc: BaseException) -> str | None:
    """Whether `exc`, or an error it wraps, says PostgreSQL or Redis cannot serve now: a
    503 with Retry-After, not a bug's 500.

    Args:
        exc: what a request raised (SQLAlchemy wraps the driver's error in `.orig`, and
            that one the asyncpg error in `__cause__`).

    Returns:
        BUSY, DOWN, or None for any other error.
    """
    for error in _chain(exc):
        if kind := _kind(error):
            return kind
    return None


def _kind(error: BaseException) -> str | None:
    if isinstance(error, PoolTimeout | Overloaded):
        return BUSY
    state = getattr(error, "sqlstate", None)
    if isinstance(state, str):
        if state in _BUSY_STATES:
            return BUSY
        if state.startswith("08") or state in _DOWN_STATES:  # class 08: connection errors
            return DOWN
    if isinstance(error, RedisConnectionError | RedisTimeoutError):
        return DOWN
    if getattr(error, "connection_invalidated", False):  # SQLAlchemy saw a disconnect
        return DOWN
    if isinstance(error, asyncpg.InterfaceError):  # asyncpg's own, on a connection it lost
        return DOWN if "connection is closed" in str(error) else None
    if isinstance(error, ConnectionError | TimeoutError | socket.gaierror):
        return DOWN
    # asyncio reports a refused connection to every address of a name (localhost: ::1 and
    # 127.0.0.1) as one OSError without an errno.
    if isinstance(error, OSError) and (
        error.errno in _NETWORK_ERRNOS or str(error).startswith("Multiple exceptions")
    ):
        return DOWN
    return None
