"""One line a second of a mixed-bench phase: what the answers saw beside what ran.

Usage, after `bench/mixed_bench.py --keep-workdir` beside `bench/stall_probe.py`:

    .venv/bin/python bench/stall_timeline.py --answers /tmp/mixed-bench-XXXX/200 \
        --start 13:41:07 --probe /tmp/probe.jsonl [--gc-dir /tmp/gc] [--pg-log FILE]

`--start` is the phase's wall-clock start (UTC) printed in bench/results/mixed.md. Per
second of the schedule: requests due, p50 / p99 / max latency (sign-ins and refreshes
apart), 503s; CPU of the server processes, the worker, PostgreSQL's processes for the
database and the machine; the statements running longer than 0.2 s; autovacuum; the
checkpointer's buffers written; GC collections over 2 ms in the bench's processes (a
`sitecustomize` that logs them, see bench/README.md); checkpoint lines of PostgreSQL's log.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
from collections import defaultdict
from pathlib import Path

HASHED = ("sign-in", "refresh")


def pct(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--answers", required=True, help="the phase's wrk directory")
    parser.add_argument("--start", required=True, help="HH:MM:SS UTC, the schedule's start")
    parser.add_argument("--date", default=dt.datetime.now(dt.UTC).date().isoformat())
    parser.add_argument("--probe")
    parser.add_argument("--gc-dir")
    parser.add_argument("--pg-log")
    parser.add_argument("--only-over", type=float, default=0, help="print seconds with p99 ≥")
    args = parser.parse_args()
    t0 = dt.datetime.fromisoformat(f"{args.date}T{args.start}+00:00").timestamp()

    latencies: dict[int, list[float]] = defaultdict(list)
    shed: dict[int, int] = defaultdict(int)
    for out in Path(args.answers).glob("*.out"):
        for line in out.read_text().splitlines():
            kind, *rest = line.split()
            if kind in ("summary", "wrk") or kind in HASHED:
                continue
            second = int(float(rest[2]) / 1e6)
            latencies[second].append(float(rest[1]) / 1000)
            shed[second] += rest[0] == "503"

    cpu: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    notes: dict[int, set[str]] = defaultdict(set)
    role_of: dict[str, str] = {}
    if args.probe:
        previous, shed_before = None, {}
        for line in Path(args.probe).read_text().splitlines():
            sample = json.loads(line)
            role_of.update(sample.get("bench_pids", {}))
            second = math.floor(sample["t"] - t0)
            for key, used in sample["cpu"].items():
                cpu[second][key] += used
            for row in sample["busy"]:
                if row["backend_type"] == "autovacuum worker":
                    notes[second].add(f"AV {row['query'][:50]}")
                elif (row["seconds"] or 0) > 0.2 and row["state"] != "idle":
                    notes[second].add(
                        f"{row['app']} {row['seconds']:.1f}s {row['wait']} {row['query'][:40]}"
                    )
            bg = sample["bgwriter"]
            if previous is not None:
                written = bg["buffers_checkpoint"] - previous["buffers_checkpoint"]
                cpu[second]["ckpt_buffers"] += written
                if bg["checkpoint_sync_time"] > previous["checkpoint_sync_time"]:
                    sync = bg["checkpoint_sync_time"] - previous["checkpoint_sync_time"]
                    notes[second].add(f"checkpoint sync {sync:.0f} ms")
            previous = bg
            for name, value in sample.get("admission", {}).items():
                if name.startswith("shed_total") and value > shed_before.get(name, value):
                    reason = name.split('"')[1]
                    notes[second].add(f"shed {reason} +{value - shed_before[name]:.0f}")
                shed_before[name] = value
    if args.gc_dir:
        for log in Path(args.gc_dir).glob("gc-*.log"):
            pid = log.stem[3:]
            for line in log.read_text().splitlines():
                at, gen, ms, *_ = line.split()
                second = math.floor(float(at) - t0)
                if float(ms) >= 5 or gen == "2":
                    role = role_of.get(pid, "pid " + pid)
                    notes[second].add(f"gc{gen} {float(ms):.0f}ms {role}")
    if args.pg_log:
        for line in Path(args.pg_log).read_text(errors="replace").splitlines():
            if "checkpoint" not in line and "automatic" not in line:
                continue
            try:
                at = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")
            except ValueError:
                continue
            second = math.floor(at.replace(tzinfo=dt.UTC).timestamp() - t0)
            if second in latencies:
                notes[second].add(line[24:][:110])

    print(
        f"{'s':>4} {'n':>4} {'p50':>6} {'p99':>6} {'max':>6} {'503':>3} "
        f"{'srv':>5} {'wrk':>5} {'pg':>5} {'mach':>5} ckpt notes"
    )
    for second in sorted(latencies):
        values = latencies[second]
        p99 = pct(values, 99)
        if p99 < args.only_over and not shed[second]:
            continue
        c = cpu.get(second, {})
        print(
            f"{second:>4} {len(values):>4} {pct(values, 50):>6.1f} {p99:>6.1f} "
            f"{max(values):>6.1f} {shed[second]:>3} {c.get('server', 0):>5.2f} "
            f"{c.get('worker', 0):>5.2f} {c.get('postgres', 0):>5.2f} "
            f"{c.get('machine', 0):>5.2f} {c.get('ckpt_buffers', 0):>4.0f} "
            + "; ".join(sorted(notes.get(second, ())))
        )


if __name__ == "__main__":
    main()
