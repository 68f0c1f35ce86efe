"""A new process's first burst of sign-ins (issue 17, shed17d): how long the accepted ones
wait and how many are refused, before the hashing pool knows its pace.

Run with PYTHONPATH naming the code to measure (an export of the base, or this tree):

    PYTHONPATH=$PWD .venv/bin/python bench/hash_first_burst.py [--burst 40] [--runs 4]

Each run builds a fresh `HashPool` (two threads, production's argon2 parameters) and
starts `--burst` verifications at once, as a reminder wave's sign-ins reach a process
started a moment ago; it reports the answers' times from the burst's start (accepted
p50 / p99 / max) and the refusals (503 + Retry-After in the app). In process: the load
of the machine slows every hash alike, but does not decide which rule waits longer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from types import SimpleNamespace

from app.access import passwords
from app.errors import Overloaded


async def burst(size: int, password_hash: str) -> tuple[list[float], int]:
    pool = passwords.HashPool()
    began = time.perf_counter()
    waits: list[float] = []
    refused = 0

    async def sign_in() -> None:
        nonlocal refused
        try:
            await pool.run(passwords.verify_password, password_hash, "medbook-demo")
        except Overloaded:
            refused += 1
        else:
            waits.append(time.perf_counter() - began)

    await asyncio.gather(*(sign_in() for _ in range(size)))
    return sorted(waits), refused


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--burst", type=int, default=40)
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    passwords.use_parameters(
        SimpleNamespace(argon2_time_cost=2, argon2_memory_kib=19 * 1024, argon2_lanes=1)  # type: ignore[arg-type]
    )
    password_hash = passwords.hash_password("medbook-demo")
    for _ in range(args.runs):
        waits, refused = asyncio.run(burst(args.burst, password_hash))
        p50 = waits[len(waits) // 2] * 1000
        p99 = waits[min(len(waits) - 1, int(0.99 * len(waits)))] * 1000
        print(
            f"accepted {len(waits)}, refused {refused}: p50 {p50:.1f} / p99 {p99:.1f} / "
            f"max {waits[-1] * 1000:.1f} ms (load {os.getloadavg()[0]:.1f})"
        )


if __name__ == "__main__":
    main()
