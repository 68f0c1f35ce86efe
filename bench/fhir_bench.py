"""The FHIR API at year scale: Slot search (one practitioner, 4 weeks) and
`Appointment/$find` (a clinic's doctors, one week), each at 50 requests/s (issue 19).

Usage (after `medbook seed scale` loaded the year into DATABASE_URL):

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/scale_bench \
        .venv/bin/python bench/fhir_bench.py [--seconds 12] [--rate 50]

It claims a free Redis database (1-15) the way the tests do (`medbook:test-claim:N` in
database 0, so a test run beside it keeps its own), starts `medbook serve --workers 2`
against that database and Redis, and measures, each for `--seconds` at `--rate`:

- a floor: `GET /api/auth/me`, a signed-in request doing no work;
- Slot search, cache misses: every request a doctor and 4 weeks nobody asked for before
  (30 doctor-days computed from PostgreSQL, then cached);
- Slot search, cache hits: the same questions again, after each was asked once;
- $find over one clinic's active doctors for one week, misses then hits.

Only reads: the year's data is unchanged. The Markdown report is printed and written to
bench/results/fhir.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import secrets
import socket
import sys
from pathlib import Path

import asyncpg
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.settings import plain_database_url  # noqa: E402
from bench.availability_bench import (  # noqa: E402
    cache_counts,
    cpu_line,
    cpu_seconds,
    free_port,
    load_fixtures,
    server_env,
    start_server,
)
from bench.loadgen import HEADER, Client, run  # noqa: E402

CLAIM_KEY = "medbook:test-claim:{}"  # conftest.py's claims, so tests and this never share


def claim_redis(server: str) -> tuple[str, str]:
    """A Redis database no test run holds: (its URL, the claim key to release)."""
    holder = f"{socket.gethostname()}:{os.getpid()}"
    claims = redis.Redis.from_url(f"{server}/0")
    for number in range(15, 0, -1):
        key = CLAIM_KEY.format(number)
        if claims.set(key, holder, nx=True, ex=3600):
            url = f"{server}/{number}"
            redis.Redis.from_url(url).flushdb()
            return url, key
    raise SystemExit("every Redis database 1-15 is claimed; try again later")


async def clinics_with_doctors(database_url: str) -> list[int]:
    conn = await asyncpg.connect(plain_database_url(database_url))
    try:
        rows = await conn.fetch(
            "SELECT clinic_id FROM doctors WHERE active GROUP BY clinic_id ORDER BY clinic_id"
        )
    finally:
        await conn.close()
    return [r["clinic_id"] for r in rows]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--rate", type=float, default=50)
    args = parser.parse_args()
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        raise SystemExit("set DATABASE_URL to the database `medbook seed scale` loaded")
    redis_url, claim = claim_redis(os.environ.get("BENCH_REDIS_SERVER", "redis://127.0.0.1:6379"))
    secret = secrets.token_urlsafe(40)
    env = {**server_env(database_url, redis_url, secret), "PYTHONPATH": str(ROOT)}
    # Many users, each far below the per-user rate limit, as in the availability bench.
    today = dt.date.today()
    fixtures = await load_fixtures(database_url, secret, today)
    doctors = [d for d, _ in fixtures["doctors"]]
    clinics = await clinics_with_doctors(database_url)
    users = [{"Authorization": f"Bearer {t}"} for t in fixtures["tokens"]]
    port = free_port()
    load = os.getloadavg()
    server = start_server(env, port, log_name="fhir-server.log")
    base = f"http://127.0.0.1:{port}"
    try:
        count = int(args.rate * args.seconds)
        rng = random.Random(19)
        # Distinct questions: (doctor, first day) for Slot, (clinic, first day) for $find.
        slot_pairs = [(d, today + dt.timedelta(days=k)) for k in range(1, 60, 28) for d in doctors]
        rng.shuffle(slot_pairs)
        slot_pairs = slot_pairs[:count]
        find_pairs = [(c, today + dt.timedelta(days=k)) for k in range(1, 84, 7) for c in clinics]
        rng.shuffle(find_pairs)
        find_pairs = find_pairs[:count]

        def slots(n: int) -> tuple[str, str, None, dict]:
            doctor, first = slot_pairs[n % len(slot_pairs)]
            last = first + dt.timedelta(days=28)
            path = (
                f"/fhir/R4/Slot?schedule=Schedule/{doctor}&start=ge{first}&start=lt{last}"
                "&_count=500"
            )
            return ("GET", path, None, users[n % len(users)])

        def find(n: int) -> tuple[str, str, None, dict]:
            clinic, first = find_pairs[n % len(find_pairs)]
            last = first + dt.timedelta(days=6)
            path = (
                f"/fhir/R4/Appointment/$find?location=Location/{clinic}&start={first}"
                f"&end={last}&_count=100"
            )
            return ("GET", path, None, users[n % len(users)])

        def me(n: int) -> tuple[str, str, None, dict]:
            return ("GET", "/api/auth/me", None, users[n % len(users)])

        client = Client("127.0.0.1", port)
        # Warm-up, not measured: every user's Principal cached, pools full.
        await run(client, {"warm-up": (args.rate, me)}, len(users) / args.rate)
        results, counted = [], []

        async def measure(name: str, stream) -> None:
            hits, misses = cache_counts(base)
            cpu = cpu_seconds(server.pid)
            result = (await run(client, {name: (args.rate, stream)}, args.seconds))[name]
            cpu_after = cpu_seconds(server.pid)
            after_hits, after_misses = cache_counts(base)
            results.append(result)
            counted.append(
                f"- {name}: {after_hits - hits:.0f} doctor-days from the cache, "
                f"{after_misses - misses:.0f} computed. "
                + cpu_line("CPU", cpu, cpu_after, max(result.count, 1))
            )

        async def warm(stream) -> None:
            """Ask each question once, one at a time (not measured): the cache holds it."""
            for n in range(count):
                await client.request(stream(n))

        await measure("floor: GET /api/auth/me (signed in, no work)", me)
        # Misses first, on questions nobody asked yet; then the same ones again, warmed.
        await measure("Slot search, 1 practitioner x 4 weeks, cache misses", slots)
        await warm(slots)
        await measure("Slot search, 1 practitioner x 4 weeks, cache hits", slots)
        await measure("$find, a clinic's doctors x 1 week, cache misses", find)
        await warm(find)
        await measure("$find, a clinic's doctors x 1 week, cache hits", find)
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        redis.Redis.from_url(f"{redis_url.rsplit('/', 1)[0]}/0").delete(claim)
    report = "\n".join(
        [
            "# FHIR API at year scale",
            "",
            f"`bench/fhir_bench.py --seconds {args.seconds:g} --rate {args.rate:g}`, "
            f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {fixtures['appointments']:,} "
            f"appointments, {len(doctors)} active doctors in {len(clinics)} clinics, "
            "`medbook serve --workers 2` on the shared 2-core machine "
            f"(load average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after).",
            "",
            HEADER,
            *(r.row() for r in results),
            "",
            *counted,
            "",
        ]
    )
    print(report)
    (ROOT / "bench" / "results" / "fhir.md").write_text(report)


if __name__ == "__main__":
    asyncio.run(main())
