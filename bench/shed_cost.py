"""What one refused request costs a server process (issue 17, shedding): one
`medbook serve` process with a single admission slot and no queue, that slot held by a
sign-in waiting for a lock, and wrk asking it for `/api/appointments` in a closed loop,
so that every answer is a 503. Reports the 503s per second and the server's CPU per
503 (user + sys over the run: robust on a shared machine, unlike the latency).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/DB BENCH_REDIS_URL=redis://127.0.0.1:6379/N \\
        .venv/bin/python bench/shed_cost.py [--root TREE] [--seconds 10] [--connections 8]

`--root` serves the medbook code of another tree (a base to compare with); the database
must be migrated (any, even empty: it holds a lock on `users` for the run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu(process: psutil.Process) -> float:
    """User + system seconds of `process` and its children (uvicorn's server process)."""
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


async def held_sign_in(base: str, database_url: str) -> tuple[asyncpg.Connection, asyncio.Task]:
    """A sign-in that holds the only slot: `users` is locked, so it waits in PostgreSQL."""
    locker = await asyncpg.connect(database_url)
    await locker.execute("BEGIN")
    await locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
    client = httpx.AsyncClient(base_url=base, timeout=300)
    task = asyncio.create_task(
        client.post(
            "/api/auth/token",
            json={"email": f"{secrets.token_hex(6)}@example.org", "password": "x" * 12},
        )
    )
    async with asyncio.timeout(60):
        while not await locker.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND datname = current_database() AND pid <> pg_backend_pid()"
        ):
            await asyncio.sleep(0.05)
    return locker, task


async def measure(args: argparse.Namespace) -> None:
    database_url = os.environ["DATABASE_URL"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    metrics_dir = tempfile.mkdtemp(prefix="shed-cost-")
    env = {
        **os.environ,
        "REDIS_URL": os.environ["BENCH_REDIS_URL"],
        "SECRET_KEY": secrets.token_urlsafe(40),
        "LOG_LEVEL": "WARNING",
        "MEDBOOK_EMBEDDED": "",
        "ADMISSION_MAX_IN_FLIGHT": "1",
        "ADMISSION_MAX_QUEUE": "0",
        "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
    }
    root = Path(args.root).resolve()
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--workers", "1", "--port", str(port)],
        cwd=root,
        env={**env, "PYTHONPATH": str(root)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Claimed as test runs claim their Redis databases (conftest.py), so none uses it.
    bench_redis = redis.Redis.from_url(env["REDIS_URL"])
    number = bench_redis.connection_pool.connection_kwargs.get("db", 0)
    claims = redis.Redis(**{**bench_redis.connection_pool.connection_kwargs, "db": 0})
    claim = f"medbook:test-claim:{number}"
    if not claims.set(claim, f"shed_cost:{os.getpid()}", nx=True, ex=600):
        raise SystemExit(f"{env['REDIS_URL']} is claimed; set BENCH_REDIS_URL")
    bench_redis.flushdb()  # no login lock left by an earlier run's failed sign-ins
    locker = task = None
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("server did not become ready")
            time.sleep(0.2)
        locker, task = await held_sign_in(base, database_url)
        proc = psutil.Process(server.pid)
        before = cpu(proc)
        wrk = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{args.connections}",
                f"-d{args.seconds}s",
                "--latency",
                f"{base}/api/appointments",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        used = cpu(proc) - before
        out = wrk.stdout
        requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        refused = int(non2xx.group(1)) if non2xx else 0
        p50 = re.search(r"50%\s+(\S+)", out).group(1)  # type: ignore[union-attr]
        p99 = re.search(r"99%\s+(\S+)", out).group(1)  # type: ignore[union-attr]
        print(
            f"root {root}: {requests} answers ({refused} non-2xx) in {args.seconds} s = "
            f"{requests / args.seconds:,.0f}/s; server CPU {used:.2f} s = "
            f"{1e6 * used / max(requests, 1):.0f} µs per answer; wrk p50 {p50} p99 {p99}; "
            f"load {os.getloadavg()[0]:.2f}"
        )
    finally:
        if locker is not None:
            await locker.execute("ROLLBACK")
            await locker.close()
        if task is not None:
            await asyncio.wait_for(task, 30)
        server.terminate()
        server.wait(30)
        claims.delete(claim)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(ROOT), help="the tree whose medbook to serve")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
