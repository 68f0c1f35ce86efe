"""The SAQ worker's CPU per booking + cancel pair, and how late the notices go (issue 17).

Usage (a database `medbook seed scale` loaded and migrated to head; the bench writes its
own bookings into it, marked with their own reason, and deletes them at the end):

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/scale_bench \
    BENCH_REDIS_URL=redis://127.0.0.1:6379/12 \
        .venv/bin/python bench/worker_bench.py [--rate 14] [--seconds 40] [--profile]

It starts one `medbook serve --workers 1` process and one `medbook worker` (the dev
mailbox takes the messages, as in `bench/mixed_bench.py`), measures the idle worker's CPU
(user + system) over `--idle-seconds`, then books `--rate` appointments a second through
the API for `--seconds`, each cancelled by its patient `--cancel-after` seconds after its
201 (the mix's POST then PATCH), and reads the worker's CPU until every notice of those
bookings is sent or void. CPU per pair is the worker's CPU over the load and the drain,
less the idle rate over the same time. Notices: seconds from a row's `due_at` (its
commit's clock) to `sent_at`, p50 / p95 / max per kind. With `--profile`, py-spy records
the worker during the load and the profile's top entries are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.access.tokens import issue_access_token  # noqa: E402
from app.settings import plain_database_url  # noqa: E402
from bench.availability_bench import free_port, free_slots, start_server  # noqa: E402
from bench.mixed_bench import bench_env, bench_target, release_redis  # noqa: E402

REASON = "worker bench booking"  # this bench's own bookings (not the mix's, which may run)
PROFILES = ROOT / "bench" / "results" / "profiles"


def cpu(pid: int) -> float:
    """CPU seconds (user + system) so far of a process and its children."""
    root = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in (root, *root.children(recursive=True)))


async def delete_own(conn: asyncpg.Connection) -> str:
    """This bench's bookings, their notifications and mailbox rows."""
    await conn.execute(
        "DELETE FROM dev_mailbox m USING notifications n, appointments a "
        "WHERE m.notification_id = n.id AND n.appointment_id = a.id AND a.reason = $1",
        REASON,
    )
    return str(await conn.execute("DELETE FROM appointments WHERE reason = $1", REASON))


async def unsettled(conn: asyncpg.Connection) -> int:
    """Notifications of this bench's bookings still due now and not done."""
    return await conn.fetchval(
        "SELECT count(*) FROM notifications n JOIN appointments a ON a.id = n.appointment_id "
        "WHERE a.reason = $1 AND n.status IN ('pending', 'queued') AND n.due_at <= now()",
        REASON,
    )


async def delays(conn: asyncpg.Connection) -> dict[str, list[float]]:
    rows = await conn.fetch(
        "SELECT n.kind, n.status, extract(epoch FROM n.sent_at - n.due_at) AS delay "
        "FROM notifications n JOIN appointments a ON a.id = n.appointment_id "
        "WHERE a.reason = $1 AND n.due_at <= now()",
        REASON,
    )
    found: dict[str, list[float]] = collections.defaultdict(list)
    for row in rows:
        key = f"{row['kind']} {row['status']}"
        found[key].append(float(row["delay"]) if row["delay"] is not None else float("nan"))
    return found


async def load_fixtures(conn: asyncpg.Connection, secret: str) -> dict:
    """Doctors, patients who book (with their tokens), and who may not book whom."""
    doctors = [
        (r["id"], r["timezone"])
        for r in await conn.fetch(
            "SELECT d.id, c.timezone FROM doctors d JOIN clinics c ON c.id = d.clinic_id "
            "WHERE d.active ORDER BY d.id"
        )
    ]
    patients = await conn.fetch(
        "SELECT id, patient_id FROM users WHERE role = 'patient' AND is_active "
        "ORDER BY id LIMIT 1000"
    )
    held = await conn.fetch(
        "SELECT a.patient_id, a.doctor_id FROM appointments a "
        "JOIN users u ON u.patient_id = a.patient_id WHERE u.role = 'patient' "
        "AND a.status = 'booked' AND a.starts_at > now() "
        "GROUP BY 1, 2 HAVING count(*) >= 2"
    )
    if len(doctors) < 100 or len(patients) < 100:
        raise SystemExit("load the year first: medbook seed scale")
    return {
        "doctors": doctors,
        "bookers": [
            (
                p["patient_id"],
                issue_access_token(secret, user_id=p["id"], role="patient", ttl_seconds=7200),
            )
            for p in patients
        ],
        "held": {(h["patient_id"], h["doctor_id"]) for h in held},
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_for_worker(worker: subprocess.Popen, redis_url: str, limit: float = 60) -> None:
    """Until the worker has registered with SAQ (its worker_info key)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit("the worker exited; see bench/results/worker-bench-worker.log")
        if client.keys("saq:medbook:worker_info:*"):
            return
        time.sleep(0.2)
    raise SystemExit("the worker did not start")


async def drive(
    http: httpx.AsyncClient, items: list[tuple[str, str]], rate: float, cancel_after: float
) -> collections.Counter[str]:
    """Book items[i] at i / rate seconds; cancel each new booking `cancel_after` later."""
    statuses: collections.Counter[str] = collections.Counter()
    start = time.monotonic()

    async def pair(i: int, token: str, body: str) -> None:
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        booked = await http.post("/api/appointments", content=body, headers=auth)
        statuses[f"book {booked.status_code}"] += 1
        if booked.status_code != 201:
            return
        await asyncio.sleep(cancel_after)
        cancelled = await http.patch(
            f"/api/appointments/{booked.json()['id']}",
            json={"status": "cancelled"},
            headers=auth,
        )
        statuses[f"cancel {cancelled.status_code}"] += 1

    await asyncio.gather(*(pair(i, t, b) for i, (t, b) in enumerate(items)))
    return statuses


def top_entries(path: Path, count: int = 25) -> list[str]:
    """A speedscope profile's frames by own share and by total share of the samples."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    names = [
        f"{f['name']} ({'/'.join(Path(f.get('file', '?')).parts[-2:])}:{f.get('line', '')})"
        for f in frames
    ]
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for profile in data["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            if not stack:
                continue
            samples += weight
            own[names[stack[-1]]] += weight
            for i in set(stack):
                total[names[i]] += weight
    lines = [f"samples: {samples}", "own time:"]
    lines += [f"  {w / samples:6.1%}  {n}" for n, w in own.most_common(count)]
    lines.append("total time:")
    lines += [f"  {w / samples:6.1%}  {n}" for n, w in total.most_common(2 * count)]
    return lines


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=14, help="booking + cancel pairs a second")
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--idle-seconds", type=float, default=20)
    parser.add_argument("--cancel-after", type=float, default=0.1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--label", default="run")
    args = parser.parse_args()
    database_url, redis_url, bench_redis, secret = bench_target("redis://127.0.0.1:6379/12", 3600)
    env = bench_env(database_url, redis_url, secret)
    today = dt.date.today()
    conn = await asyncpg.connect(plain_database_url(database_url))
    await delete_own(conn)
    fixtures = await load_fixtures(conn, secret)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(env, port, log_name="worker-bench-server.log", workers=1)
    worker_log = open(ROOT / "bench" / "results" / "worker-bench-worker.log", "w")  # noqa: SIM115
    worker = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker"],
        env=env,
        cwd=ROOT,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    spy = None
    try:
        wait_for_worker(worker, redis_url)
        pairs = int(args.rate * args.seconds)
        warm = int(args.rate * 3)
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            auth = {"Authorization": f"Bearer {fixtures['bookers'][0][1]}"}
            slots = await free_slots(http, auth, fixtures["doctors"], today, pairs + warm)
            bookers = fixtures["bookers"]
            items: list[tuple[str, str]] = []
            for n, (doctor_id, start) in enumerate(slots):
                patient_id, token = bookers[(n * 7) % len(bookers)]
                k = n
                while (patient_id, doctor_id) in fixtures["held"]:
                    k += 1
                    patient_id, token = bookers[(k * 7) % len(bookers)]
                body = json.dumps({"doctor_id": doctor_id, "start": start, "reason": REASON})
                items.append((token, body))
            # Warm-up: the worker's pools, prepared statements and templates.
            await drive(http, items[:warm], args.rate, args.cancel_after)
            deadline = time.monotonic() + 90
            while await unsettled(conn) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            await asyncio.sleep(2)
            idle_start, idle_cpu = time.monotonic(), cpu(worker.pid)
            await asyncio.sleep(args.idle_seconds)
            idle_rate = (cpu(worker.pid) - idle_cpu) / (time.monotonic() - idle_start)

            if args.profile:
                PROFILES.mkdir(parents=True, exist_ok=True)
                spy = subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        *("record", "--pid", str(worker.pid), "--rate", "250", "--nonblocking"),
                        "--format",
                        "speedscope",
                        "--output",
                        str(PROFILES / f"worker-{args.label}.json"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
                await asyncio.sleep(1)
            load = os.getloadavg()[0]
            t0, c0 = time.monotonic(), cpu(worker.pid)
            statuses = await drive(http, items[warm:], args.rate, args.cancel_after)
            deadline = time.monotonic() + 90
            while await unsettled(conn) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            t1, c1 = time.monotonic(), cpu(worker.pid)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
            spy = None
        left = await unsettled(conn)
        done = statuses.get("cancel 200", 0)
        gross = c1 - c0
        net = gross - idle_rate * (t1 - t0)
        found = await delays(conn)
        print(
            f"[{args.label}] load {load:.2f} at start, {os.getloadavg()[0]:.2f} at end; "
            f"{dict(statuses)}; {t1 - t0:.1f} s of load and drain, {left} notices left unsent"
        )
        print(
            f"[{args.label}] idle worker {idle_rate * 1000:.1f} ms CPU a second; load: "
            f"{gross:.2f} s CPU over {t1 - t0:.1f} s = {gross / (t1 - t0):.3f} cores; "
            f"per pair {gross * 1000 / done:.2f} ms gross, {net * 1000 / done:.2f} ms net "
            f"of idle"
        )
        for key, values in sorted(found.items()):
            sent = [v for v in values if v == v]
            if sent:
                print(
                    f"[{args.label}]   {key}: {len(values)}, due -> sent p50 "
                    f"{statistics.median(sent) * 1000:.0f} ms, p95 "
                    f"{percentile(sent, 0.95) * 1000:.0f} ms, max {max(sent) * 1000:.0f} ms"
                )
            else:
                print(f"[{args.label}]   {key}: {len(values)}")
        if args.profile:
            print("\n".join(top_entries(PROFILES / f"worker-{args.label}.json")))
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        for process in (worker, server):
            process.send_signal(signal.SIGINT)
        for process in (worker, server):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        worker_log.close()
        print(await delete_own(conn))
        await conn.close()
        release_redis(bench_redis)


if __name__ == "__main__":
    asyncio.run(main())
