"""Sample what runs beside a benchmark, twice a second, for finding what lines requests up.

Usage (beside `bench/mixed_bench.py --keep-workdir`, whose processes carry REDIS_URL):

    .venv/bin/python bench/stall_probe.py --redis-url redis://127.0.0.1:6379/12 \
        --database scale_bench --out /tmp/probe.jsonl --seconds 900

Each line of `--out` is one sample: the wall-clock time; CPU seconds used since the previous
sample by the bench's server processes, its worker, the PostgreSQL processes working for
`--database` (backends, autovacuum, checkpointer, WAL writer) and the whole machine; the
load average; the database's busy backends (application, wait event, seconds in the
statement, the statement's start); autovacuum progress; and the checkpointer's counters
(`pg_stat_bgwriter`). `bench/stall_timeline.py` joins it with the bench's answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import asyncpg
import httpx

TICK = os.sysconf("SC_CLK_TCK")
ACTIVITY_SQL = """
SELECT pid, coalesce(application_name, '') AS app, backend_type, state,
       coalesce(wait_event_type || ':' || wait_event, '') AS wait,
       extract(epoch FROM clock_timestamp() - query_start) AS seconds,
       left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS query
FROM pg_stat_activity
WHERE pid <> pg_backend_pid()
  AND (datname = $1 OR backend_type NOT IN ('client backend', 'parallel worker'))
"""
BGWRITER_SQL = (
    "SELECT checkpoints_timed, checkpoints_req, buffers_checkpoint, "
    "buffers_backend, buffers_backend_fsync, checkpoint_sync_time, "
    "checkpoint_write_time FROM pg_stat_bgwriter"
)
VACUUM_SQL = "SELECT pid, relid::regclass::text AS rel, phase FROM pg_stat_progress_vacuum"


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of one process, 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy() -> float:
    """CPU seconds the machine spent not idle (all cores)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / TICK


def scrape(port: int | None) -> dict[str, float]:
    """Admission's refusals by reason and its current limit, from the server's /metrics."""
    found: dict[str, float] = {}
    if port is None:
        return found
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return found
    for line in text.splitlines():
        if line.startswith(("medbook_admission_shed_total", "medbook_admission_limit ")):
            name, value = line.rsplit(" ", 1)
            found[name.removeprefix("medbook_admission_")] = float(value)
    return found


def server_port(redis_url: str) -> int | None:
    """The port of the bench's `medbook serve` (its --port argument)."""
    marker = f"REDIS_URL={redis_url}".encode()
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or marker not in (entry / "environ").read_bytes():
                continue
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in args and b"--port" in args:
            return int(args[args.index(b"--port") + 1])
    return None


def bench_processes(redis_url: str) -> dict[int, str]:
    """The bench's processes (REDIS_URL in their environment): pid -> server or worker."""
    found: dict[int, str] = {}
    marker = f"REDIS_URL={redis_url}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if marker not in environ:
            continue
        if b"app.cli worker" in cmdline:
            found[int(entry.name)] = "worker"
        elif b"app.cli serve" in cmdline or b"spawn_main" in cmdline:
            found[int(entry.name)] = "server"
    return found


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--database", default="scale_bench")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, default=900)
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args()
    conn = await asyncpg.connect(
        host="127.0.0.1",
        user="postgres",
        database=args.database,
        server_settings={"application_name": "stall-probe"},
    )
    previous: dict[int, float] = {}
    busy_before = machine_busy()
    deadline = time.monotonic() + args.seconds
    port, scraped_at = None, 0.0
    with open(args.out, "w") as out:
        while time.monotonic() < deadline:
            started = time.monotonic()
            admission = {}
            if started - scraped_at >= 2:
                port = port or server_port(args.redis_url)
                admission, scraped_at = await asyncio.to_thread(scrape, port), started
            activity = [dict(r) for r in await conn.fetch(ACTIVITY_SQL, args.database)]
            bgwriter = dict(await conn.fetchrow(BGWRITER_SQL))
            vacuum = [dict(r) for r in await conn.fetch(VACUUM_SQL)]
            roles = bench_processes(args.redis_url)
            for row in activity:
                if row["backend_type"] != "client backend":
                    roles[row["pid"]] = "pg:" + row["backend_type"]
                elif row["app"] != "stall-probe":
                    roles[row["pid"]] = "pg:" + (row["app"] or "?")
            cpu: dict[str, float] = {}
            now_cpu: dict[int, float] = {}
            for pid, role in roles.items():
                now_cpu[pid] = cpu_of(pid)
                used = now_cpu[pid] - previous.get(pid, now_cpu[pid])
                key = role if not role.startswith("pg:") else "postgres"
                cpu[key] = round(cpu.get(key, 0.0) + used, 3)
                if role.startswith("pg:medbook") or role.startswith("pg:autovacuum"):
                    cpu[role] = round(cpu.get(role, 0.0) + used, 3)
            previous = now_cpu
            busy = machine_busy()
            cpu["machine"], busy_before = round(busy - busy_before, 3), busy
            busy_rows = [
                {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
                for r in activity
                if (r["state"] not in (None, "idle") and r["app"] != "stall-probe")
                or r["backend_type"] == "autovacuum worker"
            ]
            for r in busy_rows:
                r["seconds"] = float(r["seconds"]) if r["seconds"] is not None else None
            sample = {
                "t": time.time(),
                "cpu": cpu,
                "load": os.getloadavg()[0],
                "busy": busy_rows,
                "vacuum": vacuum,
                "bgwriter": {k: float(v) for k, v in bgwriter.items()},
                "admission": admission,
                "bench_pids": {
                    pid: role for pid, role in roles.items() if not role.startswith("pg:")
                },
            }
            out.write(json.dumps(sample, default=str) + "\n")
            out.flush()
            await asyncio.sleep(max(0.0, args.interval - (time.monotonic() - started)))
    await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
