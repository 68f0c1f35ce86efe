"""S-1: is caching token validation in Redis faster than verifying the HS256 token?

    .venv/bin/python bench/token_verify.py [redis://127.0.0.1:6379/15]

Times app.access.tokens.verify_access_token against one Redis GET of a cached validation
(the least a cache lookup costs: one round trip), both with the real clients.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

from redis.asyncio import Redis

from app.access.tokens import issue_access_token, verify_access_token

SECRET = "s" * 48
N = 20_000


def per_call_us(samples: list[float]) -> str:
    p99 = sorted(samples)[int(len(samples) * 0.99)]
    return f"median {statistics.median(samples) * 1e6:7.1f} µs, p99 {p99 * 1e6:7.1f} µs"


async def main(url: str) -> None:
    token = issue_access_token(SECRET, user_id=12345, role="patient")
    verify = []
    for _ in range(N):
        started = time.perf_counter()
        assert verify_access_token(SECRET, token) is not None
        verify.append(time.perf_counter() - started)
    redis = Redis.from_url(url)
    await redis.set("bench:token", b'{"user_id": 12345, "role": "patient"}', ex=60)
    lookup = []
    for _ in range(N):
        started = time.perf_counter()
        assert await redis.get("bench:token") is not None
        lookup.append(time.perf_counter() - started)
    await redis.delete("bench:token")
    await redis.aclose()
    print(f"HS256 verify (PyJWT):      {per_call_us(verify)}")
    print(f"Redis GET (redis-py async): {per_call_us(lookup)}")
    print(f"verify is {statistics.median(lookup) / statistics.median(verify):.1f}x faster")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/15"))
