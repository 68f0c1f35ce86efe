"""Booking and availability latency through PgBouncer (transaction mode) vs PostgreSQL
directly (with prepared statements on and off: what PgBouncer >= 1.21 would give back),
in process (the app's whole request path, Litestar's test client, no network
client in between), one request at a time.

    PYTHONPATH=$PWD .venv/bin/python bench/pgbouncer_bench.py [--requests 300]
        [--server postgresql://postgres@127.0.0.1:5432/postgres]

Makes a scratch database on `--server` (dropped at the end), a Redis of its own and a
PgBouncer (Debian's, `apt-get install pgbouncer`) in front; then, for each way in, the same
sequence: availability cache misses (the slot cache is emptied before each) and bookings
of distinct free slots. Report: bench/results/pgbouncer.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from conftest import ALLOW_AUDIT_TRUNCATE, DATA_TABLES, OwnRedis, with_database  # noqa: E402
from tests.integration.world import BERLIN, at, make_world  # noqa: E402
from tests.topology.pgbouncer import PgBouncer  # noqa: E402

WARM_UP = 20  # requests per route and way in, not counted
# On a DATABASE_URL: SQLAlchemy's prepared-statement cache off (its asyncpg dialect reads
# the URL's query), and asyncpg's own too (`no_prepared_statements`): prepared statements
# off without the transaction mode's other change (timeouts per transaction).
NO_PREPARED = "prepared_statement_cache_size=0"


def no_prepared_statements() -> None:
    """Engines whose URL says NO_PREPARED also get asyncpg's statement cache off, as
    DATABASE_POOL_MODE=transaction does (a bench-only switch: not a setting of medbook)."""
    from db import session

    options = session.driver_options

    def driver_options(settings: Any) -> dict[str, Any]:
        if NO_PREPARED in settings.database_url:
            return {"statement_cache_size": 0}
        return options(settings)

    session.driver_options = driver_options


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def row(name: str, values: list[float]) -> str:
    return (
        f"| {name} | {len(values)} | {statistics.mean(values):.2f} | {pct(values, 50):.2f} | "
        f"{pct(values, 90):.2f} | {pct(values, 99):.2f} |"
    )


async def measure(
    ways: dict[str, dict[str, str]], requests: int, first_day: dt.date
) -> dict[str, dict[str, list[float]]]:
    """Each way in gets an app of its own; the requests alternate between them (one way
    after the other, request by request), so the load of a shared machine falls on all
    alike. Bookings of each way go to days of their own."""
    from litestar.testing import AsyncTestClient
    from redis.asyncio import Redis
    from sqlalchemy import text

    from app.settings import load_settings
    from app.web.asgi import create_app
    from db.session import create_engine, session_factory

    settings = {way: load_settings(env) for way, env in ways.items()}
    first = next(iter(settings.values()))
    engine = create_engine(first, application_name="medbook-bench")
    async with engine.begin() as conn:
        await conn.execute(text(ALLOW_AUDIT_TRUNCATE))
        await conn.execute(text(f"TRUNCATE {DATA_TABLES} RESTART IDENTITY CASCADE"))
    async with session_factory(engine)() as session:
        world = await make_world(session, first.secret_key, patients=20)
        await session.commit()
    await engine.dispose()
    redis = Redis.from_url(first.redis_url)
    headers = [world.headers(f"patient{i}") for i in range(20)]
    times = {way: {"availability (cache miss)": [], "booking": []} for way in ways}
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            way: await stack.enter_async_context(
                AsyncTestClient(app=create_app(config), timeout=30)
            )
            for way, config in settings.items()
        }

        async def timed(way: str, route: str, i: int, expected: int, request) -> None:
            started = time.perf_counter()
            response = await request
            elapsed = (time.perf_counter() - started) * 1000
            assert response.status_code == expected, response.text
            if i >= WARM_UP:
                times[way][route].append(elapsed)

        params = {"doctor_id": world.doctor_id, "date": first_day.isoformat()}
        for i in range(requests + WARM_UP):
            for way, client in clients.items():
                await redis.delete(*(await redis.keys("avail*")) or ["none"])
                get = client.get(
                    "/api/appointments/available-slots", params=params, headers=headers[i % 20]
                )
                await timed(way, "availability (cache miss)", i, 200, get)
        days_each = (requests + WARM_UP) // 24 + 1
        for i in range(requests + WARM_UP):  # slot i: 24 a day from 08:00
            for n, (way, client) in enumerate(clients.items()):
                day = first_day + dt.timedelta(days=n * days_each + i // 24)
                start = at(day, 8 + (i % 24) // 2) + dt.timedelta(minutes=30 * (i % 2))
                body = {"doctor_id": world.doctor_id, "start": start.isoformat()}
                post = client.post("/api/appointments", json=body, headers=headers[i % 20])
                await timed(way, "booking", i, 201, post)
    await redis.aclose()
    return times


async def recreate(server: str, name: str, drop_only: bool = False) -> None:
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    from db import migrate

    name = f"medbook_pgbouncer_bench_{os.getpid()}"
    direct = with_database(args.server, name)
    asyncio.run(recreate(args.server, name))
    folder = Path(tempfile.mkdtemp(prefix="medbook-bench-redis-"))
    redis, bouncer = OwnRedis(folder), None
    try:
        migrate.upgrade(direct)
        redis.start()
        bouncer = PgBouncer(args.server, pool_size=10)
        base = {
            "REDIS_URL": redis.url,
            "SECRET_KEY": secrets.token_urlsafe(40),
            "MEDBOOK_DATA_DIR": str(folder / "data"),
            "BOOKING_MAX_FUTURE_PER_DOCTOR": "100000",
            "BOOKING_HORIZON_DAYS": "365",
            "RATE_LIMIT_USER_PER_MINUTE": "100000",
            "DB_SLOW_QUERY_MS": "0",
            "LOG_LEVEL": "WARNING",
        }
        no_prepared_statements()
        ways = {
            "direct": {**base, "DATABASE_URL": direct},
            # Prepared statements on vs off, nothing else changed: what PgBouncer >= 1.21
            # (max_prepared_statements) would give back to a transaction-mode setup.
            "direct, prepared statements off": {
                **base,
                "DATABASE_URL": f"{direct}?{NO_PREPARED}",
            },
            # The whole transaction mode (also the timeouts set in every transaction),
            # without the pooler's hop.
            "direct, transaction mode": {
                **base,
                "DATABASE_URL": direct,
                "DATABASE_POOL_MODE": "transaction",
            },
            "PgBouncer 1.18, transaction mode": {
                **base,
                "DATABASE_URL": bouncer.url(direct),
                "DATABASE_POOL_MODE": "transaction",
            },
        }
        today = dt.datetime.now(BERLIN).date()
        results = asyncio.run(measure(ways, args.requests, today + dt.timedelta(days=2)))
        lines = [
            "# Booking and availability through PgBouncer vs direct",
            "",
            f"`bench/pgbouncer_bench.py --requests {args.requests}`, "
            f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, PostgreSQL 15 on 127.0.0.1, "
            "one request at a time through the whole app in process, the four ways in "
            "alternating request by request. Milliseconds.",
            "",
            "| way in / route | n | mean | p50 | p90 | p99 |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for way, by_route in results.items():
            for route, values in by_route.items():
                lines.append(row(f"{way}: {route}", values))
        report = "\n".join(lines) + "\n"
        print(report)
        out = ROOT / "bench" / "results" / "pgbouncer.md"
        out.write_text(report)
    finally:
        if bouncer is not None:
            bouncer.stop()
        redis.stop()
        asyncio.run(recreate(args.server, name, drop_only=True))
        subprocess.run(["rm", "-rf", str(folder)], check=False)


if __name__ == "__main__":
    main()
