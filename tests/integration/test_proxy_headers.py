"""Behind a TLS proxy the client's address comes from X-Forwarded-For, but only when the
peer is a trusted proxy (FORWARDED_ALLOW_IPS): the address feeds the per-address rate
limit and the audit trail, so believing anyone's header would let a caller pick theirs.

Both servers `medbook serve` can run are checked, through the anonymous rate limit.
"""

import httpx
import pytest

from conftest import LiveServer

LIMIT = {"RATE_LIMIT_ANONYMOUS_PER_MINUTE": "2"}


def statuses(server: LiveServer, forwarded_for: str, count: int) -> list[int]:
    headers = {"X-Forwarded-For": forwarded_for}
    return [httpx.get(f"{server.url}/", headers=headers).status_code for _ in range(count)]


@pytest.mark.parametrize("kind", ["granian", "uvicorn"])
async def test_a_trusted_proxy_names_the_client(redis, kind):
    server = LiveServer(env=LIMIT, server=kind)  # trusts 127.0.0.1, the test's address
    try:
        assert statuses(server, "203.0.113.5", 3) == [200, 200, 429]
        assert statuses(server, "203.0.113.6", 1) == [200]  # another client, own limit
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["granian", "uvicorn"])
async def test_an_untrusted_peer_cannot_pick_its_address(redis, kind):
    server = LiveServer(env=LIMIT | {"FORWARDED_ALLOW_IPS": "192.0.2.1"}, server=kind)
    try:
        assert statuses(server, "203.0.113.5", 2) == [200, 200]
        assert statuses(server, "203.0.113.6", 1) == [429]  # still 127.0.0.1's window
    finally:
        server.stop()
