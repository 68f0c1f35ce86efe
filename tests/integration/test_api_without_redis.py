"""An API request while Redis is down: its Principal is read from PostgreSQL and its rate
limit fails open, as before the authentication script had a client of its own
(app/pipelined_redis.py); once Redis is back the Principal is cached there again."""

from __future__ import annotations

import dataclasses

import redis as redis_sync

from app.access.identity import _keys
from conftest import OwnRedis
from tests.integration.test_outages import app_client
from tests.integration.world import make_world


async def test_an_api_request_is_answered_while_redis_is_down(settings, session, tmp_path):
    world = await make_world(session, settings.secret_key, patients=1)
    await session.close()
    user = world.users["patient0"]
    headers = world.headers("patient0")
    own = OwnRedis(tmp_path)
    own.start()
    try:
        async with app_client(dataclasses.replace(settings, redis_url=own.url)) as client:
            assert (await client.get("/api/auth/me", headers=headers)).status_code == 200
            own.stop()
            down = await client.get("/api/auth/me", headers=headers)
            assert down.status_code == 200, down.text
            assert (down.json()["id"], down.json()["email"]) == (user.id, user.email)

            own.start()  # the same port and data
            direct = redis_sync.Redis.from_url(own.url)
            try:
                direct.delete(_keys(user.id)[0])
                back = await client.get("/api/auth/me", headers=headers)
                assert back.status_code == 200
                assert direct.get(_keys(user.id)[0]) is not None  # cached again
            finally:
                direct.close()
    finally:
        own.stop()
