"""Server CPU per request of one route under wrk, split into user and kernel time, and
where it goes (py-spy): the floors every request of the mix stands on (issue 17).

Usage (a database `medbook seed scale` loaded):

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/scale_bench \\
    BENCH_REDIS_URL=redis://127.0.0.1:6379/9 \\
        .venv/bin/python bench/floor_profile.py [--seconds 8] [--rounds 2] [--profile] \\
        [--native] [--paths bare,me,hit]

One `medbook serve --workers 1`; wrk with 2 threads and 4 connections, closed loop, on
the bare route (`/health/live`), authentication alone (`/api/auth/me`) and a cached
availability answer. For each, rounds of `--seconds`: requests, server CPU per request
(user + system from /proc, the system share apart: a send on loopback does the receiver's
TCP work too). `--profile` then records each under py-spy (`--native` with native frames)
into bench/results/profiles/floor-*.json and prints the top entries.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.availability_bench import free_port, server_env, start_server  # noqa: E402
from bench.mix_profile import PROFILES, top_entries  # noqa: E402
from bench.mixed_bench import bench_target, load_fixtures, release_redis  # noqa: E402


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds so far of the server process and its children."""
    root = psutil.Process(pid)
    procs = (root, *root.children(recursive=True))
    times = [p.cpu_times() for p in procs]
    return sum(t.user for t in times), sum(t.system for t in times)


def wrk(url: str, token: str, seconds: float) -> int:
    cmd = ["wrk", "-t2", "-c4", "-H", f"Authorization: Bearer {token}", f"-d{seconds}s", url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return int(next(line for line in out.splitlines() if "requests in" in line).split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--native", action="store_true")
    parser.add_argument("--paths", default="bare,me,hit")
    args = parser.parse_args()
    database_url, redis_url, bench_redis, secret = bench_target("redis://127.0.0.1:6379/6", 1800)
    env = server_env(database_url, redis_url, secret, RATE_LIMIT_USER_PER_MINUTE="100000000")
    fixtures = asyncio.run(load_fixtures(database_url, secret, dt.date.today()))
    token = fixtures["tokens"][0]
    day = fixtures["items"]["availability"][0][2]
    paths = {"bare": "/health/live", "me": "/api/auth/me", "hit": day}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(env, port, workers=1, log_name="floor-profile-server.log")
    try:
        print(f"load average {os.getloadavg()}")
        print("| route | round | requests | CPU ms per request | of which system |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name in args.paths.split(","):
            wrk(base + paths[name], token, 2)  # warm: Principal and slots cached
            for r in range(args.rounds):
                user0, sys0 = cpu_times(server.pid)
                count = wrk(base + paths[name], token, args.seconds)
                user1, sys1 = cpu_times(server.pid)
                used = (user1 - user0) + (sys1 - sys0)
                print(
                    f"| {name} | {r + 1} | {count} | {used * 1000 / count:.3f} | "
                    f"{(sys1 - sys0) / used:.0%} |",
                    flush=True,
                )
        if args.profile:
            PROFILES.mkdir(parents=True, exist_ok=True)
            for name in args.paths.split(","):
                out = PROFILES / f"floor-{name}.json"
                spy = subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        *("record", "--pid", str(server.pid), "--rate", "250"),
                        # native frames need the process paused for each sample
                        *(["--native"] if args.native else ["--nonblocking"]),
                        *("--subprocesses", "--format", "speedscope", "--output", str(out)),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
                try:
                    time.sleep(1)
                    wrk(base + paths[name], token, args.seconds)
                finally:
                    spy.send_signal(signal.SIGINT)
                    _, err = spy.communicate(timeout=60)
                if not out.exists():
                    raise SystemExit(f"py-spy wrote nothing: {err.decode()[-2000:]}")
                own, total = top_entries(out, 20)
                print(f"\n{name}: own time")
                print("\n".join(f"  {share:6.1%}  {n}" for n, share in own))
                print(f"{name}: medbook's functions by total time")
                print("\n".join(f"  {share:6.1%}  {n}" for n, share in total))
    finally:
        server.terminate()
        server.wait(timeout=30)
        release_redis(bench_redis)


if __name__ == "__main__":
    main()
