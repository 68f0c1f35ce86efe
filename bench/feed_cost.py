"""CPU of the worker's FHIR feed job (`publish_fhir_feed`, every 10 minutes) and the
garbage collector's share of it, with the slot cache empty as the job finds it (its
entries live 5 minutes, the job runs every 10).

Usage (a year loaded by `medbook seed scale`; a Redis database of its own, flushed):

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/scale_bench \
    BENCH_REDIS_URL=redis://127.0.0.1:6379/12 \
        .venv/bin/python bench/feed_cost.py --rounds 3 [--variants base,new]

Each round runs every variant once, alternating, each in a fresh process that starts the
worker's services as `medbook worker` does: `base` imports the code of `--base-root` (a
checkout of the code before, default /work/main), `new` this checkout's, with the
worker's start-up GC settings (`tasks.worker.tune_gc`) where the code has them. Per run: the
process's CPU seconds over the job, the job's wall seconds, and the collections (count,
full ones, CPU seconds inside the collector).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.environ.get("FEED_COST_ROOT", str(ROOT)))


async def one_run(variant: str) -> dict:
    import redis.asyncio as aioredis

    from app.services import start_services
    from app.settings import get_settings
    from tasks import worker
    from tasks.fhir_feed import publish_fhir_feed

    settings = get_settings()
    services = await start_services(settings, process="worker")
    ctx = {"services": services, "settings": settings, "sessions": services.sessions}
    if hasattr(worker, "tune_gc"):
        worker.tune_gc()
    spent = {"n": 0, "full": 0, "cpu": 0.0}
    started = [0.0]

    def watch(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.thread_time()
            return
        spent["n"] += 1
        spent["full"] += info["generation"] == 2
        spent["cpu"] += time.thread_time() - started[0]

    try:
        await aioredis.from_url(settings.redis_url).flushdb()
        gc.callbacks.append(watch)
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            result = await publish_fhir_feed(ctx)
        except Exception as error:
            result = {"error": type(error).__name__}
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        gc.callbacks.remove(watch)
    finally:
        await services.stop()
    return {"variant": variant, "cpu_s": cpu, "wall_s": wall, "gc": spent, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="base,new")
    parser.add_argument("--base-root", default="/work/main")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        import uvloop

        import tasks

        assert Path(tasks.__file__).is_relative_to(os.environ["FEED_COST_ROOT"]), tasks.__file__
        print(json.dumps(uvloop.run(one_run(args.one))))
        return
    env = {
        **os.environ,
        "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5"),
        "LOG_LEVEL": "WARNING",
        "MEDBOOK_EMBEDDED": "",
        "SECRET_KEY": secrets.token_urlsafe(40),
    }
    variants = args.variants.split(",")
    print(
        "| round | variant | CPU s | wall s | collections | full | CPU s in GC | load "
        "| resources or error |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for n in range(args.rounds):
        for variant in variants if n % 2 == 0 else variants[::-1]:
            root = args.base_root if variant == "base" else str(ROOT)
            out = (
                subprocess.run(
                    [sys.executable, __file__, "--one", variant],
                    env={**env, "FEED_COST_ROOT": root, "PYTHONPATH": root},
                    capture_output=True,
                    text=True,
                    cwd=root,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            r = json.loads(out)
            print(
                f"| {n + 1} | {variant} | {r['cpu_s']:.2f} | {r['wall_s']:.2f} | "
                f"{r['gc']['n']} | {r['gc']['full']} | {r['gc']['cpu']:.2f} | "
                f"{os.getloadavg()[0]:.1f} | {r.get('error') or r.get('resources')} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
