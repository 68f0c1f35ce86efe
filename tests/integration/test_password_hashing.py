"""argon2 runs in threads, off the event loop: a burst of sign-ins neither stalls the other
requests of the process nor piles up without bound (issue #17)."""

import asyncio
import dataclasses
import gc
import threading
import time

import httpx
import pytest
from litestar.testing import AsyncTestClient

from app.access import passwords
from app.errors import BUSY, Overloaded, outage
from app.web.asgi import create_app
from conftest import PRODUCTION_ARGON2, LiveServer
from tests.integration.world import PASSWORD, make_world

ROOMY = {  # admission and the sign-in rate limit let a whole burst in: hashing is measured
    "ADMISSION_MAX_IN_FLIGHT": "100",
    "ADMISSION_MAX_QUEUE": "100",
    "RATE_LIMIT_AUTH_PER_MINUTE": "1000",
    **PRODUCTION_ARGON2,  # what a sign-in costs in production, not the suite's cheap hash
}


@pytest.fixture
async def server(db, redis):
    # `redis` empties the run's Redis: no Principal cached by an earlier test's world.
    server = LiveServer(env=ROOMY)
    yield server
    server.stop()


def credentials(n):
    return {"email": f"p{n}@t.test", "password": PASSWORD}


async def test_a_cheap_request_is_served_while_twenty_sign_ins_hash(
    server, session, settings, production_argon2
):
    # Hashes made at production's parameters: a verification costs what it does there.
    password_hash = passwords.hash_password(PASSWORD)
    world = await make_world(session, settings.secret_key, patients=20, password_hash=password_hash)
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        sign_ins = [
            asyncio.create_task(http.post("/api/auth/token", json=credentials(n)))
            for n in range(20)
        ]
        loop = asyncio.get_running_loop()
        answered: dict[asyncio.Task, float] = {}
        for task in sign_ins:
            task.add_done_callback(lambda t: answered.setdefault(t, loop.time()))
        # Once the first has come back, the others are at (or queued for) their hashing:
        # two threads, each hash tens of milliseconds of CPU or more (those beyond what
        # the queue may hold are refused at once, HASH_QUEUE_SECONDS). The cheap request
        # must not wait for the hashes, as it did when they ran on the event loop.
        await asyncio.wait(sign_ins, return_when=asyncio.FIRST_COMPLETED)
        me = await http.get("/api/auth/me", headers=world.headers("desk"))
        me_answered = loop.time()
        answers = await asyncio.gather(*sign_ins)
    assert me.status_code == 200, me.text
    hashed = [answered[t] for t, a in zip(sign_ins, answers, strict=True) if a.status_code == 200]
    assert hashed and me_answered < max(hashed), "the cheap request waited for every hash"
    # Each sign-in is answered: signed in, or (on a machine too busy to start its hash
    # within HASH_MAX_WAIT_SECONDS) refused at once with 503 + Retry-After.
    assert all(
        a.status_code == 200 or (a.status_code == 503 and a.headers["retry-after"]) for a in answers
    ), [a.status_code for a in answers]
    assert any(a.status_code == 200 for a in answers)


async def test_a_sign_in_beyond_the_queue_is_shed_with_503_and_retry_after(
    db, redis, session, settings, monkeypatch
):
    """One hashing thread, held busy, and no room to wait: the sign-in is refused at once
    with 503 + Retry-After; once the thread is free, the same sign-in succeeds."""
    await make_world(session, settings.secret_key, patients=1)
    pool = passwords.HashPool(threads=1, waiting=0)
    monkeypatch.setattr(passwords, "pool", pool)
    started, release = threading.Event(), threading.Event()

    def hold() -> str:
        started.set()
        release.wait()
        return "held"

    roomy = dataclasses.replace(settings, rate_limit_auth_per_minute=1000)
    async with AsyncTestClient(app=create_app(roomy)) as client:
        busy = asyncio.create_task(pool.run(hold))
        await asyncio.to_thread(started.wait)
        try:
            refused = await client.post("/api/auth/token", json=credentials(0))
        finally:
            release.set()
        assert await busy == "held"
        admitted = await client.post("/api/auth/token", json=credentials(0))
    assert refused.status_code == 503, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    assert admitted.status_code == 200, admitted.text


def test_an_overloaded_process_is_busy_not_a_bug():
    assert outage(Overloaded("too many sign-ins at once")) == BUSY


async def test_a_hash_no_thread_takes_in_time_is_refused_and_skipped():
    """No thread free within max_wait: the sign-in is refused while the thread is still
    busy (it did not wait for it), and its hash is never computed afterwards."""
    pool = passwords.HashPool(threads=1, waiting=5, max_wait=0.2)
    started, release = threading.Event(), threading.Event()
    computed: list[str] = []

    def hold() -> str:
        started.set()
        release.wait()
        return "held"

    def late() -> str:
        computed.append("late")
        return "late"

    loop = asyncio.get_running_loop()
    unhandled: list[dict] = []
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    busy = asyncio.create_task(pool.run(hold))
    await asyncio.to_thread(started.wait)
    try:
        with pytest.raises(Overloaded):
            await pool.run(late)
        assert not release.is_set() and not busy.done()  # refused while the thread was busy
    finally:
        release.set()
    assert await busy == "held"
    assert await pool.run(lambda: "next") == "next"  # the thread went past the skipped one
    assert computed == []
    gc.collect()  # a future whose exception nobody read is reported when collected
    loop.set_exception_handler(None)
    assert unhandled == []


async def test_a_sign_in_that_would_wait_longer_than_the_queue_allows_is_refused_at_once():
    """Hashes have been taking 0.2 s and the one thread is busy: a sign-in that would wait
    longer than max_queue_seconds for it is refused at once, though the queue has room and
    its max_wait is far off; with a pool that allows the wait, it is queued and computed."""
    started, release = threading.Event(), threading.Event()

    def hold() -> str:
        started.set()
        release.wait()
        return "held"

    for max_queue, refused in ((0.1, True), (0.5, False)):
        pool = passwords.HashPool(threads=1, waiting=5, max_wait=30, max_queue_seconds=max_queue)
        pool.hash_seconds = 0.2  # the recent pace
        started.clear()
        release.clear()
        busy = asyncio.create_task(pool.run(hold))
        await asyncio.to_thread(started.wait)
        try:
            if refused:
                with pytest.raises(Overloaded):
                    await pool.run(lambda: "late")
                assert not busy.done()  # refused while the thread was still busy
            else:
                queued = asyncio.create_task(pool.run(lambda: "queued"))
                await asyncio.sleep(0.05)
                assert not queued.done()  # waiting for the thread, not refused
        finally:
            release.set()
        assert await busy == "held"
        if not refused:
            assert await queued == "queued"


async def test_the_pace_of_hashes_is_learnt_from_the_threads():
    pool = passwords.HashPool(threads=1)
    assert pool.hash_seconds == 0
    await pool.run(time.sleep, 0.05)  # type: ignore[arg-type]
    first = pool.hash_seconds
    assert first >= 0.045  # the first sample is the pace (weighted in from 0 it was a fifth)
    await pool.run(lambda: None)
    assert first * 0.75 <= pool.hash_seconds < first  # later ones are weighted in


async def test_before_the_pace_is_known_one_round_of_hashes_may_wait():
    """A new process knows no pace: with both threads busy, as many sign-ins as there
    are threads may wait for them, and the next is refused at once (not the whole queue
    of HASH_WAITING, each waiting for the hashes ahead of it)."""
    pool = passwords.HashPool(threads=2, waiting=30, max_wait=30)
    started, release = threading.Semaphore(0), threading.Event()

    def hold() -> str:
        started.release()
        release.wait()
        return "held"

    busy = [asyncio.create_task(pool.run(hold)) for _ in range(2)]
    for _ in range(2):
        await asyncio.to_thread(started.acquire)
    try:
        queued = [asyncio.create_task(pool.run(lambda: "queued")) for _ in range(2)]
        await asyncio.sleep(0)  # both entered the pool and wait for a thread
        late = asyncio.create_task(pool.run(lambda: "late"))
        await asyncio.sleep(0)
        assert late.done()  # refused at once, not queued behind them
        assert isinstance(late.exception(), Overloaded)
        assert not any(task.done() for task in busy + queued)
    finally:
        release.set()
    assert await asyncio.gather(*busy) == ["held", "held"]
    assert await asyncio.gather(*queued) == ["queued", "queued"]
    assert pool.hash_seconds > 0  # the pace is known now
