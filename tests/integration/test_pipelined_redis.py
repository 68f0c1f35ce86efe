"""The per-request Redis client (app/pipelined_redis.py) on real Redis: replies matched to
their commands under concurrency and cancellation, redis-py's errors, a reply too late, a
connection the server closed, Redis stopped and back."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import time
from urllib.parse import quote

import pytest
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app import pipelined_redis
from app.pipelined_redis import PipelinedRedis, create_request_redis
from app.redis_scripts import Script
from conftest import OwnRedis, _redis_binary
from tests.processes import kill_process, start_process


@pytest.fixture
async def client(settings, redis):
    client = create_request_redis(settings)
    assert isinstance(client, PipelinedRedis)
    yield client
    await client.aclose()


async def test_concurrent_commands_each_get_their_own_reply(client, redis):
    await redis.set("shared", "x")

    async def one(i: int) -> tuple[object, object, object]:
        return (
            await client.execute_command("INCRBY", f"n:{i}", i),
            await client.execute_command("ECHO", f"echo {i}"),
            await client.execute_command("MGET", "shared", f"n:{i}", "missing"),
        )

    answers = await asyncio.gather(*(one(i) for i in range(200)))
    for i, answer in enumerate(answers):
        assert answer == (i, f"echo {i}".encode(), [b"x", str(i).encode(), None])
    # On the database the URL names (the `redis` fixture's): what it wrote is there.
    assert await redis.get("n:7") == b"7"


async def test_a_cancelled_caller_does_not_shift_the_replies(client):
    await client.execute_command("PING")  # connected
    first = asyncio.ensure_future(client.execute_command("ECHO", "first"))
    await asyncio.sleep(0)  # queued, maybe sent
    first.cancel()
    second = await client.execute_command("ECHO", "second")
    assert second == b"second"
    assert first.cancelled()
    assert await client.execute_command("ECHO", "third") == b"third"


async def test_error_replies_are_redis_pys_errors_and_the_connection_goes_on(client, redis):
    await redis.set("text", "x")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await client.execute_command("LPUSH", "text", "y")
    with pytest.raises(NoScriptError):
        await client.execute_command("EVALSHA", "0" * 40, 0)
    assert await client.execute_command("GET", "text") == b"x"


async def test_a_script_redis_forgot_is_loaded_through_it(client, redis):
    script = Script("return {KEYS[1], ARGV[1]}")
    assert await script(client, ["k"], ["v"]) == [b"k", b"v"]
    await redis.script_flush()
    assert await script(client, ["k"], [7]) == [b"k", b"7"]


async def test_a_connection_the_server_closed_is_replaced_without_an_error(client, redis):
    first_id = await client.execute_command("CLIENT", "ID")
    assert await redis.execute_command("CLIENT KILL ID", first_id) in (1, b"1", True)
    await asyncio.sleep(0.05)  # the loop sees the end of the stream
    assert await client.execute_command("ECHO", "after") == b"after"
    assert await client.execute_command("CLIENT", "ID") != first_id


async def test_a_command_sent_on_a_connection_that_breaks_is_sent_again(client, redis):
    first_id = await client.execute_command("CLIENT", "ID")
    # Killed while the command is on its way: the client learns of it from its reply's
    # absence, not before sending.
    await redis.execute_command("CLIENT KILL ID", first_id)
    assert await client.execute_command("INCR", "retried") == 1
    assert await client.execute_command("CLIENT", "ID") != first_id


async def test_an_idle_connection_is_replaced_before_use(client, monkeypatch):
    first_id = await client.execute_command("CLIENT", "ID")
    monkeypatch.setattr(pipelined_redis, "HEALTH_CHECK_INTERVAL", 0.01)
    await asyncio.sleep(0.05)
    assert await client.execute_command("CLIENT", "ID") != first_id


async def test_a_reply_later_than_the_timeout_fails_every_waiting_command():
    """A server that accepts and never answers (a cut link looks like this): each command
    fails with redis-py's TimeoutError near the timeout, not later, and so does the next."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def address() -> tuple[str, int]:
        return "127.0.0.1", port

    client = PipelinedRedis(address, timeout=0.2)
    try:
        started = time.monotonic()
        results = await asyncio.gather(
            *(client.execute_command("PING") for _ in range(5)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
        assert 0.2 <= elapsed < 5
        with pytest.raises(RedisTimeoutError):
            await client.execute_command("PING")
        assert len(accepted) == 2  # the stuck connection was given up, a new one made
    finally:
        await client.aclose()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_redis_stopped_fails_fast_and_the_client_recovers(settings, tmp_path):
    own = OwnRedis(tmp_path)
    own.start()
    client = create_request_redis(dataclasses.replace(settings, redis_url=own.url))
    try:
        assert await client.execute_command("SET", "k", "v") == b"OK"
        own.stop()
        started = time.monotonic()
        with pytest.raises(RedisConnectionError):
            await client.execute_command("GET", "k")
        assert time.monotonic() - started < settings.redis_timeout + 1
        own.start()  # the same port and data
        assert await client.execute_command("GET", "k") == b"v"
    finally:
        await client.aclose()
        own.stop()


async def test_a_closed_client_refuses_commands(client):
    await client.execute_command("PING")
    await client.aclose()
    with pytest.raises(RedisConnectionError):
        await client.execute_command("PING")


def test_it_works_on_uvloop_as_the_server_runs_it(settings, redis):
    """The server's loop is uvloop (the tests' is asyncio's): its transports are of other
    classes, and a failure in `connection_made` would only show as a timeout."""

    async def scenario() -> list[object]:
        client = create_request_redis(settings)
        try:
            return list(
                await asyncio.gather(*(client.execute_command("ECHO", str(i)) for i in range(20)))
            )
        finally:
            await client.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        started = time.monotonic()
        assert runner.run(scenario()) == [str(i).encode() for i in range(20)]
        assert time.monotonic() - started < settings.redis_timeout


async def test_a_unix_socket_url_as_the_embedded_redis_gives(settings, tmp_path):
    """`medbook demo`'s Redis listens on a unix socket (`unix://…?db=N`, app/embedded.py)."""
    sock = tmp_path / "redis.sock"
    process = start_process(
        [_redis_binary(), "--port", "0", "--unixsocket", str(sock), "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if sock.exists():
                break
            await asyncio.sleep(0.05)
        url = f"unix://{quote(str(sock))}?db=3"
        client = create_request_redis(dataclasses.replace(settings, redis_url=url))
        try:
            assert await client.execute_command("SET", "k", "on three") == b"OK"
            assert b" db=3 " in await client.execute_command("CLIENT", "INFO")
        finally:
            await client.aclose()
    finally:
        kill_process(process)
