"""What a wait costs the waiting process: CPU per statement answered at once against one
answered a little later, through medbook's driver path, and per bare socket exchange
(issue 17).

Usage (any database; nothing is written):

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/scale_bench \\
        .venv/bin/python bench/wait_cost.py [--n 300] [--blocks 5]

Part 1 runs `SELECT 1` and `SELECT 1 FROM pg_sleep(d)` for d = 0.1, 0.5 and 2 ms through
`db.session.driver_fetchall` (the pool checkout, asyncpg, the return) on uvloop, blocks
interleaved, and reports this process's CPU (`time.process_time`) per statement: the
server's delay is no CPU of ours, so whatever grows with it is the cost of having waited.
Part 2 does the same for a bare loopback TCP exchange of one byte with a helper process
that answers at once or after d (busy-waiting, so that side never sleeps).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DELAYS = (0.0, 0.0001, 0.0005, 0.002)


async def statements(database_url: str, n: int, blocks: int) -> dict[float, list[float]]:
    os.environ.update(DATABASE_URL=database_url)
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")  # read, never used
    os.environ.setdefault("SECRET_KEY", "wait-cost-" * 5)
    from app.settings import get_settings
    from db.session import create_engine, driver_fetchall

    engine = create_engine(get_settings())
    queries = {d: "SELECT 1" if d == 0 else f"SELECT 1 FROM pg_sleep({d})" for d in DELAYS}
    per: dict[float, list[float]] = {d: [] for d in DELAYS}
    try:
        for query in queries.values():
            for _ in range(20):
                await driver_fetchall(engine, query)
        for _ in range(blocks):
            for d, query in queries.items():
                started = time.process_time()
                for _ in range(n):
                    await driver_fetchall(engine, query)
                per[d].append((time.process_time() - started) * 1e6 / n)
    finally:
        await engine.dispose()
    return per


def _answer(port: int, delay: float) -> None:
    listener = socket.create_server(("127.0.0.1", port))
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while conn.recv(64):
        until = time.perf_counter() + delay
        while time.perf_counter() < until:
            pass
        conn.sendall(b"x")


async def _exchanges(port: int, n: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(100):
        writer.write(b"q")
        await reader.readexactly(1)
    started = time.process_time()
    for _ in range(n):
        writer.write(b"q")
        await reader.readexactly(1)
    used = time.process_time() - started
    writer.close()
    return used * 1e6 / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300, help="statements per block")
    parser.add_argument("--blocks", type=int, default=5)
    args = parser.parse_args()
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        raise SystemExit("set DATABASE_URL")
    import uvloop

    print(f"load average {os.getloadavg()}")
    per = uvloop.run(statements(database_url, args.n, args.blocks))
    print("| answered after | CPU µs per statement (driver_fetchall), median (blocks) |")
    print("| --- | --- |")
    for d, values in per.items():
        blocks = ", ".join(f"{v:.0f}" for v in values)
        print(f"| {d * 1000:.1f} ms | {statistics.median(values):.0f} ({blocks}) |")
    print("| answered after | CPU µs per bare socket exchange |")
    print("| --- | --- |")
    for d in DELAYS:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        helper = multiprocessing.Process(target=_answer, args=(port, d), daemon=True)
        helper.start()
        time.sleep(0.3)
        try:
            used = uvloop.run(_exchanges(port, 2000))
        finally:
            helper.join(timeout=5)
            if helper.is_alive():
                helper.kill()
        print(f"| {d * 1000:.1f} ms | {used:.1f} |")


if __name__ == "__main__":
    main()
