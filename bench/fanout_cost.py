"""CPU of one live fan-out's parts, in process: what a booking or cancel costs each server
process that has a socket on the changed doctor-day (issue 17).

Usage (a database `medbook seed scale` loaded):

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/scale_bench \\
    BENCH_REDIS_URL=redis://127.0.0.1:6379/9 .venv/bin/python bench/fanout_cost.py [--n 300]

The app is built and its lifespan run once (`create_app`, real PostgreSQL and Redis). For `--n`
doctor-days 20-80 days ahead it times, as CPU of this process per call (blocks
interleaved): the patients' slot-grid render of an event as the hub calls it, after the
day's cache entry was invalidated (what a change leaves: a miss) and with it cached; the
slot cache's read of the day alone (miss, hit); and the template alone.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.availability_bench import server_env  # noqa: E402
from bench.mixed_bench import bench_target, load_fixtures, release_redis  # noqa: E402


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300, help="doctor-days per block")
    parser.add_argument("--blocks", type=int, default=6)
    args = parser.parse_args()
    database_url, redis_url, bench_redis, secret = bench_target("redis://127.0.0.1:6379/6", 1800)
    os.environ.update(server_env(database_url, redis_url, secret))

    from app.live import boards
    from app.live.realtime import doctor_channel
    from app.routes import views
    from app.routes.deps import booking_rules
    from app.scheduling.slots import queue_invalidation
    from app.services import Services
    from app.web.asgi import create_app

    fixtures = await load_fixtures(database_url, secret, dt.date.today())
    today = dt.date.today()
    rng = random.Random(3)
    days = [
        (d, today + dt.timedelta(days=rng.randrange(20, 81)))
        for d, _ in rng.sample(fixtures["doctors"], min(args.n, len(fixtures["doctors"])))
    ]
    app = create_app()
    try:
        async with app.lifespan():
            services = Services.of(app)
            render = services.hub.render if services.hub else None
            assert render is not None
            cache, redis = services.slot_cache, services.redis
            env = views.environment(app)
            rules = booking_rules(services.settings)

            async def invalidate() -> None:
                async with redis.pipeline(transaction=False) as pipe:
                    queue_invalidation(pipe, days)
                    await pipe.execute()

            async def renders() -> None:
                for d, day in days:
                    await render(doctor_channel(d, day), "slots", {"action": "booked"})

            async def reads() -> None:
                for d, day in days:
                    await cache.days(d, day, 1)

            views_of = []
            for d, day in days:
                _, (view,) = await boards.doctor_days(
                    cache, d, day, 1, rules, dt.datetime.now(dt.UTC)
                )
                views_of.append(view)

            async def templates() -> None:
                for view in views_of:
                    views.render(env, "patient/_day.html", day=view, oob=True)

            async def timed(work, miss: bool) -> float:
                if miss:
                    await invalidate()
                else:
                    await work()  # cached now
                started = time.process_time()
                await work()
                return (time.process_time() - started) * 1000 / len(days)

            parts = {
                "render, after a change (miss)": (renders, True),
                "render, day cached (hit)": (renders, False),
                "slot cache read, miss": (reads, True),
                "slot cache read, hit": (reads, False),
                "template alone": (templates, False),
            }
            results: dict[str, list[float]] = {name: [] for name in parts}
            for _ in range(args.blocks):
                for name, (work, miss) in parts.items():
                    results[name].append(await timed(work, miss))
            print(f"load average {os.getloadavg()}; {len(days)} doctor-days per block")
            print("| part | CPU ms per call, median (min–max) of blocks |")
            print("| --- | --- |")
            for name, values in results.items():
                print(
                    f"| {name} | {statistics.median(values):.3f} "
                    f"({min(values):.3f}–{max(values):.3f}) |"
                )
            html = views.render(env, "patient/_day.html", day=views_of[0], oob=True)
            print(f"fragment size: {len(html)} bytes")
    finally:
        release_redis(bench_redis)


if __name__ == "__main__":
    asyncio.run(main())
