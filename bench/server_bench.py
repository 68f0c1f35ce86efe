"""uvicorn or granian for `medbook serve`: the same workloads on both, in one run.

Usage (after `medbook seed scale` loaded the year into DATABASE_URL; needs wrk):

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/scale_bench \
        .venv/bin/python bench/server_bench.py [--seconds 8] [--rounds 2]

Each round starts `medbook serve --workers 2 --server S` for each server in turn (the order
alternates between rounds, so drift in the machine's speed does not favour one) and drives,
with wrk (closed loop, 2 threads):

- cached availability over 200 warmed doctor-days, at the connection count whose p99 stays
  under 50 ms and serves most;
- the bare JSON route `/health/live`, likewise: the ceiling;
- availability cache misses (a new doctor-day nearly every request) at 4 connections.

Writes bench/results/servers.md: per server the median over rounds of each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import secrets
import shutil
import statistics
import sys
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.availability_bench import (  # noqa: E402
    best_under_50ms,
    free_port,
    load_fixtures,
    server_env,
    start_server,
    wrk_run,
)

SERVERS = ("uvicorn", "granian")


def slots_path(doctor_id: int, day: dt.date) -> str:
    return f"/api/appointments/available-slots?doctor_id={doctor_id}&date={day.isoformat()}"


def one_round(server: str, env: dict, fixtures: dict, seconds: int, seed: int) -> dict:
    redis.Redis.from_url(env["REDIS_URL"]).flushdb()
    port = free_port()
    process = start_server(env, port, server)
    base = f"http://127.0.0.1:{port}"
    doctors, tokens, today = fixtures["doctors"], fixtures["tokens"], fixtures["today"]
    rng = random.Random(seed)
    try:
        warm = [
            slots_path(d, today + dt.timedelta(days=rng.randint(1, 14)))
            for d, _ in rng.sample(doctors, 200)
        ]
        auth = {"Authorization": f"Bearer {tokens[0]}"}
        for path in warm:
            httpx.get(base + path, headers=auth, timeout=10).raise_for_status()
        cold = [
            slots_path(d, today + dt.timedelta(days=rng.randint(15, 300))) for d, _ in doctors
        ] * 40
        rng.shuffle(cold)
        return {
            "cached": best_under_50ms(base, tokens, warm, seconds),
            "bare": best_under_50ms(base, tokens, ["/health/live"], seconds),
            "miss": wrk_run(base, tokens, cold, seconds, 4),
        }
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        raise SystemExit("set DATABASE_URL to the database `medbook seed scale` loaded")
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install wrk")
    secret = secrets.token_urlsafe(40)
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/2")
    # One user's token drives wrk: lift the per-user limit, which would answer 429.
    env = server_env(database_url, redis_url, secret, RATE_LIMIT_USER_PER_MINUTE="100000000")
    fixtures = asyncio.run(load_fixtures(database_url, secret, dt.date.today()))
    runs: dict[str, list[dict]] = {server: [] for server in SERVERS}
    for n in range(args.rounds):
        order = SERVERS if n % 2 == 0 else tuple(reversed(SERVERS))
        for server in order:
            runs[server].append(one_round(server, env, fixtures, args.seconds, seed=n))
            print(server, runs[server][-1], flush=True)

    def median(server: str, workload: str, figure: str) -> float:
        return statistics.median(r[workload][figure] for r in runs[server])

    lines = [
        f"Two server processes each, {args.rounds} rounds of {args.seconds} s per workload, "
        "order alternating; medians over rounds. wrk closed loop on the same 2-core machine.",
        "",
        "| server | cached req/s (p99 < 50 ms) | bare route req/s | ratio | "
        "cache-miss req/s at 4 conn. | miss p50 / p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for server in SERVERS:
        cached, bare = median(server, "cached", "rps"), median(server, "bare", "rps")
        lines.append(
            f"| {server} | {cached:.0f} | {bare:.0f} | {cached / bare:.2f} | "
            f"{median(server, 'miss', 'rps'):.0f} | {median(server, 'miss', 'p50'):.1f} / "
            f"{median(server, 'miss', 'p99'):.1f} |"
        )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    report = "\n".join(lines) + "\n"
    (ROOT / "bench" / "results" / "servers.md").write_text(
        f"# uvicorn or granian ({stamp})\n\n{report}"
    )
    print(report)


if __name__ == "__main__":
    main()
