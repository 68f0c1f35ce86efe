"""The pool's cheaper check of the connection it hands out (app/redis.py `ReadyPool`): a
connection left with a reply nobody read, or closed by the server, is replaced before a
command goes on it, as with redis-py's own check; a clean one is handed out with no read.
Real Redis."""

import asyncio

from app.redis import ReadyPool, create_redis


async def test_a_stale_reply_is_never_read_as_the_next_commands(redis):
    assert isinstance(redis.connection_pool, ReadyPool)
    await redis.set("k", "value")
    connection = await redis.connection_pool.get_connection()
    await connection.send_command("PING")  # its reply is left unread
    await asyncio.sleep(0.05)  # the loop reads it into the connection's buffer
    await redis.connection_pool.release(connection)
    assert await redis.get("k") == b"value"
    assert await redis.ping() is True


async def test_a_connection_the_server_closed_is_replaced(redis, settings):
    await redis.set("k", "value")
    client_id = await redis.client_id()
    killer = create_redis(settings)
    try:
        # The pool's one idle connection is the one that asked for its id.
        assert await killer.execute_command("CLIENT KILL ID", client_id) in (1, b"1", True)
    finally:
        await killer.aclose()
    await asyncio.sleep(0.05)  # the loop sees the end of the stream
    assert await redis.get("k") == b"value"
    assert await redis.client_id() != client_id


async def test_a_clean_connection_is_handed_out_without_a_read(redis, monkeypatch):
    await redis.ping()
    reads = 0
    connection = await redis.connection_pool.get_connection()
    real = type(connection).can_read_destructive

    async def counted(self):  # type: ignore[no-untyped-def]
        nonlocal reads
        reads += 1
        return await real(self)

    await redis.connection_pool.release(connection)
    monkeypatch.setattr(type(connection), "can_read_destructive", counted)
    for _ in range(5):
        await redis.ping()
    assert reads == 0
