"""Year-scale mixed workload with wrk against two server processes and a worker (issue 9).

Usage (after `medbook seed scale` loaded the year into DATABASE_URL; wrk from Debian):

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/scale_bench \
        .venv/bin/python bench/mixed_bench.py [--seconds-200 300] [--seconds-400 60]

It starts `medbook serve --workers 2` and `medbook worker` against that database and a
Redis database of its own (BENCH_REDIS_URL, default redis://127.0.0.1:6379/5, flushed
first), holds `--sockets` live-update websockets open from a helper process, and drives
the review's mix, one wrk process per endpoint class (bench/lua/mixed.lua), each paced to
a fixed schedule so latency counts from the time a request was due:

- availability 60 % (doctor-days over the next three weeks, hits and misses as they come);
- booking and cancel 15 % (book a precomputed free slot, cancel it with PATCH);
- record lists 15 % (a doctor in care or the patient; one patient holds 50 records);
- appointment lists 10 % (a patient's upcoming, a doctor's day, a front desk's clinic day);
- sign-ins 3 % (a patient signs in with their password, then refreshes the pair's refresh
  token: each is a request; sign-ins come in bursts in real life, and argon2 is the
  costliest thing a request can ask for).

Phases: warm-up; steps of --step-seconds at rising rates until the p99 reaches 50 ms twice
in a row; 200 requests/s for --seconds-200; 400 requests/s for --seconds-400; then the
bare JSON route `/health/live` closed loop (wrk, 4-64 connections) as the framework's
ceiling. The bench's own bookings are deleted at the end. Reports: bench/results/mixed.md
and bench/results/mixed-latency.svg.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import math
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.access.tokens import issue_access_token  # noqa: E402
from app.settings import plain_database_url  # noqa: E402
from bench import records_bench  # noqa: E402
from bench.availability_bench import (  # noqa: E402
    best_under_50ms,
    free_port,
    free_slots,
    server_env,
    start_server,
)
from bench.loadgen import Client, Result, run  # noqa: E402
from db.seed_demo import DEMO_PASSWORD  # noqa: E402

RESULTS = ROOT / "bench" / "results"
LUA = ROOT / "bench" / "lua" / "mixed.lua"
MIX = {"availability": 0.58, "booking": 0.14, "records": 0.15, "lists": 0.10, "auth": 0.03}
# Requests/s per wrk thread. Each thread holds one connection, so a connection is busy for
# rate x service time of each second: kept low, a slow answer rarely delays the next one.
PER_THREAD = 2.5
# Seconds wrk keeps running after the schedule ends, for late answers (a thread whose
# schedule is over keeps its connection alive with an unrecorded /health/live every 2 s:
# uvicorn closes a connection idle for 5 s, which wrk would count as a read error).
GRACE = 3.5
REASON = "mixed bench"  # marks the bench's own bookings, deleted at the end
KINDS = {
    "availability": "availability",
    "book": "booking (POST)",
    "cancel": "cancel (PATCH)",
    "records": "record lists",
    "lists": "appointment lists",
    "sign-in": "sign-in (POST)",
    "refresh": "token refresh (POST)",
}
# Classes left out of "every endpoint's p99 < 50 ms": a sign-in is one argon2id hash,
# 25-40 ms of CPU by design (OWASP's parameters), so its p99 measures the hash, not
# queueing; its figures are reported beside the step's (decision: docs in bench/README.md).
HASHED = ("sign-in",)
Item = tuple[str, str, str, int | None, str | None]  # kind, method, path, token index, body


@dataclass
class Phase:
    """One run of the mix at one rate: a Result per kind, wrk's own figures per class."""

    rate: float
    seconds: float
    results: dict[str, Result] = field(default_factory=dict)
    service: dict[str, dict[float, float]] = field(default_factory=dict)  # class -> pct -> ms
    socket_errors: int = 0
    conflicts: int = 0
    unanswered: int = 0  # due in the window, not answered before wrk stopped
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (due s, latency ms)
    # Every answer: (kind, status, latency ms from the schedule, service ms from the send,
    # whether it carried Retry-After).
    answers: list[tuple[str, int, float, float, bool]] = field(default_factory=list)
    # The load generator's own lag per answer (same order): how much later than both its
    # schedule and the previous answer on its connection the request left (bench/lua).
    sender_lags: list[float] = field(default_factory=list)
    load: float = math.nan  # the machine's 1-minute load average as the phase ended
    started: str = ""  # wall-clock UTC time of its schedule's start (to match other logs)

    def errors(self) -> int:
        """Answers outside 2xx/3xx (a 409 on booking excepted) and socket errors."""
        bad = sum(
            n
            for kind, r in self.results.items()
            for code, n in r.statuses.items()
            if not 200 <= code < 400 and not (kind == "book" and code == 409)
        )
        return bad + self.socket_errors

    def error_codes(self) -> str:
        """The statuses counted as errors, e.g. `book 422: 3, records 503: 1`."""
        bad = [
            f"{kind} {code}: {n}"
            for kind, r in self.results.items()
            for code, n in sorted(r.statuses.items())
            if not 200 <= code < 400 and not (kind == "book" and code == 409)
        ]
        if self.socket_errors:
            bad.append(f"socket errors: {self.socket_errors}")
        return ", ".join(bad)

    def worst_p99(self) -> float:
        """The worst p99 of the issue's endpoint classes (sign-ins apart, see HASHED)."""
        return max(
            (r.pct(99) for k, r in self.results.items() if r.count and k not in HASHED),
            default=math.nan,
        )

    def passes(self, every_endpoint: bool = True) -> bool:
        """p99 under 50 ms (of every endpoint class but sign-in, or of all requests
        together), and every request due was answered."""
        p99 = self.worst_p99() if every_endpoint else self.total().pct(99)
        return p99 < 50 and self.unanswered == 0

    def total(self) -> Result:
        merged = Result("all")
        for r in self.results.values():
            merged.latencies_ms += r.latencies_ms
        merged.duration_s = self.seconds
        return merged

    def accepted(self, kind: str | None = None) -> Result:
        """The answers that were not shed (everything but 503), of one kind or all."""
        out = Result(KINDS.get(kind or "", "all accepted"), duration_s=self.seconds)
        for k, status, latency, _, _ in self.answers:
            if status != 503 and kind in (None, k):
                out.latencies_ms.append(latency)
                out.statuses[status] = out.statuses.get(status, 0) + 1
        return out

    def shed(self) -> tuple[Result, Result, int]:
        """The 503 answers: latency from the schedule, service time from the send, and
        how many came without Retry-After."""
        late, service, bare = Result("503 from the schedule"), Result("503 from the send"), 0
        for _, status, latency, served, retry in self.answers:
            if status == 503:
                late.latencies_ms.append(latency)
                service.latencies_ms.append(served)
                bare += not retry
        return late, service, bare


def bench_target(
    default_redis_url: str = "redis://127.0.0.1:6379/6", seconds: int = 1800
) -> tuple[str, str, redis.Redis, str]:
    """What an in-process bench starts from: the scale database (DATABASE_URL, required),
    its Redis database claimed for `seconds` (`claim_redis`) and a fresh secret key."""
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        raise SystemExit("set DATABASE_URL to a database `medbook seed scale` loaded")
    redis_url, bench_redis = claim_redis(default_redis_url, seconds)
    return database_url, redis_url, bench_redis, secrets.token_urlsafe(40)


def claim_redis(default_url: str, seconds: int) -> tuple[str, redis.Redis]:
    """The bench's Redis database (BENCH_REDIS_URL, else `default_url`), claimed for
    `seconds` the way test runs claim theirs (`medbook:test-claim:N` in database 0,
    conftest.py), so that test runs keep off it, then flushed; `release_redis` ends the
    claim."""
    redis_url = os.environ.get("BENCH_REDIS_URL", default_url)
    bench_redis = redis.Redis.from_url(redis_url)
    kwargs = bench_redis.connection_pool.connection_kwargs
    claims = redis.Redis(**{**kwargs, "db": 0})
    claim = f"medbook:test-claim:{kwargs.get('db', 0)}"
    if not claims.set(claim, f"{socket.gethostname()}:{os.getpid()}", nx=True, ex=seconds):
        raise SystemExit(f"{redis_url} is claimed by a test run; set BENCH_REDIS_URL")
    bench_redis.flushdb()
    return redis_url, bench_redis


def release_redis(bench_redis: redis.Redis) -> None:
    """End the claim `claim_redis` took."""
    kwargs = bench_redis.connection_pool.connection_kwargs
    redis.Redis(**{**kwargs, "db": 0}).delete(f"medbook:test-claim:{kwargs.get('db', 0)}")


def lua_value(value: object) -> str:
    """A Python value as Lua source (strings are ASCII here, so JSON escapes are Lua's)."""
    if value is None:
        return "nil"
    if isinstance(value, str):
        assert value.isascii(), value
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "{" + ",".join(lua_value(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}={lua_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


async def delete_bookings(database_url: str, conn: asyncpg.Connection | None = None) -> str:
    """Delete the bench's own bookings (their notifications go with them). Their dev
    mailbox rows go first: dev_mailbox.notification_id has no index, so letting ON DELETE
    SET NULL find them costs a scan of the mailbox per notification."""
    own = conn is None
    conn = conn or await asyncpg.connect(plain_database_url(database_url))
    try:
        await conn.execute(
            "DELETE FROM dev_mailbox m USING notifications n, appointments a "
            "WHERE m.notification_id = n.id AND n.appointment_id = a.id AND a.reason = $1",
            REASON,
        )
        return str(await conn.execute("DELETE FROM appointments WHERE reason = $1", REASON))
    finally:
        if own:
            await conn.close()


async def load_fixtures(database_url: str, secret: str, today: dt.date) -> dict:
    """Users and their tokens, and the request items of every class except booking."""
    heavy = await records_bench.load_fixtures(database_url, secret)  # 50 records, a doctor
    conn = await asyncpg.connect(plain_database_url(database_url))
    try:
        await delete_bookings(database_url, conn)
        doctors = await conn.fetch(
            "SELECT d.id, c.timezone FROM doctors d JOIN clinics c ON c.id = d.clinic_id "
            "WHERE d.active ORDER BY d.id"
        )
        patients = await conn.fetch(
            "SELECT id, patient_id, email FROM users WHERE role = 'patient' AND is_active "
            "ORDER BY id LIMIT 1000"
        )
        doctor_users = await conn.fetch(
            "SELECT id, doctor_id FROM users WHERE role = 'doctor' ORDER BY id"
        )
        desks = await conn.fetch(
            "SELECT id, clinic_id FROM users WHERE role = 'front_desk' ORDER BY id"
        )
        # Patients with records read them themselves, or a doctor in their care does.
        readers = await conn.fetch(
            "SELECT DISTINCT ON (u.patient_id) u.id AS patient_user, u.patient_id, "
            "du.id AS doctor_user FROM users u "
            "JOIN medical_records r ON r.patient_id = u.patient_id "
            "JOIN appointments a ON a.patient_id = u.patient_id "
            "AND a.status IN ('booked', 'checked_in', 'completed') "
            "JOIN users du ON du.doctor_id = a.doctor_id "
            "WHERE u.role = 'patient' ORDER BY u.patient_id, a.starts_at DESC"
        )
        # Who may not book another slot with a doctor (at most 3 future bookings each).
        held = await conn.fetch(
            "SELECT a.patient_id, a.doctor_id FROM appointments a "
            "JOIN users u ON u.patient_id = a.patient_id WHERE u.role = 'patient' "
            "AND a.status = 'booked' AND a.starts_at > now() "
            "GROUP BY 1, 2 HAVING count(*) >= 2"
        )
        heavy_user = await conn.fetchval(
            "SELECT id FROM users WHERE patient_id = $1", heavy["patient_id"]
        )
        appointments = await conn.fetchval("SELECT count(*) FROM appointments")
        record_count = await conn.fetchval("SELECT count(*) FROM medical_records")
    finally:
        await conn.close()
    if len(doctors) < 100 or len(patients) < 100 or not readers:
        raise SystemExit("load the year first: medbook seed scale")

    tokens: list[str] = []
    index: dict[int, int] = {}  # user id -> 1-based position in `tokens` (Lua)

    def token(user_id: int, role: str) -> int:
        if user_id not in index:
            tokens.append(issue_access_token(secret, user_id=user_id, role=role, ttl_seconds=7200))
            index[user_id] = len(tokens)
        return index[user_id]

    rng = random.Random(12)
    patient_tokens = [token(p["id"], "patient") for p in patients]
    availability: list[Item] = []
    for _ in range(5000):
        doctor_id = rng.choice(doctors)["id"]
        day = today + dt.timedelta(days=rng.randint(0, 20))
        path = f"/api/appointments/available-slots?doctor_id={doctor_id}&date={day}"
        availability.append(("availability", "GET", path, rng.choice(patient_tokens), None))

    heavy_path = f"/api/patients/{heavy['patient_id']}/records"
    tokens.append(heavy["headers"]["Authorization"].removeprefix("Bearer "))  # their doctor
    heavy_readers = [len(tokens), token(heavy_user, "patient")]
    records: list[Item] = []
    for n, r in enumerate(rng.sample(list(readers), len(readers))):
        path = f"/api/patients/{r['patient_id']}/records"
        records.append(("records", "GET", path, token(r["patient_user"], "patient"), None))
        records.append(("records", "GET", path, token(r["doctor_user"], "doctor"), None))
        if n % 2:  # one list in six is the 50-record one, read by the doctor or the patient
            records.append(("records", "GET", heavy_path, heavy_readers[n // 2 % 2], None))

    lists: list[Item] = []
    for n in range(1500):
        if n % 3 == 0:
            lists.append(("lists", "GET", "/api/appointments", rng.choice(patient_tokens), None))
        elif n % 3 == 1:
            d = rng.choice(doctor_users)
            day = today + dt.timedelta(days=rng.randint(0, 6))
            path = f"/api/appointments?doctor_id={d['doctor_id']}&date={day}"
            lists.append(("lists", "GET", path, token(d["id"], "doctor"), None))
        else:
            desk = rng.choice(desks)
            day = today + dt.timedelta(days=rng.randint(0, 6))
            path = f"/api/appointments?clinic_id={desk['clinic_id']}&date={day}"
            lists.append(("lists", "GET", path, token(desk["id"], "front_desk"), None))
    # Sign-ins: every one with the password `medbook seed scale` gives every login.
    auth: list[Item] = []
    for p in rng.sample(list(patients), len(patients)):
        body = json.dumps({"email": p["email"], "password": DEMO_PASSWORD})
        auth.append(("sign-in", "POST", "/api/auth/token", None, body))
    return {
        "doctors": [(d["id"], d["timezone"]) for d in doctors],
        "patients": patients,
        "bookers": [(p["patient_id"], t) for p, t in zip(patients, patient_tokens, strict=True)],
        "held": {(h["patient_id"], h["doctor_id"]) for h in held},
        "tokens": tokens,
        "items": {
            "availability": availability,
            "records": records,
            "lists": lists,
            "auth": auth,
        },
        "appointments": appointments,
        "record_count": record_count,
        "heavy_patient": heavy["patient_id"],
        "readers": len(readers),
    }


def booking_items(slots: list[tuple[int, str]], fixtures: dict) -> list[Item]:
    """A POST per free slot, each by a patient who may still book with that doctor."""
    items: list[Item] = []
    bookers = itertools.cycle(fixtures["bookers"])
    for doctor_id, start in slots:
        patient_id, token = next(bookers)
        while (patient_id, doctor_id) in fixtures["held"]:
            patient_id, token = next(bookers)
        body = json.dumps({"doctor_id": doctor_id, "start": start, "reason": REASON})
        items.append(("book", "POST", "/api/appointments", token, body))
    return items


def wrk_lead(rate: float) -> float:
    """Seconds between starting a phase's wrk processes and its schedule's start: every
    wrk thread has loaded its data before the common start."""
    threads = sum(max(1, math.ceil(rate * share / PER_THREAD)) for share in MIX.values())
    return 1.5 + 0.01 * threads


def scheduled_count(rate: float, seconds: float) -> int:
    """How many requests a class at `rate` req/s sends in `seconds`: the j with
    j / rate < seconds. Float-safe (0.14 x 200 x 20 is 560.0000000000001, not 561), and
    passed to the Lua script so the schedule and the count of requests due agree."""
    return math.ceil(rate * seconds - 1e-6)


def run_mix(
    base: str,
    fixtures: dict,
    rate: float,
    seconds: float,
    workdir: Path,
    start_at: float | None = None,
) -> Phase:
    """Drive every class at its share of `rate` for `seconds`, one wrk process each,
    from `start_at` (time.monotonic(); default: as soon as wrk is ready)."""
    phase = Phase(rate, seconds)
    threads = {cls: max(1, math.ceil(rate * share / PER_THREAD)) for cls, share in MIX.items()}
    t0 = start_at if start_at is not None else time.monotonic() + wrk_lead(rate)
    lead = max(0.0, t0 - time.monotonic())
    wall_t0 = dt.datetime.fromtimestamp(time.time() + t0 - time.monotonic(), dt.UTC)
    phase.started = wall_t0.strftime("%H:%M:%S")
    workdir.mkdir(parents=True, exist_ok=True)
    procs = []
    for cls, share in MIX.items():
        # Thread i of N sends items i, i + N, ...: each thread gets a file with its slice
        # and only the tokens that slice uses (each thread holds its own Lua state).
        data = workdir / cls
        for index in range(threads[cls]):
            items = fixtures["items"][cls][index :: threads[cls]]
            used = sorted({item[3] for item in items if item[3] is not None})
            renumber: dict[int | None, int | None] = {None: None}
            renumber.update({old: new for new, old in enumerate(used, start=1)})
            config = {
                "rate": rate * share,
                "threads": threads[cls],
                "t0": t0,
                "seconds": seconds,
                "count": scheduled_count(rate * share, seconds),
                "tokens": [fixtures["tokens"][i - 1] for i in used],
                "items": [(k, m, p, renumber[t], b) for k, m, p, t, b in items],
            }
            Path(f"{data}-{index}.lua").write_text(f"return {lua_value(config)}\n")
        out = workdir / f"{cls}.out"
        out.unlink(missing_ok=True)
        args = [
            "wrk",
            f"-t{threads[cls]}",
            f"-c{threads[cls]}",
            f"-d{math.ceil(lead + seconds + GRACE)}s",
            "--timeout",
            "10s",
            "-s",
            str(LUA),
            base,
            "--",
            str(data),
        ]
        env = {**os.environ, "MIXED_OUT": str(out)}
        log = open(workdir / f"{cls}.log", "w")  # noqa: SIM115
        procs.append((cls, out, subprocess.Popen(args, env=env, stdout=log, stderr=log), log))
    for kind in KINDS:
        phase.results[kind] = Result(KINDS[kind], duration_s=seconds)
    for cls, out, proc, log in procs:
        proc.wait()
        log.close()
        if proc.returncode or not out.exists():
            raise SystemExit(f"wrk for {cls} failed: {(workdir / f'{cls}.log').read_text()}")
        service: dict[float, float] = {}
        for line in out.read_text().splitlines():
            head, *rest = line.split()
            if head == "summary":
                # requests, duration, connect, read, write, status, timeout errors
                # connect, read and write errors. Not wrk's `timeout`: it only counts
                # connections whose last send is older than --timeout (an idle or not yet
                # started one too); a late answer is still read and timed here.
                phase.socket_errors += sum(int(v) for v in rest[2:5])
            elif head == "wrk":
                service[float(rest[0])] = int(rest[1]) / 1000
            else:
                result = phase.results[head]
                status = int(rest[0])
                phase.timeline.append((float(rest[2]) / 1e6, float(rest[1]) / 1000))
                phase.answers.append(
                    (head, status, float(rest[1]) / 1000, float(rest[3]) / 1000, rest[4] == "1")
                )
                phase.sender_lags.append(float(rest[5]) / 1000 if len(rest) > 5 else math.nan)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                result.latencies_ms.append(float(rest[1]) / 1000)
                if head == "book" and status == 409:
                    phase.conflicts += 1
        phase.service[cls] = service
    for cls, share in MIX.items():  # thread i sends j = i, i + N, ... < count: each once
        due = scheduled_count(rate * share, seconds)
        answered = sum(phase.results[k].count for k, c in CLASS_OF.items() if c == cls)
        phase.unanswered += max(0, due - answered)
    phase.load = os.getloadavg()[0]
    return phase


def cpu_seconds(server: int, worker: int) -> dict[str, float]:
    """CPU seconds so far of the server processes, the worker and the whole machine."""

    def tree(pid: int) -> float:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0.0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    machine = psutil.cpu_times()
    # Linux counts guest time inside user time as well.
    # Linux counts guest time inside user time as well; steal is the hypervisor's.
    waiting = ("idle", "iowait", "guest", "guest_nice", "steal")
    busy = sum(machine) - sum(getattr(machine, name, 0.0) for name in waiting)
    return {
        "server": tree(server),
        "worker": tree(worker),
        "machine": busy,
        "steal": getattr(machine, "steal", 0.0),
        "wall": time.monotonic(),
    }


def settle(server: int, worker: int, limit: float = 120) -> float:
    """Wait until the server and the worker have worked off what an earlier phase left
    queued (together under 0.3 of a core for a second); returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = cpu_seconds(server, worker)
        time.sleep(1)
        after = cpu_seconds(server, worker)
        if after["server"] + after["worker"] - before["server"] - before["worker"] < 0.3:
            break
    return time.monotonic() - started


def cpu_line(before: dict[str, float], after: dict[str, float], phase: Phase) -> str:
    """Where the machine's CPU went during a phase."""
    used = delta(after, before)
    count = phase.total().count or 1
    wall = used["wall"]  # the phase with wrk's start and grace: a few seconds more
    cores = os.cpu_count() or 1
    rest = used["machine"] - used["server"] - used["worker"]
    return (
        f"CPU during the phase: {used['machine'] / wall:.2f} of the machine's "
        f"{cores} cores busy; the two server processes {used['server'] * 1000 / count:.2f} ms "
        f"per request ({used['server'] / wall:.2f} cores), the worker "
        f"{used['worker'] / wall:.2f} cores, everything else (PostgreSQL, Redis, "
        f"wrk, the websocket helper, other users of the machine) {rest / wall:.2f} "
        f"cores; taken by the hypervisor (steal) {used['steal'] / wall:.2f} cores."
    )


def metrics(base: str) -> dict[str, float]:
    """Sums of a few series of GET /metrics (every server process together)."""
    wanted = (
        "medbook_slot_cache_hits_total",
        "medbook_slot_cache_misses_total",
        "medbook_websockets_open",
        "medbook_websocket_pushes_total",
        "medbook_http_requests_total",
        "medbook_db_connections_opened_total",
    )
    sums: dict[str, float] = dict.fromkeys(wanted, 0.0)
    sums["5xx"] = 0.0
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name == LAG_BUCKETS:  # the event loop's lag, by bucket (cumulative counts)
            le = line.split('le="', 1)[1].split('"', 1)[0]
            sums[f"{LAG_BUCKETS}:{le}"] = sums.get(f"{LAG_BUCKETS}:{le}", 0.0) + float(
                line.rsplit(" ", 1)[1]
            )
        if name in sums:
            value = float(line.rsplit(" ", 1)[1])
            sums[name] += value
            if name == "medbook_http_requests_total" and 'status="5' in line:
                sums["5xx"] += value
    return sums


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


LAG_BUCKETS = "medbook_event_loop_lag_seconds_bucket"


def loop_lag(m: dict[str, float]) -> str:
    """p50 / p99 / p99.9 of the server processes' event-loop lag from the histogram's
    buckets (a delta of `metrics`): the upper bound of the bucket each falls in, in ms.
    The lag is how long a request's bytes sit in the kernel before its process reads
    them: the server's part of a refusal's time, which the load generator's is not."""
    buckets = sorted(
        (float(key.rsplit(":", 1)[1]), count)
        for key, count in m.items()
        if key.startswith(LAG_BUCKETS + ":")
    )
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return "not recorded"

    def bound(p: float) -> str:
        le = next(le for le, count in buckets if count >= p * total)
        return "> 5,000" if math.isinf(le) else f"≤ {le * 1000:g}"

    return f"{bound(0.5)} / {bound(0.99)} / {bound(0.999)} ms ({total:.0f} ticks)"


# --- websockets: a helper process holds them open for the whole run -------------------


async def hold_sockets(config_path: str) -> None:
    """Child process: open the sockets, say `ready N`, count pushes until stdin closes."""
    import websockets

    config = json.loads(Path(config_path).read_text())
    port, cookies = config["port"], config["cookies"]
    counts = {"opened": 0, "messages": 0, "closed_by_server": 0, "failed": 0}
    ready = asyncio.Event()
    gate = asyncio.Semaphore(20)

    async def watch(n: int) -> None:
        doctor_id, day = config["channels"][n % len(config["channels"])]
        url = f"ws://127.0.0.1:{port}/ws/live?view=slots&doctor_id={doctor_id}&date={day}&days=1"
        headers = {"Cookie": f"{config['cookie_name']}={cookies[n % len(cookies)]}"}
        headers["Origin"] = f"http://127.0.0.1:{port}"
        try:
            async with gate:
                ws = await websockets.connect(url, additional_headers=headers, max_size=None)
                await ws.recv()  # the resync every connect starts with
            counts["opened"] += 1
        except Exception:  # counted and reported
            counts["failed"] += 1
            return
        finally:
            if counts["opened"] + counts["failed"] >= config["sockets"]:
                ready.set()
        try:
            async for _ in ws:
                counts["messages"] += 1
        except websockets.ConnectionClosed:
            pass
        counts["closed_by_server"] += 1

    tasks = [asyncio.create_task(watch(n)) for n in range(config["sockets"])]
    await asyncio.wait_for(ready.wait(), timeout=120)
    print("ready", counts["opened"], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    print(json.dumps(counts), flush=True)
    for task in tasks:
        task.cancel()


async def start_sockets(
    redis_url: str, port: int, patients, channels, sockets: int, workdir: Path
) -> subprocess.Popen:
    from redis.asyncio import Redis

    from app.access.browser_sessions import COOKIE_NAME, create_session

    client = Redis.from_url(redis_url)
    cookies = [(await create_session(client, p["id"])).session_id for p in patients[:200]]
    await client.aclose()
    config = workdir / "sockets.json"
    config.write_text(
        json.dumps(
            {
                "port": port,
                "cookies": cookies,
                "cookie_name": COOKIE_NAME,
                "channels": channels,
                "sockets": sockets,
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, __file__, "--hold-sockets", str(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        raise SystemExit(f"the websocket helper failed: {line!r}")
    return proc


def stop_sockets(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(input="", timeout=60)
    return json.loads(out.strip().splitlines()[-1])


# --- the report -------------------------------------------------------------------------

TABLE = (
    "| endpoint | requests | req/s | p50 ms | p95 ms | p99 ms | max ms | wrk p99 ms "
    "(from send) | statuses |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
)
CLASS_OF = {
    "availability": "availability",
    "book": "booking",
    "cancel": "booking",
    "records": "records",
    "lists": "lists",
    "sign-in": "auth",
    "refresh": "auth",
}


def phase_table(phase: Phase) -> list[str]:
    rows = [TABLE]
    for kind, r in phase.results.items():
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(r.statuses.items()))
        service = phase.service.get(CLASS_OF[kind], {}).get(99.0, math.nan)
        rows.append(
            f"| {r.name} | {r.count} | {r.rate:.1f} | {r.pct(50):.2f} | {r.pct(95):.2f} | "
            f"{r.pct(99):.2f} | {max(r.latencies_ms or [0]):.1f} | {service:.2f} | {codes} |"
        )
    total = phase.total()
    rows.append(
        f"| **all** | {total.count} | {total.rate:.1f} | {total.pct(50):.2f} | "
        f"{total.pct(95):.2f} | {total.pct(99):.2f} | {max(total.latencies_ms or [0]):.1f} | | "
        f"errors: {phase.errors()}, booking 409: {phase.conflicts}, "
        f"due but unanswered when wrk stopped: {phase.unanswered}; load average (1 min) "
        f"at the end: {phase.load:.2f} |"
    )
    return rows


def timeline_table(phase: Phase, windows: int = 10, per_row: int = 10) -> list[str]:
    """p50/p99 of all requests by when they were due: stalls and drifts show up here
    (tables of at most `per_row` windows, one after the other)."""
    width = max(5.0, phase.seconds / windows)
    buckets: dict[int, list[float]] = {}
    for due, latency in phase.timeline:
        buckets.setdefault(int(due // width), []).append(latency)
    ordered = sorted(buckets)
    rows: list[str] = []
    for first in range(0, len(ordered), per_row):
        chunk = ordered[first : first + per_row]
        heads = " | ".join(f"{w * width:.0f}-{(w + 1) * width:.0f} s" for w in chunk)
        if rows:
            rows.append("")
        rows += [f"| due at | {heads} |", "|---" * (len(chunk) + 1) + "|"]
        for label, p in (("p50 ms", 50), ("p99 ms", 99)):
            cells = [f"{Result('', latencies_ms=buckets[w]).pct(p):.1f}" for w in chunk]
            rows.append(f"| {label} | {' | '.join(cells)} |")
    return rows


def verdict(value: float, limit: float) -> str:
    return f"{value:.1f} {'✅' if value < limit else '❌'}"


def targets_table(at200: Phase, over: Phase, over_name: str) -> list[str]:
    """The review's SLAs (docs/slo.md) and medbook's targets against what was measured
    (in the overload phase, of every answer, the shed ones included)."""
    rows = [
        "| endpoint | phase | review SLA | measured | medbook target | measured |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    checks = (
        ("availability", "availability", ((50, 100), (95, 300), (99, 500)), (99, 15)),
        ("booking (POST)", "book", ((50, 200), (95, 500), (99, 1000)), (99, 30)),
        ("record lists", "records", ((50, 150), (95, 400)), (95, 25)),
        ("appointment lists", "lists", (), (99, 30)),
    )
    for phase, name in ((at200, "200 req/s"), (over, over_name)):
        for label, kind, sla, (tp, tlimit) in checks:
            r = phase.results[kind]
            sla_text = ", ".join(f"p{p} < {limit}" for p, limit in sla) or "—"
            measured = ", ".join(verdict(r.pct(p), limit) for p, limit in sla) or "—"
            target = f"p{tp} < {tlimit} ms" if phase is at200 else "(set at 200 req/s)"
            mine = verdict(r.pct(tp), tlimit)
            rows.append(f"| {label} | {name} | {sla_text} | {measured} | {target} | {mine} |")
    for phase, name in ((at200, "200 req/s"), (over, over_name)):
        total = phase.total()
        want = phase.rate
        ok = "✅" if total.rate >= 0.98 * want else "❌"
        rows.append(
            f"| throughput | {name} | review: 100 sustained, 200 burst | {total.rate:.1f} req/s | "
            f"{want:.0f} req/s | {total.rate:.1f} {ok} |"
        )
        if phase is at200:
            label, errors = "errors (non-2xx/3xx, 409 excepted)", phase.errors()
        else:  # shedding is the point of the burst: a 503 that says when to come back is not
            _, _, bare = phase.shed()
            shed = sum(1 for a in phase.answers if a[1] == 503)
            label, errors = "errors (503 + Retry-After excepted)", phase.errors() - shed + bare
        rows.append(
            f"| {label} | {name} | — | {errors} | 0 | {errors} {'✅' if errors == 0 else '❌'} |"
        )
    stalled = stalls(at200)
    worst = max((p99 for _, p99 in stalled), default=0.0)
    rows.append(
        "| stalls: 10 s windows whose p99 is over 10× the phase's | 200 req/s | — | "
        f"{len(stalled)}{f' (worst {worst:.0f} ms)' if stalled else ''} | 0 | "
        f"{len(stalled)} {'✅' if not stalled else '❌'} |"
    )
    return rows


def stalls(phase: Phase, width: float = 10) -> list[tuple[float, float]]:
    """The `width`-second windows (by when requests were due) whose p99 is over ten times
    the whole phase's p99: (window start s, its p99 ms). Sign-ins apart: a hash is 25 ms
    of CPU by design, so their p99 would hide or fake a stall of everything else."""
    overall = Result("all")
    windows: dict[int, list[float]] = {}
    # answers and timeline are appended together, one row each per answer
    for (kind, _, latency, _, _), (due, _) in zip(phase.answers, phase.timeline, strict=True):
        if kind not in ("sign-in", "refresh"):
            overall.latencies_ms.append(latency)
            windows.setdefault(int(due // width), []).append(latency)
    limit = 10 * overall.pct(99)
    return [
        (w * width, Result("", latencies_ms=lat).pct(99))
        for w, lat in sorted(windows.items())
        if lat and Result("", latencies_ms=lat).pct(99) > limit
    ]


COLOURS = {
    "availability": "#1f77b4",
    "book": "#d62728",
    "cancel": "#ff7f0e",
    "records": "#2ca02c",
    "lists": "#9467bd",
    "sign-in": "#8c564b",
    "refresh": "#e377c2",
}


def latency_svg(phases: list[tuple[str, Phase, str]]) -> str:
    """Latency by percentile, one curve per endpoint and phase, both axes logarithmic."""
    width, height, left, right, top, bottom = 760, 440, 60, 190, 30, 50
    plot_w, plot_h = width - left - right, height - top - bottom
    nines_max = 4.0  # up to p99.99
    longest = max(
        (max(r.latencies_ms, default=0) for _, ph, _ in phases for r in ph.results.values()),
        default=0,
    )
    lo = 0.5
    hi = next((t for t in (1e3, 2e3, 5e3, 1e4, 2e4, 5e4) if t >= longest), 1e5)

    def x(nines: float) -> float:
        return left + plot_w * nines / nines_max

    def y(ms: float) -> float:
        ms = min(max(ms, lo), hi)
        return top + plot_h * (1 - math.log10(ms / lo) / math.log10(hi / lo))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="18" font-size="13">Latency by percentile (from scheduled '
        "send time), mixed load, two server processes</text>",
    ]
    ticks = ((0, "p0"), (math.log10(2), "p50"), (1, "p90"), (2, "p99"), (3, "p99.9"))
    for nines, label in (*ticks, (4, "p99.99")):
        parts.append(
            f'<line x1="{x(nines):.1f}" y1="{top}" x2="{x(nines):.1f}" '
            f'y2="{top + plot_h}" stroke="#ddd"/>'
        )
        parts.append(
            f'<text x="{x(nines):.1f}" y="{top + plot_h + 15}" text-anchor="middle">{label}</text>'
        )
    for ms in (1, 2, 5, 10, 15, 25, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000):
        if ms > hi:
            break
        colour = "#999" if ms == 50 else "#eee"
        parts.append(
            f'<line x1="{left}" y1="{y(ms):.1f}" x2="{left + plot_w}" y2="{y(ms):.1f}" '
            f'stroke="{colour}"/>'
        )
        parts.append(f'<text x="{left - 5}" y="{y(ms) + 4:.1f}" text-anchor="end">{ms} ms</text>')
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 12}" text-anchor="middle">'
        "percentile (logarithmic in 1 / (1 − p))</text>"
    )
    legend_y = top + 5
    for title, phase, dash in phases:
        for kind, r in phase.results.items():
            if not r.count:
                continue
            ordered = sorted(r.latencies_ms)
            points = []
            steps = 200
            for point in range(steps + 1):
                nines = nines_max * point / steps
                p = 1 - 10 ** (-nines)
                if nines > math.log10(len(ordered)):
                    break  # fewer samples than this percentile needs
                value = ordered[min(len(ordered) - 1, int(p * len(ordered)))]
                points.append(f"{x(nines):.1f},{y(value):.1f}")
            parts.append(
                f'<polyline fill="none" stroke="{COLOURS[kind]}" stroke-width="1.6" '
                f'stroke-dasharray="{dash}" points="{" ".join(points)}"/>'
            )
            lx = left + plot_w + 12
            parts.append(
                f'<line x1="{lx}" y1="{legend_y}" x2="{lx + 22}" y2="{legend_y}" '
                f'stroke="{COLOURS[kind]}" stroke-width="1.6" stroke-dasharray="{dash}"/>'
            )
            parts.append(f'<text x="{lx + 27}" y="{legend_y + 4}">{r.name}, {title}</text>')
            legend_y += 16
        legend_y += 8
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


@dataclass
class Stack:
    """The processes a run measures: the server (`workers` processes) and the worker."""

    server: subprocess.Popen
    worker: subprocess.Popen
    worker_log: Any
    workers: int

    def pids(self) -> tuple[int, int]:
        return self.server.pid, self.worker.pid

    def stop(self) -> None:
        self.server.terminate()
        self.worker.send_signal(signal.SIGINT)  # SAQ finishes its jobs on SIGINT
        self.server.wait(timeout=15)
        try:
            self.worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.worker.kill()
        self.worker_log.close()


def start_stack(env: dict[str, str], port: int, workers: int) -> Stack:
    """`medbook serve --workers N` on `port` (once ready) and one `medbook worker`."""
    server = start_server(env, port, workers=workers)
    worker_log = open(RESULTS / "mixed-worker.log", "w")  # noqa: SIM115
    worker = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker"],
        env=env,
        cwd=ROOT,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    return Stack(server, worker, worker_log, workers)


def start_busy_loops(cores: int) -> list[subprocess.Popen]:
    """`cores` processes that each keep one core busy (the issue's headroom run: other
    work beside medbook), each in its own process group; `stop_busy_loops` ends them."""
    return [
        subprocess.Popen(
            [sys.executable, "-c", "while True: pass"],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
        )
        for _ in range(cores)
    ]


def stop_busy_loops(loops: list[subprocess.Popen]) -> None:
    for loop in loops:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(loop.pid, signal.SIGKILL)
        loop.wait(timeout=10)


async def warm_up(port: int, base: str, fixtures: dict, seconds: float, workdir: Path) -> None:
    """Not reported: every user's Principal gets cached and pools fill; each of the mix's
    doctor-days is asked for once, so the slot cache holds them as a site's that has been
    running does (a cold cache is a start-up, not this benchmark's subject: at the mix's
    rate one pass over 5,000 doctor-days takes 40 s, and every phase before it would
    measure misses); then `seconds` of the mix at 200 requests/s."""
    client = Client("127.0.0.1", port)
    headers = [{"Authorization": f"Bearer {t}"} for t in fixtures["tokens"]]
    days = sorted({item[2] for item in fixtures["items"]["availability"]})

    def me(n: int):
        return ("GET", "/api/auth/me", None, headers[n % len(headers)])

    def day(n: int):
        return ("GET", days[n % len(days)], None, headers[n % len(headers)])

    await run(client, {"warm-up": (200, me)}, len(headers) / 200)
    await run(client, {"warm-up": (250, day)}, len(days) / 250)
    client.close()
    run_mix(base, fixtures, 200, seconds, workdir / "warm-up")


def ramp(
    base: str, stack: Stack, fixtures: dict, rates: list[float], seconds: float, workdir: Path
) -> list[tuple[Phase, float]]:
    """Steps at rising rates until twice in a row both the p99 of all requests and the
    worst endpoint's (sign-ins apart) reach 50 ms (one failure could be noise); each step
    with the server's CPU ms per request."""
    steps: list[tuple[Phase, float]] = []
    for rate in rates:
        settle(*stack.pids())
        before = cpu_seconds(*stack.pids())
        step = run_mix(base, fixtures, rate, seconds, workdir / f"step-{rate:.0f}")
        used = delta(cpu_seconds(*stack.pids()), before)
        steps.append((step, used["server"] * 1000 / max(1, step.total().count)))
        print(f"step {rate:.0f}/s: worst p99 {step.worst_p99():.1f} ms", step.error_codes())
        if len(steps) >= 2 and not any(s.passes(True) or s.passes(False) for s, _ in steps[-2:]):
            break
    return steps


def best_rate(steps: list[tuple[Phase, float]], every_endpoint: bool) -> float:
    """The highest rate answered in a step that passed."""
    return max((s.total().rate for s, _ in steps if s.passes(every_endpoint)), default=0.0)


def overload(
    base: str,
    fixtures: dict,
    rate: float,
    seconds: float,
    normal_rate: float,
    recovery_seconds: float,
    workdir: Path,
) -> tuple[Phase, Phase]:
    """`rate` for `seconds`, then at once `normal_rate` for `recovery_seconds` (a second
    set of wrk processes, started just before the burst ends, so the schedules join)."""
    burst_t0 = time.monotonic() + wrk_lead(rate)
    after_t0 = burst_t0 + seconds
    with ThreadPoolExecutor(2) as pool:
        burst = pool.submit(run_mix, base, fixtures, rate, seconds, workdir / "burst", burst_t0)
        # Idle connections are closed after uvicorn's 5 s keep-alive: connect shortly before.
        time.sleep(max(0.0, after_t0 - wrk_lead(normal_rate) - time.monotonic()))
        after = pool.submit(
            run_mix, base, fixtures, normal_rate, recovery_seconds, workdir / "after", after_t0
        )
        return burst.result(), after.result()


async def booking_integrity(database_url: str, since: dt.datetime, phases: list[Phase]) -> dict:
    """Whether every booking the phases' 201s announced is in the database, nothing more,
    and each whose patient has a channel has the notices its booking statement writes
    with it (nothing half-done)."""
    created = sum(p.results["book"].statuses.get(201, 0) for p in phases)
    conn = await asyncpg.connect(plain_database_url(database_url))
    try:
        rows = await conn.fetchval(
            "SELECT count(*) FROM appointments WHERE reason = $1 AND created_at >= $2",
            REASON,
            since,
        )
        without_notice = await conn.fetchval(
            "SELECT count(*) FROM appointments a JOIN patients p ON p.id = a.patient_id "
            "WHERE a.reason = $1 AND a.created_at >= $2 AND p.notify_by <> 'none' "
            "AND (p.email IS NOT NULL OR p.phone IS NOT NULL) "
            "AND NOT EXISTS (SELECT 1 FROM notifications n WHERE n.appointment_id = a.id)",
            REASON,
            since,
        )
    finally:
        await conn.close()
    return {"answered_201": created, "in_database": rows, "without_notice": without_notice}


async def database_now(database_url: str) -> dt.datetime:
    conn = await asyncpg.connect(plain_database_url(database_url))
    try:
        return await conn.fetchval("SELECT now()")
    finally:
        await conn.close()


def normal_p99(phase: Phase) -> float:
    """The p99 of a phase's requests other than sign-ins and refreshes (argon2's seconds
    under load are not what "back to normal" compares)."""
    kept = [lat for kind, _, lat, _, _ in phase.answers if kind not in ("sign-in", "refresh")]
    return Result("", latencies_ms=kept).pct(99)


def recovery_seconds_needed(after: Phase, normal_p99: float) -> float | None:
    """Seconds after the burst until every later 1 s window's p99 (sign-ins and refreshes
    apart) stays under twice the normal run's (at least 50 ms); None when it never does
    within the phase."""
    limit = max(2 * normal_p99, 50.0)
    windows: dict[int, list[float]] = {}
    for (due, latency), (kind, *_) in zip(after.timeline, after.answers, strict=True):
        if kind not in ("sign-in", "refresh"):
            windows.setdefault(int(due), []).append(latency)
    bad = [w for w, lat in windows.items() if Result("", latencies_ms=lat).pct(99) >= limit]
    if not bad:
        return 0.0
    last = max(bad) + 1
    return float(last) if last < after.seconds else None


def sender_lag(phase: Phase) -> str:
    """The load generator's own lag, p50 / p99 / max, over all answers and over the 503s:
    the part of each latency that is wrk waiting for a core (the same wait delays its
    reading of an answer, so about twice this is not the server's)."""
    every = Result("", latencies_ms=[lag for lag in phase.sender_lags if lag == lag])
    shed = Result(
        "",
        latencies_ms=[
            lag
            for (_, status, *_), lag in zip(phase.answers, phase.sender_lags, strict=True)
            if status == 503 and lag == lag
        ],
    )
    if not every.count:
        return "not recorded"
    return f"{every.pct(50):.1f} / {every.pct(99):.1f} / {max(every.latencies_ms):.1f} ms; " + (
        f"{shed.pct(50):.1f} / {shed.pct(99):.1f} / {max(shed.latencies_ms):.1f} ms"
        if shed.count
        else "none shed"
    )


def overload_section(
    burst: Phase, after: Phase, normal_p99: float, integrity: dict, cpu: str, lag: str = ""
) -> list[str]:
    """The overload run: what was shed and how fast, what was served and how well, the
    bookings, and the return to normal."""
    late, service, bare = burst.shed()
    total = burst.total()
    accepted = burst.accepted()
    over_2s = sum(1 for latency in total.latencies_ms if latency > 2000)
    other_5xx = sum(1 for _, status, *_ in burst.answers if status >= 500 and status != 503)
    recovered = recovery_seconds_needed(after, normal_p99)
    lines = [
        TABLE.replace("| endpoint |", "| accepted (not 503) |"),
    ]
    for kind in KINDS:
        r = burst.accepted(kind)
        if r.count:
            codes = ", ".join(f"{k}: {v}" for k, v in sorted(r.statuses.items()))
            lines.append(
                f"| {r.name} | {r.count} | {r.rate:.1f} | {r.pct(50):.2f} | {r.pct(95):.2f} | "
                f"{r.pct(99):.2f} | {max(r.latencies_ms):.1f} | | {codes} |"
            )
    share = late.count / total.count if total.count else math.nan
    sender = sender_lag(burst)
    lines += [
        "",
        "| overload figure | measured | target |",
        "| --- | --- | --- |",
        f"| requests due / answered | {total.count + burst.unanswered} / {total.count} | |",
        f"| shed (503) | {late.count} ({share:.1%}) | report |",
        f"| accepted p99 (all classes) | {accepted.pct(99):.1f} ms | < 250 ms |",
        f"| 503 from the send p50 / p99 / max | {service.pct(50):.1f} / {service.pct(99):.1f} / "
        f"{max(service.latencies_ms or [math.nan]):.1f} ms | < 50 ms |",
        f"| 503 from the schedule p50 / p99 | {late.pct(50):.1f} / {late.pct(99):.1f} ms | |",
        f"| the load generator's own lag (a send later than its schedule and the previous "
        f"answer on its connection) p50 / p99 / max, all answers; 503s | {sender} | |",
        "| the server processes' event-loop lag, burst and the normal rate after it (how "
        f"long a request's bytes wait before they are read) p50 / p99 / p99.9 | {lag} | |",
        f"| 503 without Retry-After | {bare} | 0 |",
        f"| other 5xx | {other_5xx} | 0 |",
        f"| answers later than 2 s; due but unanswered | {over_2s}; {burst.unanswered} | 0; 0 |",
        f"| bookings: 201 answers / in the database / without their notices | "
        f"{integrity['answered_201']} / {integrity['in_database']} / "
        f"{integrity['without_notice']} | equal / equal / 0 (a booking unanswered when wrk "
        "stopped may be a row without a 201) |",
        "| back to normal after the burst (every later 1 s window's p99, sign-ins apart, < "
        f"{max(2 * normal_p99, 50):.0f} ms) | "
        + ("not within the phase" if recovered is None else f"{recovered:.0f} s")
        + " | ≤ 10 s |",
        "",
        cpu,
        "",
        "The burst by the time requests were due, then the normal rate after it:",
        "",
        *timeline_table(burst, 6),
        "",
        *timeline_table(after, max(1, int(after.seconds))),
    ]
    return lines


async def scaling(args: argparse.Namespace, database_url: str) -> None:
    """Steps of the mix against 1, 2, 4... server processes (`--scaling 1,2,4`): the
    highest rate with p99 < 50 ms for each, the CPU per request there, and the bare
    route's ceiling. Report: bench/results/mixed-scaling.md."""
    code = code_version()  # what runs: the files may change while it does
    redis_url, bench_redis = claim_redis("redis://127.0.0.1:6379/5", 3 * 3600)
    secret = secrets.token_urlsafe(40)
    env = bench_env(database_url, redis_url, secret)
    fixtures = await load_fixtures(database_url, secret, dt.date.today())
    rows = []
    busy = start_busy_loops(args.busy_cores)
    try:
        for workers in (int(n) for n in args.scaling.split(",")):
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            bench_redis.flushdb()
            stack = start_stack(env, port, workers)
            workdir = Path(tempfile.mkdtemp(prefix="mixed-scaling-"))
            try:
                await with_bookings(base, fixtures)
                await warm_up(port, base, fixtures, args.warmup_seconds, workdir)
                rates = [float(r) for r in args.steps.split(",")]
                steps = ramp(base, stack, fixtures, rates, args.step_seconds, workdir)
                settle(*stack.pids())
                ceiling = best_under_50ms(
                    base, fixtures["tokens"][:1], ["/health/live"], args.ceiling_seconds
                )
            finally:
                stack.stop()
                shutil.rmtree(workdir, ignore_errors=True)
            strict, overall = best_rate(steps, True), best_rate(steps, False)
            cpu_at = next((ms for s, ms in steps if s.total().rate == overall), math.nan)
            ratio = f"{strict / ceiling['rps']:.3f}" if ceiling["rps"] else "n/a"
            rows.append(
                f"| {workers} | {strict:.0f} | {overall:.0f} | {cpu_at:.2f} | "
                f"{ceiling['rps']:.0f} | {ratio} | "
                + "; ".join(
                    f"{s.rate:.0f}/s: {s.worst_p99():.0f} ms, {ms:.2f} ms CPU, load {s.load:.1f}"
                    for s, ms in steps
                )
                + " |"
            )
            print(rows[-1], flush=True)
    finally:
        stop_busy_loops(busy)
        release_redis(bench_redis)
        await delete_bookings(database_url)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    report = [
        f"# Mixed load against 1, 2, 4... server processes ({stamp})",
        "",
        f"`bench/mixed_bench.py --scaling {args.scaling}`: for each count of server "
        f"processes, a warm-up, then {args.step_seconds:.0f} s steps of the mix at rising "
        "rates until twice in a row both the p99 of all requests and the worst endpoint's "
        "(sign-ins apart) reach 50 ms, then the bare "
        "route `/health/live` closed loop. One `medbook worker`; PostgreSQL, Redis and the "
        f"load generator share the machine's {os.cpu_count()} cores"
        + (f", with {args.busy_cores} busy loop(s) beside them" if args.busy_cores else "")
        + f". Load average (1 min) at the end: {os.getloadavg()[0]:.2f}. "
        f"Code: {code}. The live-update websockets of the main run are not held here.",
        "",
        "| server processes | every endpoint p99 < 50 ms: req/s | all requests p99 < 50 ms: "
        "req/s | server CPU ms per request there | bare route req/s | ratio (every "
        "endpoint) | steps (worst endpoint p99, server CPU per request, load average) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        *rows,
    ]
    (RESULTS / "mixed-scaling.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))


def bench_env(database_url: str, redis_url: str, secret: str) -> dict[str, str]:
    return server_env(
        database_url,
        redis_url,
        secret,
        MEDBOOK_DATA_DIR=str(records_bench.DATA_DIR),  # the 50 records' documents
        NOTIFY_DEV_MAILBOX="1",  # the worker delivers confirmations to the dev mailbox
        # Every sign-in and refresh comes from the load generator's one address; the
        # per-address limits (30 sign-ins, 300 anonymous requests a minute) are for the open
        # internet, not for this mix: with them the mix's sign-ins and refreshes (3 %, some
        # 360 a minute at 200 req/s) were refused 429 and counted as errors.
        RATE_LIMIT_AUTH_PER_MINUTE="1000000",
        RATE_LIMIT_ANONYMOUS_PER_MINUTE="1000000",
    )


async def with_bookings(base: str, fixtures: dict) -> list[tuple[int, str]]:
    """Find free slots and make the booking class's items of them."""
    today = dt.date.today()
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        auth = {"Authorization": f"Bearer {fixtures['tokens'][0]}"}
        slots = await free_slots(http, auth, fixtures["doctors"], today, 900)
    fixtures["items"]["booking"] = booking_items(slots, fixtures)
    return slots


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds-200", type=float, default=300)
    parser.add_argument(
        "--overload-seconds", "--seconds-400", dest="overload_seconds", type=float, default=60
    )
    parser.add_argument(
        "--overload-rate",
        type=float,
        default=0,
        help="default: twice the highest rate at which every endpoint kept p99 < 50 ms, "
        "at least 400",
    )
    parser.add_argument("--recovery-seconds", type=float, default=20)
    parser.add_argument("--warmup-seconds", type=float, default=20)
    parser.add_argument("--step-seconds", type=float, default=20)
    parser.add_argument("--steps", default="25,50,100,150,200,300,400,600,800")
    parser.add_argument("--ceiling-seconds", type=int, default=10)
    parser.add_argument("--sockets", type=int, default=300)
    parser.add_argument("--cpu-requests", type=int, default=200, help="per class, closed loop")
    parser.add_argument("--workers", type=int, default=2, help="server processes")
    parser.add_argument("--busy-cores", type=int, default=0, help="busy loops beside the run")
    parser.add_argument("--scaling", default="", help="e.g. 1,2,4: only the steps, per count")
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep wrk's data, logs and answers"
    )
    parser.add_argument("--hold-sockets", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold_sockets:
        await hold_sockets(args.hold_sockets)
        return
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        raise SystemExit("set DATABASE_URL to the database `medbook seed scale` loaded")
    if args.scaling:
        await scaling(args, database_url)
        return
    code = code_version()  # what runs: the files may change while it does
    redis_url, bench_redis = claim_redis("redis://127.0.0.1:6379/5", 3 * 3600)
    RESULTS.mkdir(exist_ok=True)
    secret = secrets.token_urlsafe(40)
    env = bench_env(database_url, redis_url, secret)
    today = dt.date.today()
    fixtures = await load_fixtures(database_url, secret, today)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    busy = start_busy_loops(args.busy_cores)
    try:
        stack = start_stack(env, port, args.workers)
    except BaseException:  # a server too slow to start on a loaded machine: no claim left
        stop_busy_loops(busy)
        release_redis(bench_redis)
        raise
    workdir = Path(tempfile.mkdtemp(prefix="mixed-bench-"))
    sockets = None
    try:
        tokens = fixtures["tokens"]
        slots = await with_bookings(base, fixtures)
        channels = sorted({(d, start[:10]) for d, start in slots})
        sockets = await start_sockets(
            redis_url, port, fixtures["patients"], channels, args.sockets, workdir
        )
        await warm_up(port, base, fixtures, args.warmup_seconds, workdir)

        # The steps first, on a system the overload has not touched.
        rates = [float(r) for r in args.steps.split(",")]
        steps = ramp(base, stack, fixtures, rates, args.step_seconds, workdir)
        strict, overall = best_rate(steps, True), best_rate(steps, False)

        settle(*stack.pids())
        before = metrics(base)
        load_before = os.getloadavg()[0]
        cpu = [cpu_seconds(*stack.pids())]
        at200 = run_mix(base, fixtures, 200, args.seconds_200, workdir / "200")
        cpu.append(cpu_seconds(*stack.pids()))
        load_200 = os.getloadavg()[0]
        print("\n".join(phase_table(at200)), flush=True)
        settle(*stack.pids())
        mid = metrics(base)
        over_rate = args.overload_rate or max(400.0, 2 * strict)
        since = await database_now(database_url)
        cpu.append(cpu_seconds(*stack.pids()))
        burst, after = overload(
            base, fixtures, over_rate, args.overload_seconds, 200, args.recovery_seconds, workdir
        )
        cpu.append(cpu_seconds(*stack.pids()))
        print("\n".join(phase_table(burst)), flush=True)
        after_metrics = metrics(base)
        load_after = os.getloadavg()[0]
        settle(*stack.pids())
        integrity = await booking_integrity(database_url, since, [burst, after])
        from bench.mix_profile import CONCURRENCY, HIT_RATIO, cpu_per_class

        # The class table weighs availability at the hit ratio of this run's 200 req/s.
        served = delta(mid, before)
        hits = served.get("medbook_slot_cache_hits_total", 0.0)
        looked_up = hits + served.get("medbook_slot_cache_misses_total", 0.0)
        per_class = await cpu_per_class(
            base,
            stack.server.pid,
            database_url,
            secret,
            fixtures,
            args.cpu_requests,
            hits / looked_up if looked_up else HIT_RATIO,
        )
        settle(*stack.pids())
        ceiling = best_under_50ms(base, tokens[:1], ["/health/live"], args.ceiling_seconds)
        socket_counts = stop_sockets(sockets)
        sockets = None
    finally:
        if sockets is not None:
            sockets.kill()
        stack.stop()
        stop_busy_loops(busy)
        release_redis(bench_redis)
    if args.keep_workdir:
        print(f"wrk's files: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    removed = await delete_bookings(database_url)

    def ratio(rate: float) -> str:
        return f"{rate / ceiling['rps']:.3f}" if ceiling["rps"] else "n/a"

    m200, m_over = delta(mid, before), delta(after_metrics, mid)

    def hit_ratio(m: dict[str, float]) -> float:
        hits, misses = m["medbook_slot_cache_hits_total"], m["medbook_slot_cache_misses_total"]
        return hits / (hits + misses) if hits + misses else math.nan

    over = f"{over_rate:.0f} req/s"
    busy_note = (
        f" {args.busy_cores} busy loop(s) (`while True: pass`) took a core each for the "
        "whole run (the headroom run)."
        if args.busy_cores
        else ""
    )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Mixed load benchmark ({stamp})",
        "",
        f"Data: {fixtures['appointments']:,} appointments, {len(fixtures['doctors'])} doctors, "
        f"{fixtures['record_count']:,} medical records. Server: `medbook serve --workers "
        f"{args.workers}` (uvicorn) and one `medbook worker`; PostgreSQL, Redis and the load "
        f"generator share the same {os.cpu_count()}-core machine.{busy_note} Load: wrk "
        f"{wrk_version()} with "
        "`bench/lua/mixed.lua`, one process per endpoint class, one connection per wrk "
        f"thread at ≤ {PER_THREAD:g} req/s, each request sent at its scheduled time; "
        "latency counts from that time (a late send counts), so the server's queueing is "
        "not hidden. The `wrk p99` column is wrk's own histogram of the same class, from "
        "the actual send (with the few unrecorded `/health/live` requests that keep a "
        "connection alive after its schedule ends). Load average (1 min) before the "
        "200 req/s phase / after it / "
        f"after the overload: {load_before:.2f} / {load_200:.2f} / {load_after:.2f}. "
        f"Code: {code}. Command: `{' '.join(['bench/mixed_bench.py', *sys.argv[1:]])}`.",
        "",
        f"Mix: availability {MIX['availability']:.0%} (5,000 doctor-days over three weeks), "
        f"booking and cancel {MIX['booking']:.0%} (a POST on one of {len(slots)} precomputed "
        "free slots, then a PATCH cancelling it: each counts as a request), record lists "
        f"{MIX['records']:.0%} ({fixtures['readers']} patients with records, read by "
        "themselves or a doctor in their care; one list in six is patient "
        f"{fixtures['heavy_patient']}'s 50 records), appointment lists {MIX['lists']:.0%} "
        "(a patient's upcoming, a doctor's day, a front desk's clinic day), sign-ins "
        f"{MIX['auth']:.0%} (a patient's email and password, then a refresh of the new "
        "refresh token: each counts as a request). "
        f"{socket_counts['opened']} live-update websockets were held open throughout "
        f"({socket_counts['failed']} failed to open, {socket_counts['messages']} pushes "
        f"received, {socket_counts['closed_by_server']} closed by the server).",
        "",
        "## Against the review's SLAs and medbook's targets",
        "",
        *targets_table(at200, burst, over),
        "",
        f"## 200 requests/s for {args.seconds_200:.0f} s",
        "",
        *phase_table(at200),
        "",
        f"Slot cache hit ratio {hit_ratio(m200):.1%}; 5xx counted by /metrics: "
        f"{m200['5xx']:.0f}; websocket pushes: {m200['medbook_websocket_pushes_total']:.0f}; "
        "database connections opened (pool churn): "
        f"{m200['medbook_db_connections_opened_total']:.0f}.",
        "",
        cpu_line(cpu[0], cpu[1], at200),
        "",
        f"All requests of the phase by the time they were due, in 10 s windows (the "
        f"schedule started at {at200.started} UTC):",
        "",
        *timeline_table(at200, max(1, round(args.seconds_200 / 10))),
        "",
        f"## Overload: {over} for {args.overload_seconds:.0f} s, then 200 req/s for "
        f"{args.recovery_seconds:.0f} s",
        "",
        "Twice the highest rate at which every endpoint kept p99 < 50 ms (at least 400) "
        "unless `--overload-rate` says otherwise. Every answer of the burst:",
        "",
        *phase_table(burst),
        "",
        f"Slot cache hit ratio {hit_ratio(m_over):.1%}; 5xx counted by /metrics (burst and "
        f"after): {m_over['5xx']:.0f}; websocket pushes: "
        f"{m_over['medbook_websocket_pushes_total']:.0f}; database connections opened: "
        f"{m_over['medbook_db_connections_opened_total']:.0f}.",
        "",
        *overload_section(
            burst,
            after,
            normal_p99(at200),
            integrity,
            cpu_line(cpu[2], cpu[3], burst),
            loop_lag(m_over),
        ),
        "",
        "## Server CPU per request of each class",
        "",
        f"After the phases, each class alone, {CONCURRENCY} requests at a time, closed loop "
        "(`bench/mix_profile.py`): the CPU seconds of the server processes over the class's "
        "requests. Status changes and bulk updates are not in the mix; they are measured "
        "beside it (check-in and complete by the doctor, a front desk cancelling ten).",
        "",
        *per_class,
        "",
        f"## Highest rate with p99 < 50 ms ({args.step_seconds:.0f} s steps)",
        "",
        "| target req/s | achieved req/s | p50 ms | p99 ms (all) | worst endpoint p99 ms "
        "(sign-in apart) | sign-in p99 ms | errors | booking 409 | unanswered | "
        "server CPU ms per request | load average |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s, cpu_ms in steps:
        total = s.total()
        worst = max(
            ((r.pct(99), r.name) for k, r in s.results.items() if r.count and k not in HASHED),
            default=(0, ""),
        )
        sign_in = s.results["sign-in"].pct(99) if s.results["sign-in"].count else math.nan
        lines.append(
            f"| {s.rate:.0f} | {total.rate:.1f} | {total.pct(50):.2f} | {total.pct(99):.2f} | "
            f"{worst[0]:.1f} ({worst[1]}) | {sign_in:.1f} | {s.errors()} {s.error_codes()} | "
            f"{s.conflicts} | "
            f"{s.unanswered} | {cpu_ms:.2f} | {s.load:.2f} |"
        )
    lines += [
        "",
        "Steps rise until twice in a row neither criterion passes (the p99 of all requests "
        "together, the worst endpoint's) or a request due goes unanswered; a step passes "
        "when that p99 (or every endpoint's p99) stays under 50 ms and every request due "
        "in it was answered. "
        '"Every endpoint" leaves out sign-ins: each is one argon2id hash, tens of ms of '
        "CPU by design; their p99 is in its own column.",
        "",
        "## The framework's ceiling: `/health/live`, closed loop (wrk, 4-64 connections)",
        "",
        "| route | connections | req/s | p50 ms | p99 ms | non-2xx |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| bare JSON route | {ceiling['connections']} | {ceiling['rps']:.0f} | "
        f"{ceiling['p50']:.2f} | {ceiling['p99']:.2f} | {ceiling.get('non2xx', 0)} |",
        "",
        "| highest mixed rate with p99 < 50 ms | req/s | ÷ bare route |",
        "| --- | ---: | ---: |",
        f"| every endpoint's p99 | {strict:.0f} | {ratio(strict)} |",
        f"| all requests together | {overall:.0f} | {ratio(overall)} |",
        "",
        "A rate of 0 means no step passed, not even the lowest.",
        "",
        f"The bench's own bookings were deleted afterwards ({removed}).",
        "",
        "![latency by percentile](mixed-latency.svg)",
    ]
    report = "\n".join(lines) + "\n"
    (RESULTS / "mixed.md").write_text(report)
    (RESULTS / "mixed-latency.svg").write_text(
        latency_svg([("200/s", at200, ""), (over, burst, "5,3")])
    )
    print(report)


def code_version() -> str:
    """The commit measured, and the files of the server's code changed since it."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "app", "db", "tasks", "templates"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout.split("\n")
    changed = [line[3:] for line in dirty if line.strip()]
    note = f" with uncommitted changes to {', '.join(changed)}" if changed else ""
    return f"commit {head.stdout.strip() or '?'}{note}"


def wrk_version() -> str:
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    return out.split()[1] if out.split()[1:] else "?"


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
