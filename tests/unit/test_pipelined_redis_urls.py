"""Which client REDIS_URL gives the per-request Redis commands, and how it connects
(app/pipelined_redis.py `create_request_redis`)."""

from __future__ import annotations

import dataclasses

from redis.asyncio import Redis

from app.pipelined_redis import PipelinedRedis, create_request_redis
from app.settings import get_settings


def client_for(url: str):  # type: ignore[no-untyped-def]
    return create_request_redis(dataclasses.replace(get_settings(), redis_url=url))


async def test_a_tcp_url_gives_its_host_port_database_and_password():
    client = client_for("redis://:s%40cret@cache.internal:6380/3")
    assert isinstance(client, PipelinedRedis)
    assert await client._address() == ("cache.internal", 6380)
    assert client._greeting == [("AUTH", "s@cret"), ("SELECT", 3)]


async def test_a_user_and_the_default_database_need_no_select():
    client = client_for("redis://medbook:pw@cache/0")
    assert isinstance(client, PipelinedRedis)
    assert await client._address() == ("cache", 6379)
    assert client._greeting == [("AUTH", "medbook", "pw")]


async def test_a_unix_socket_url_gives_its_path_and_database():
    client = client_for("unix:///run/medbook/redis.sock?db=5")
    assert isinstance(client, PipelinedRedis)
    assert await client._address() == "/run/medbook/redis.sock"
    assert client._greeting == [("SELECT", 5)]


def test_a_sentinel_url_gives_a_pipelined_client_of_the_services_primary():
    client = client_for("redis+sentinel://:pw@s1:26379,s2:26379/medbook/2")
    assert isinstance(client, PipelinedRedis)
    assert client._greeting == [("AUTH", "pw"), ("SELECT", 2)]


def test_tls_stays_with_redis_py():
    assert isinstance(client_for("rediss://cache:6380/0"), Redis)
