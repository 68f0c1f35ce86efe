"""One pipelined Redis connection per process, for the command every request sends (the
authentication script, app/access/identity.py).

redis-py spends 30-40 µs of CPU on a command here besides the send (its pool's get and
release, retry wrapper, observability recorder, event dispatcher), against ~12 µs for a
bare protocol, and ~4 µs when a few requests' commands share one send
(bench/README.md, cpu17f). This client writes the commands of one turn of the event loop
in one send and reads replies in order from one connection; a caller that gives up
(cancelled) leaves its reply to be read and dropped, so the stream never loses its
place. Its errors are redis-py's (`ConnectionError`, `TimeoutError`, `NoScriptError`...),
so whoever handles an outage of redis-py's client handles this one's the same way.

Not here: anything that blocks (BLPOP), pub/sub, MULTI, or a reply that must be
decoded; those stay on redis-py (`app/redis.py`). `rediss://` URLs get redis-py's client
(`create_request_redis`).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.redis import HEALTH_CHECK_INTERVAL, client_options, redis_from_url, sentinel_options
from app.settings import Settings, sentinel_target


class Commands(Protocol):
    """What `app.redis_scripts.Script` and the authentication step need of a client:
    redis-py's `Redis` and `PipelinedRedis` both."""

    async def execute_command(self, *args: Any, **options: Any) -> Any: ...

    async def aclose(self) -> None: ...


Address = tuple[str, int] | str  # host and port, or a Unix socket's path


class _Line(asyncio.Protocol):
    """One connection: commands out in order, replies matched to them in order."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.unsent: list[bytes] = []
        self.transport: Any = None  # uvloop's transports are no asyncio.Transport
        self.lost: RedisError | None = None
        self.watchdog: asyncio.TimerHandle | None = None
        self.last_reply = time.monotonic()
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                future, _ = self.waiting.popleft()
                if future.done():  # its caller gave up (cancelled): the reply is dropped
                    continue
                if isinstance(reply, ResponseError):
                    future.set_exception(BaseParser.parse_error(str(reply)))
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # not Redis, or a reply unasked
            self.fail(RedisConnectionError(f"Redis reply not understood: {exc!r}"))
            return
        self.last_reply = time.monotonic()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"Connection to Redis lost: {exc or 'closed'}"))

    def call(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        """Queue one command; it goes out with the others of this turn of the loop."""
        if self.lost is not None:
            raise _copy(self.lost)
        future = self.loop.create_future()
        deadline = self.loop.time() + self.timeout
        if not self.waiting and self.watchdog is None:
            self.watchdog = self.loop.call_at(deadline, self._check_deadline)
        self.waiting.append((future, deadline))
        if not self.unsent:
            self.loop.call_soon(self._send)
        self.unsent.append(hiredis.pack_command(args))
        return future

    def _send(self) -> None:
        unsent, self.unsent = self.unsent, []
        if self.lost is None and self.transport is not None:
            self.transport.write(b"".join(unsent))

    def _check_deadline(self) -> None:
        """The oldest command's reply is overdue: the connection is stuck (replies come in
        order, so no later one can come first) and is given up with everything on it."""
        self.watchdog = None
        if not self.waiting:
            return
        oldest = self.waiting[0][1]
        if oldest <= self.loop.time():
            self.fail(RedisTimeoutError("Timeout reading from Redis"))
        else:
            self.watchdog = self.loop.call_at(oldest, self._check_deadline)

    def fail(self, error: RedisError) -> None:
        """Close the connection and fail every command still waiting with `error`."""
        if self.lost is None:
            self.lost = error
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(_copy(error))
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.abort()

    def idle_too_long(self) -> bool:
        """Nothing asked for and nothing heard for HEALTH_CHECK_INTERVAL: a firewall or a
        restart may have cut it without a word (redis-py PINGs such a connection)."""
        return not self.waiting and time.monotonic() - self.last_reply > HEALTH_CHECK_INTERVAL


class PipelinedRedis:
    """A client of one connection, opened on first use and again after it fails.

    A command that fails because an established connection broke (Redis restarted, a
    failover) is sent once more on a new one; a refused connection or a reply later than
    `timeout` fails at once with redis-py's error, and the next command tries again.
    """

    def __init__(
        self,
        address: Callable[[], Awaitable[Address]],
        *,
        timeout: float,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self._address = address
        self._timeout = timeout
        self._greeting: list[tuple[Any, ...]] = []
        if password is not None:
            self._greeting.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            self._greeting.append(("SELECT", db))
        self._line: _Line | None = None
        self._connecting: asyncio.Future[_Line] | None = None
        self._closed = False

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Send one command and return its reply as redis-py would with undecoded replies
        (bytes, ints and lists of them). Raises redis-py's errors."""
        line = self._line
        if line is None or line.lost is not None or line.idle_too_long():
            return await _call(await self._connected(line), args)
        try:
            return await _call(line, args)
        except RedisConnectionError:
            if line.lost is None:  # an error reply (LOADING...), not a broken connection
                raise
        return await _call(await self._connected(line), args)

    async def _connected(self, stale: _Line | None) -> _Line:
        """A working connection: the current one unless it is `stale`, else a new one.
        Callers that find the same stale connection share one attempt, which a caller's
        cancellation does not cancel."""
        if self._closed:
            raise RedisConnectionError("this Redis client is closed")
        current = self._line
        if current is not None and current is not stale and current.lost is None:
            return current
        if stale is not None and stale.lost is None:
            stale.fail(RedisConnectionError("Connection to Redis replaced"))
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(self._connect_done)
        return await asyncio.shield(self._connecting)

    def _connect_done(self, attempt: asyncio.Future[_Line]) -> None:
        self._connecting = None
        if not attempt.cancelled() and attempt.exception() is None:
            self._line = attempt.result()

    async def _connect(self) -> _Line:
        loop = asyncio.get_running_loop()
        # The sentinels are asked with their own timeout each (a dead one is skipped for
        # the next), so the asking is not inside this connection's.
        address = await self._address()
        try:
            async with asyncio.timeout(self._timeout):
                if isinstance(address, str):
                    _, line = await loop.create_unix_connection(
                        lambda: _Line(self._timeout), address
                    )
                else:
                    _, line = await loop.create_connection(lambda: _Line(self._timeout), *address)
                try:
                    for reply in await asyncio.gather(*(line.call(g) for g in self._greeting)):
                        if reply != b"OK":
                            raise RedisConnectionError(f"Redis refused the connection: {reply!r}")
                except BaseException:
                    line.fail(RedisConnectionError("Redis refused the connection"))
                    raise
        except TimeoutError as exc:
            raise RedisTimeoutError(f"Timeout connecting to Redis: {exc!r}") from exc
        except OSError as exc:
            raise RedisConnectionError(f"Error connecting to Redis: {exc!r}") from exc
        if self._closed:
            line.fail(RedisConnectionError("this Redis client is closed"))
            raise RedisConnectionError("this Redis client is closed")
        return line

    async def aclose(self) -> None:
        """Close the connection; commands still waiting fail with ConnectionError."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self._line is not None:
            self._line.fail(RedisConnectionError("this Redis client is closed"))
            self._line = None


def _copy(error: RedisError) -> RedisError:
    """One exception per caller: an instance raised in many tasks would gather every
    task's traceback on itself."""
    return type(error)(*error.args)


async def _call(line: _Line, args: tuple[Any, ...]) -> Any:
    try:
        return await line.call(args)
    except ReadOnlyError:  # a demoted primary: the next command connects to the new one
        line.fail(RedisConnectionError("Redis answered READONLY"))
        raise


def create_request_redis(settings: Settings) -> Commands:
    """The client for the command every request sends: a `PipelinedRedis` to REDIS_URL
    (`redis://`, `unix://` or `redis+sentinel://`: the primary the sentinels name at each
    connection), or for `rediss://` redis-py's pooled client with medbook's options."""
    url = settings.redis_url
    timeout = settings.redis_timeout
    target = sentinel_target(url)
    if target is not None:
        sentinel = Sentinel(
            target.sentinels,
            sentinel_kwargs=sentinel_options({"socket_connect_timeout": timeout}),
        )

        async def primary() -> Address:
            host, port = await sentinel.discover_master(target.service)
            return str(host), int(port)

        return PipelinedRedis(primary, timeout=timeout, db=target.db, password=target.password)
    parts = urlsplit(url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    username = unquote(parts.username) if parts.username else query.get("username")
    password = unquote(parts.password) if parts.password else query.get("password")
    if parts.scheme == "unix":
        path = unquote(parts.path)
        db = int(query.get("db", 0))

        async def socket_path() -> Address:
            return path

        return PipelinedRedis(
            socket_path, timeout=timeout, db=db, username=username, password=password
        )
    if parts.scheme == "redis":
        host, port = parts.hostname or "localhost", parts.port or 6379
        db = int(query.get("db") or parts.path.strip("/") or 0)

        async def host_port() -> Address:
            return host, port

        return PipelinedRedis(
            host_port, timeout=timeout, db=db, username=username, password=password
        )
    return redis_from_url(url, **client_options(settings, socket_timeout=timeout))
