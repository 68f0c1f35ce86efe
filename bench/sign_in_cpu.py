"""Server CPU per API sign-in and token refresh besides the password hash (issue 17).

A `medbook serve --workers 1` on a demo database whose hashes are cheap (`medbook seed
demo` run with ARGON2_TIME_COST=1 ARGON2_MEMORY_KIB=8 ARGON2_LANES=1; the server gets the
same parameters, so no rehash): a verification costs microseconds and what is measured is
everything else a sign-in does (its statements, Redis calls, the thread hand-off, the
framework). `bench/mix_profile.py` measures sign-ins with the real hash, whose 25-40 ms
hide a few ms of difference on a loaded machine.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/<demo db> \
    BENCH_REDIS_URL=redis://127.0.0.1:6379/<n> .venv/bin/python bench/sign_in_cpu.py \
        [--requests 400] [--rounds 2]
"""

import argparse
import asyncio
import os
import secrets
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.availability_bench import free_port, server_env, start_server  # noqa: E402
from bench.mix_profile import server_cpu  # noqa: E402
from bench.mixed_bench import claim_redis, release_redis  # noqa: E402

EMAILS = ["patient@demo.test", "patient2@demo.test"]
PASSWORD = "medbook-demo"


async def run(base: str, pid: int, count: int) -> tuple[float, float, dict]:
    statuses: dict[int, int] = {}
    gate = asyncio.Semaphore(4)
    refresh_tokens: list[str] = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:

        async def sign_in(i: int) -> None:
            async with gate:
                r = await http.post(
                    "/api/auth/token", json={"email": EMAILS[i % 2], "password": PASSWORD}
                )
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 200:
                refresh_tokens.append(r.json()["refresh_token"])

        async def refresh(token: str) -> None:
            async with gate:
                r = await http.post("/api/auth/refresh", json={"refresh_token": token})
            statuses[1000 + r.status_code] = statuses.get(1000 + r.status_code, 0) + 1

        await asyncio.gather(*(sign_in(i) for i in range(40)))  # warm
        refresh_tokens.clear()
        before = server_cpu(pid)
        await asyncio.gather(*(sign_in(i) for i in range(count)))
        signed = (server_cpu(pid) - before) * 1000 / count
        before = server_cpu(pid)
        await asyncio.gather(*(refresh(t) for t in refresh_tokens))
        refreshed = (server_cpu(pid) - before) * 1000 / max(1, len(refresh_tokens))
    return signed, refreshed, statuses


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    redis_url, bench_redis = claim_redis("redis://127.0.0.1:6379/10", 900)
    env = server_env(
        os.environ["DATABASE_URL"],
        redis_url,
        secrets.token_urlsafe(40),
        RATE_LIMIT_AUTH_PER_MINUTE="1000000",
        RATE_LIMIT_USER_PER_MINUTE="1000000",
        RATE_LIMIT_ANONYMOUS_PER_MINUTE="1000000",
        ARGON2_TIME_COST="1",
        ARGON2_MEMORY_KIB="8",
        ARGON2_LANES="1",
        ADMISSION_LAG_TARGET_MS="0",
    )
    port = free_port()
    try:
        server = start_server(
            env, port, log_name="sign-in-cpu-server.log", workers=1, new_session=True
        )
    except BaseException:
        release_redis(bench_redis)
        raise
    try:
        for _ in range(args.rounds):
            signed, refreshed, statuses = await run(
                f"http://127.0.0.1:{port}", server.pid, args.requests
            )
            load = Path("/proc/loadavg").read_text().split()[0]
            print(
                f"{ROOT.name}: sign-in {signed:.2f} ms, refresh {refreshed:.2f} ms"
                f" (server CPU per request), load {load}, statuses {statuses}",
                flush=True,
            )
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        release_redis(bench_redis)


if __name__ == "__main__":
    asyncio.run(main())
