"""A Principal not in Redis is read with PRINCIPAL_SQL straight through asyncpg: the same
Principal `load_principal` reads through SQLAlchemy, for every role, and none for a
deactivated user; once read it is cached."""

import pytest
from sqlalchemy import update

from app.access.identity import _keys, cached_principal, load_principal
from db.models import User
from tests.integration.world import make_world


@pytest.fixture
async def world(session, settings):
    return await make_world(session, settings.secret_key, patients=2)


async def test_a_cache_miss_reads_what_load_principal_reads(db, session, redis, world):
    for name, user in world.users.items():
        assert await redis.get(_keys(user.id)[0]) is None
        missed, _, _ = await cached_principal(redis, db, user.id)
        expected = await load_principal(session, user.id)
        assert expected is not None and missed == expected, name
        assert await redis.get(_keys(user.id)[0]) is not None  # cached for the next request
        hit, _, _ = await cached_principal(redis, db, user.id)
        assert hit == expected, name
    doctor, _, _ = await cached_principal(redis, db, world.users["doctor"].id)
    patient, _, _ = await cached_principal(redis, db, world.users["patient1"].id)
    assert doctor is not None and doctor.timezone == "Europe/Berlin"  # the clinic's, joined
    assert patient is not None and patient.patient_id == world.patients[1]


async def test_a_deactivated_user_has_no_principal(db, session, redis, world):
    user = world.users["patient0"]
    await session.execute(update(User).where(User.id == user.id).values(is_active=False))
    await session.commit()
    assert await cached_principal(redis, db, user.id) == (None, None, {})
    assert await load_principal(session, user.id) is None
    assert await redis.get(_keys(user.id)[0]) is None


async def test_a_cached_entry_that_is_not_a_principal_is_read_again(db, session, redis, world):
    user = world.users["doctor"]
    expected = await load_principal(session, user.id)
    await redis.set(_keys(user.id)[0], b'{"id": "not a number"}')
    assert (await cached_principal(redis, db, user.id))[0] == expected
    await redis.set(_keys(user.id)[0], b"not json")
    assert (await cached_principal(redis, db, user.id))[0] == expected


async def test_a_cached_entry_without_the_later_fields_gets_their_defaults(db, redis, world):
    user = world.users["patient0"]
    older = b'{"id": %d, "email": "p@example.org", "role": "patient", "patient_id": 5}' % user.id
    await redis.set(_keys(user.id)[0], older)
    principal, _, _ = await cached_principal(redis, db, user.id)
    assert principal is not None
    assert (principal.email, principal.patient_id, principal.timezone) == ("p@example.org", 5, None)
