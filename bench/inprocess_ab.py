"""A/B of one in-process switch on the mix's read requests: CPU per request, blocks
interleaved (issue 17).

Usage (a database `medbook seed scale` loaded):

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/scale_bench \
        .venv/bin/python bench/inprocess_ab.py [--switch dependencies] [--blocks 20]

On a machine shared with other work, the CPU per request of two server runs differs by up
to 50 % for the same code (bench/README.md), more than most changes move it. Here one
process serves both variants: the app is built once (`create_app`, real PostgreSQL and
Redis, lifespan run) and driven through its ASGI interface by Litestar's test client, a
few requests at a time; the switch flips between blocks of requests (A B B A A B ...),
and each block's `time.process_time()` is kept. Machine drift hits both variants alike.
The client's own CPU is in every block of both variants, so the difference of the
medians is the switch's cost per request; the ratio understates it.

Switches: `dependencies` - Litestar's task group per batch of dependencies (A) against
`app/web/sequential_dependencies.py` (B); `zone` - a list of one's own day with a look-up
of the clinic's zone (A) against the zone the Principal carries (B), `--classes lists`;
`guards` - Litestar's guard calls with a copy of the route handler each (A) against
`app/web/uncopied_guards.py` (B).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.availability_bench import server_env  # noqa: E402
from bench.mixed_bench import bench_target, load_fixtures, release_redis  # noqa: E402

CONCURRENCY = 4


def dependency_switch() -> tuple[Callable[[], None], Callable[[], None]]:
    from litestar._kwargs.kwargs_model import KwargsModel

    from app.web import sequential_dependencies

    def task_groups() -> None:
        KwargsModel.resolve_dependencies = sequential_dependencies.LITESTAR_RESOLVE  # type: ignore[method-assign]

    return task_groups, sequential_dependencies.install


def zone_switch() -> tuple[Callable[[], None], Callable[[], None]]:
    """A: a list of the actor's own day looks its clinic's zone up (as before 6aaaf0f);
    B: the zone the Principal carries. Use with `--classes lists`."""
    from app.appointments import queries

    own_day = queries._own_day

    def look_up() -> None:
        queries._own_day = lambda *args: False  # type: ignore[assignment]

    def carried() -> None:
        queries._own_day = own_day  # type: ignore[assignment]

    return look_up, carried


def guard_switch() -> tuple[Callable[[], None], Callable[[], None]]:
    """A: Litestar's guard calls, each with a copy of the route handler; B: the handler
    itself (app/web/uncopied_guards.py)."""
    from litestar.handlers.base import BaseRouteHandler

    from app.web import uncopied_guards

    def copied() -> None:
        BaseRouteHandler.authorize_connection = uncopied_guards.LITESTAR_AUTHORIZE  # type: ignore[method-assign]

    return copied, uncopied_guards.install


SWITCHES = {"dependencies": dependency_switch, "zone": zone_switch, "guards": guard_switch}


# An in-process client is one caller sending as fast as it can: no per-user rate limit,
# and an admission limit it never reaches (class_parts.py uses the same).
IN_PROCESS_LIMITS = {
    "RATE_LIMIT_USER_PER_MINUTE": "1000000",
    "ADMISSION_MAX_IN_FLIGHT": "64",
    "ADMISSION_MAX_QUEUE": "256",
}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--switch", choices=sorted(SWITCHES), default="dependencies")
    parser.add_argument("--blocks", type=int, default=20, help="per variant")
    parser.add_argument("--block-requests", type=int, default=60)
    parser.add_argument("--classes", default="lists,records,availability")
    args = parser.parse_args()
    database_url, redis_url, bench_redis, secret = bench_target("redis://127.0.0.1:6379/6", 3600)
    os.environ.update(server_env(database_url, redis_url, secret, **IN_PROCESS_LIMITS))
    from litestar.testing import AsyncTestClient

    from app.web.asgi import create_app

    fixtures = await load_fixtures(database_url, secret, dt.date.today())
    tokens = fixtures["tokens"]
    classes = args.classes.split(",")
    # Round robin over the classes, so that every block holds the same mix.
    per_class = [fixtures["items"][kind][: args.block_requests * 4] for kind in classes]
    calls = [
        (m, p, json.loads(b) if b else None, tokens[t - 1])
        for row in zip(*per_class, strict=False)
        for _, m, p, t, b in row
    ]
    a, b = SWITCHES[args.switch]()
    try:
        async with AsyncTestClient(create_app(), timeout=30) as client:
            gate = asyncio.Semaphore(CONCURRENCY)
            statuses: dict[int, int] = {}

            async def one(call: tuple) -> None:
                method, path, body, token = call
                async with gate:
                    r = await client.request(
                        method, path, json=body, headers={"Authorization": f"Bearer {token}"}
                    )
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

            async def block(n: int) -> float:
                chosen = [
                    calls[(n * args.block_requests + k) % len(calls)]
                    for k in range(args.block_requests)
                ]
                started = time.process_time()
                await asyncio.gather(*(one(c) for c in chosen))
                return (time.process_time() - started) * 1000 / len(chosen)

            for n in range(4):  # warm: Principals cached, slots cached, pool used
                await block(n)
            per: dict[str, list[float]] = {"A": [], "B": []}
            order = ["A", "B", "B", "A"] * ((args.blocks + 1) // 2)
            for n, variant in enumerate(order[: 2 * args.blocks]):
                (a if variant == "A" else b)()
                per[variant].append(await block(n))
    finally:
        b()
        release_redis(bench_redis)
    ma, mb = statistics.median(per["A"]), statistics.median(per["B"])
    # A B B A A B ...: the n-th A and the n-th B are neighbours.
    pairs = [y - x for x, y in zip(per["A"], per["B"], strict=True)]
    print(f"switch {args.switch}; classes {args.classes}; statuses {statuses}")
    blocks = len(per["A"])
    print(f"A (before): median {ma:.3f} ms CPU per request (client and server), blocks {blocks}")
    print(f"B (after):  median {mb:.3f} ms, blocks {len(per['B'])}")
    print(f"B - A: {mb - ma:+.3f} ms per request (medians); neighbouring blocks' differences:")
    cheaper = sum(d < 0 for d in pairs)
    print(f"  median {statistics.median(pairs):+.3f} ms, B cheaper in {cheaper} of {len(pairs)}")
    print("A blocks:", " ".join(f"{x:.2f}" for x in per["A"]))
    print("B blocks:", " ".join(f"{x:.2f}" for x in per["B"]))


if __name__ == "__main__":
    asyncio.run(main())
