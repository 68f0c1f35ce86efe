"""The test run's Redis database claims (conftest.py): a number left by a killed run is
taken over, but not while something that run started is still connected to it, and a
claim whose pid now belongs to another process counts as abandoned."""

from __future__ import annotations

import os
import socket
from contextlib import ExitStack
from urllib.parse import urlsplit

import redis as redis_sync

import conftest
from conftest import CLAIM_KEY, _abandoned, _claim_redis_database, _holder, redis_database_url

SERVER = urlsplit(os.environ["REDIS_URL"])._replace(path="").geturl()


def claim(monkeypatch) -> tuple[int, ExitStack]:
    stack = ExitStack()
    monkeypatch.setattr(conftest, "_stack", stack)
    url = _claim_redis_database(SERVER)
    return int(urlsplit(url).path.strip("/")), stack


def test_a_reused_pid_or_a_dead_one_abandons_a_claim_and_a_live_one_does_not():
    me = _holder(os.getpid())
    assert not _abandoned(me)
    host, pid, started = me.split(":")
    assert _abandoned(f"{host}:{pid}:{float(started) - 100:.2f}")  # the pid, reused since
    assert _abandoned(f"{host}:{2**22 + 1}:1.00")  # no such process
    assert not _abandoned(f"elsewhere:{2**22 + 1}:1.00")  # another host's: not ours to judge
    assert not _abandoned(f"{host}:{os.getpid()}")  # the older form, a live pid


def test_a_number_a_killed_run_still_uses_is_passed_over_until_its_clients_leave(monkeypatch):
    number, stack = claim(monkeypatch)
    stack.close()  # released: the first free number, which the next claim would get
    claims = redis_sync.Redis.from_url(redis_database_url(SERVER, 0))
    key = CLAIM_KEY.format(number)
    # A killed run's claim (its pid gone) and its job worker, still connected.
    claims.set(key, f"{socket.gethostname()}:{2**22 + 1}:1.00", ex=60)
    stray = redis_sync.Redis.from_url(redis_database_url(SERVER, number))
    stray.ping()
    try:
        other, stack = claim(monkeypatch)
        stack.close()
        assert other != number
        stray.close()  # the stray process is gone
        again, stack = claim(monkeypatch)
        try:
            assert again == number  # the abandoned claim is taken over
            assert claims.get(key) == _holder(os.getpid()).encode()
        finally:
            stack.close()
        assert claims.get(key) is None  # and released
    finally:
        stray.close()
        if (held := claims.get(key)) and held.endswith(b":1.00"):
            claims.delete(key)
        claims.close()
