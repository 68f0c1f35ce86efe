"""Server CPU per request of each endpoint class of the mix, and where it goes (issue 17).

Usage (a database `medbook seed scale` loaded and migrated to head; the bench writes its
own bookings into it and deletes them at the end):

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/capacity_bench \
        .venv/bin/python bench/mix_profile.py [--requests 300] [--profile] [--floors] \
        [--sockets 300 [--watch booked|other]]

It starts one `medbook serve --workers 1` process and drives each class of
`bench/mixed_bench.py`'s mix through it, a few at a time, closed loop: availability,
booking (POST) and cancel (PATCH), record lists, appointment lists, sign-ins and token
refreshes, and the status changes and bulk updates outside the mix (check-in and complete
by the doctor, a front desk's bulk cancel of ten). For each class it reads the server
process's CPU time (user + system) before and after: CPU per request is far less
disturbed than latency by other work on a shared machine. `--profile` then runs each class
again under `py-spy record` (speedscope files in bench/results/profiles/) and prints each
profile's top entries by own time and by total time. `--floors` adds the CPU per request
of the bare route, of authentication alone and of a cached availability answer (wrk).
`--sockets N` holds N live-update websockets open for the whole run, as
`bench/mixed_bench.py` does (a helper process, the slot pages of the doctor-days the
bookings change, spread evenly), so the changes' figures include the live fan-out;
`--watch other` points them at doctor-days no booking here touches instead (what a socket
that does not watch the changed day costs).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.access.tokens import issue_access_token  # noqa: E402
from app.settings import plain_database_url  # noqa: E402
from bench.availability_bench import (  # noqa: E402
    first_free,
    free_port,
    free_slots,
    server_env,
    start_server,
)
from bench.mixed_bench import (  # noqa: E402
    MIX,
    REASON,
    booking_items,
    claim_redis,
    delete_bookings,
    load_fixtures,
    release_redis,
    start_sockets,
    stop_sockets,
)
from db.seed_demo import DEMO_PASSWORD  # noqa: E402

PROFILES = ROOT / "bench" / "results" / "profiles"
CONCURRENCY = 4
WARM_UP = 40  # requests of each class first, not counted: Principals cached, pool warm
# A class's share of the mix's requests (booking's and auth's shares are split evenly
# between their two requests, as the mix sends them in pairs).
# The mix's slot-cache hit ratio: bench/mixed_bench.py's warm-up asks for every doctor-day
# once, and its 200 req/s phase then measured 74-80 % hits (bench/README.md). Availability
# is measured as hits and misses apart and weighted by it (`--hit-ratio`).
HIT_RATIO = 0.78
SHARES = {
    "availability": MIX["availability"],
    "book": MIX["booking"] / 2,
    "cancel": MIX["booking"] / 2,
    "records": MIX["records"],
    "lists": MIX["lists"],
    "sign-in": MIX.get("auth", 0.0) / 2,
    "refresh": MIX.get("auth", 0.0) / 2,
}
Call = tuple[str, str, dict | None, str]  # method, path, JSON body, bearer token


@dataclass
class Measured:
    name: str
    count: int = 0
    cpu_s: float = 0.0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)

    @property
    def ms(self) -> float:
        return self.cpu_s * 1000 / self.count if self.count else float("nan")


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) so far of the server process and its children."""
    root = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in (root, *root.children(recursive=True)))


async def drive(
    http: httpx.AsyncClient, calls: Sequence[Call], seen: Callable[[int, httpx.Response], None]
) -> collections.Counter[int]:
    """Send the calls, CONCURRENCY at a time; `seen(i, response)` sees each answer."""
    statuses: collections.Counter[int] = collections.Counter()
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int, call: Call) -> None:
        method, path, body, token = call
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with gate:
            response = await http.request(method, path, json=body, headers=headers)
        statuses[response.status_code] += 1
        seen(i, response)

    await asyncio.gather(*(one(i, c) for i, c in enumerate(calls)))
    return statuses


async def measure(
    http: httpx.AsyncClient,
    pid: int,
    name: str,
    calls: Sequence[Call],
    seen: Callable[[int, httpx.Response], None] = lambda i, r: None,
    profile: bool = False,
) -> Measured:
    """Server CPU over the calls; with `profile`, under py-spy (its figures are not kept)."""
    spy = None
    if profile:
        PROFILES.mkdir(parents=True, exist_ok=True)
        spy = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                *("record", "--pid", str(pid), "--rate", "250", "--nonblocking"),
                *("--format", "speedscope", "--output", str(PROFILES / f"{name}.json")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        await asyncio.sleep(1)  # py-spy attaches
    before = server_cpu(pid)
    statuses = await drive(http, calls, seen)
    result = Measured(name, len(calls), server_cpu(pid) - before, statuses)
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        spy.wait(timeout=60)
    return result


def top_entries(path: Path, count: int = 12) -> tuple[list[tuple[str, float]], ...]:
    """A speedscope profile's frames by own share of the samples, and medbook's own
    functions (app/, db/) by total share (the frames of the server around them are in
    every sample and say nothing)."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    names = [f"{f['name']} ({Path(f.get('file', '?')).name})" for f in frames]
    ours = {
        i
        for i, f in enumerate(frames)
        if any(f"/{part}/" in f.get("file", "") for part in ("app", "db"))
        and "site-packages" not in f.get("file", "")
    }
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for profile in data["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            if not stack:
                continue
            samples += weight
            own[names[stack[-1]]] += weight
            for i in set(stack) & ours:
                total[names[i]] += weight
    if not samples:
        return [], []
    return (
        [(n, w / samples) for n, w in own.most_common(count)],
        [(n, w / samples) for n, w in total.most_common(count)],
    )


def print_profiles() -> None:
    """Each profile's top entries (`python bench/mix_profile.py --show`)."""
    for path in sorted(PROFILES.glob("*.json")):
        own, total = top_entries(path)
        print(f"\n{path.stem}: own time")
        print("\n".join(f"  {share:6.1%}  {name}" for name, share in own))
        print(f"{path.stem}: medbook's functions by total time")
        print("\n".join(f"  {share:6.1%}  {name}" for name, share in total))


async def fixtures_for_changes(database_url: str, secret: str) -> dict:
    """Tokens of each doctor, of each clinic's front desk, and sign-in emails."""
    conn = await asyncpg.connect(plain_database_url(database_url))
    try:
        doctors = await conn.fetch(
            "SELECT u.id, u.doctor_id, d.clinic_id FROM users u JOIN doctors d "
            "ON d.id = u.doctor_id WHERE u.role = 'doctor'"
        )
        desks = await conn.fetch("SELECT id, clinic_id FROM users WHERE role = 'front_desk'")
        emails = await conn.fetch(
            "SELECT email FROM users WHERE role = 'patient' AND is_active ORDER BY id LIMIT 2000"
        )
    finally:
        await conn.close()

    def token(user_id: int, role: str) -> str:
        return issue_access_token(secret, user_id=user_id, role=role, ttl_seconds=7200)

    return {
        "doctor": {d["doctor_id"]: token(d["id"], "doctor") for d in doctors},
        "clinic_of": {d["doctor_id"]: d["clinic_id"] for d in doctors},
        "desk": {d["clinic_id"]: token(d["id"], "front_desk") for d in desks},
        "emails": [e["email"] for e in emails],
    }


class Cursor:
    """Hands out each class's items in order, so no pass books a slot an earlier one did."""

    def __init__(self, items: dict[str, list]) -> None:
        self.items = items
        self.next: collections.Counter[str] = collections.Counter()

    def take(self, kind: str, count: int) -> list:
        items = self.items[kind]
        first = self.next[kind]
        self.next[kind] += count
        return [items[(first + k) % len(items)] for k in range(count)]


async def run_classes(
    base: str, pid: int, cursor: Cursor, tokens: list[str], changes: dict, n: int, profile: bool
) -> list[Measured]:
    """Every class once, in the mix's order; bookings made here are the changes' subjects."""
    out: list[Measured] = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:

        def calls(kind: str, count: int = n) -> list[Call]:
            return [
                (m, p, json.loads(b) if b else None, tokens[t - 1])
                for _, m, p, t, b in cursor.take(kind, count)
            ]

        # Availability: n items are asked for once (misses, counted), then again (hits).
        misses = calls("availability")
        out.append(await measure(http, pid, "availability", misses, profile=profile))
        out.append(await measure(http, pid, "availability (hit)", misses, profile=profile))
        out.append(await measure(http, pid, "records", calls("records"), profile=profile))
        out.append(await measure(http, pid, "lists", calls("lists"), profile=profile))

        # Booking: 3n new appointments; n cancelled by their patient (the mix's PATCH), n
        # (today's: a check-in is taken only on the appointment's day) checked in and
        # completed by their doctor, n cancelled by front desks in tens.
        booking = [
            *cursor.take("booking", n),
            *cursor.take("booking today", n),
            *cursor.take("booking", n),
        ]
        token_of = tokens
        made: dict[int, tuple[int, int, int]] = {}  # index -> appointment id, doctor, token

        def booked(i: int, response: httpx.Response) -> None:
            if response.status_code == 201:
                body = response.json()
                made[i] = (body["id"], body["doctor_id"], booking[i][3])

        book_calls = [(m, p, json.loads(b or "{}"), token_of[t - 1]) for _, m, p, t, b in booking]
        out.append(await measure(http, pid, "book", book_calls, booked, profile=profile))

        def made_in(first: int) -> list[tuple[int, int, int]]:
            return [made[i] for i in range(first, first + n) if i in made]

        cancel = [
            ("PATCH", f"/api/appointments/{a}", {"status": "cancelled"}, token_of[t - 1])
            for a, _, t in made_in(0)
        ]
        out.append(await measure(http, pid, "cancel", cancel, profile=profile))
        doctor = [(a, changes["doctor"][d]) for a, d, _ in made_in(n)]
        checkin = [
            ("PATCH", f"/api/appointments/{a}", {"status": "checked_in"}, t) for a, t in doctor
        ]
        out.append(await measure(http, pid, "check-in", checkin, profile=profile))
        complete = [
            ("PATCH", f"/api/appointments/{a}", {"status": "completed"}, t) for a, t in doctor
        ]
        out.append(await measure(http, pid, "complete", complete, profile=profile))
        by_clinic: dict[int, list[int]] = collections.defaultdict(list)
        for a, d, _ in made_in(2 * n):
            by_clinic[changes["clinic_of"][d]].append(a)
        bulk: list[Call] = []
        for clinic, appointment_ids in by_clinic.items():
            for k in range(0, len(appointment_ids), 10):
                body = {"appointment_ids": appointment_ids[k : k + 10], "status": "cancelled"}
                desk = changes["desk"][clinic]
                bulk.append(("POST", "/api/appointments/bulk-update", body, desk))
        out.append(await measure(http, pid, "bulk (≤ 10 ids)", bulk, profile=profile))

        # Sign-ins, then a refresh of each pair's refresh token.
        emails = cursor.take("emails", max(1, n // 4))
        sign_in = [
            ("POST", "/api/auth/token", {"email": e, "password": DEMO_PASSWORD}, "") for e in emails
        ]
        refresh_tokens: list[str] = []

        def signed_in(i: int, response: httpx.Response) -> None:
            if response.status_code == 200:
                refresh_tokens.append(response.json()["refresh_token"])

        out.append(await measure(http, pid, "sign-in", sign_in, signed_in, profile=profile))
        refresh = [("POST", "/api/auth/refresh", {"refresh_token": r}, "") for r in refresh_tokens]
        out.append(await measure(http, pid, "refresh", refresh, profile=profile))
    return out


def watched_days(cursor: Cursor, watch: str) -> list[tuple[int, str]]:
    """The doctor-days the sockets watch: those of the bookings' slots, or (`other`) the
    same doctors' days a week after each (no booking here changes them)."""
    days = sorted(
        {
            (doctor, start[:10])
            for kind in ("booking", "booking today")
            for _, _, _, _, body in cursor.items[kind]
            for doctor, start in [(json.loads(body)["doctor_id"], json.loads(body)["start"])]
        }
    )
    if watch == "booked":
        return days
    week = dt.timedelta(days=7)
    return [(d, (dt.date.fromisoformat(day) + week).isoformat()) for d, day in days]


async def prepare(
    base: str, database_url: str, secret: str, fixtures: dict, requests: int
) -> tuple[Cursor, dict]:
    """The items of every class (`mixed_bench.load_fixtures` has read most), with free
    slots for the warm-up's and `requests` more bookings of each of the three kinds."""
    changes = await fixtures_for_changes(database_url, secret)
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        auth = {"Authorization": f"Bearer {fixtures['tokens'][0]}"}
        today = dt.date.today()
        slots = await free_slots(http, auth, fixtures["doctors"], today, 2 * (WARM_UP + requests))
        today_slots = await free_slots_today(http, auth, fixtures["doctors"], WARM_UP + requests)
    items = {
        **fixtures["items"],
        "booking": booking_items(slots, fixtures),
        "booking today": booking_items(today_slots, fixtures),
        "emails": changes["emails"],
    }
    return Cursor(items), changes


async def free_slots_today(
    http: httpx.AsyncClient, headers: dict[str, str], doctors: list[tuple[int, str]], wanted: int
) -> list[tuple[int, str]]:
    """Free slots later today in each doctor's clinic's time zone, up to three a doctor
    (their appointments can be checked in: a check-in is taken only on the day)."""
    pairs = [(d, dt.datetime.now(ZoneInfo(tz)).date()) for d, tz in doctors]
    # Two hours ahead: still bookable (an hour's notice) when the run gets to them.
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    found = await first_free(http, headers, pairs, wanted, after=soon)
    if len(found) < wanted:
        raise SystemExit(f"only {len(found)} free slots later today; try again in the morning")
    return found


async def cpu_per_class(
    base: str,
    pid: int,
    database_url: str,
    secret: str,
    fixtures: dict,
    requests: int,
    hit_ratio: float = HIT_RATIO,
) -> list[str]:
    """The table of server CPU per request of each class, after a warm-up pass, for a
    server already running (bench/mixed_bench.py's report, with its run's hit ratio)."""
    cursor, changes = await prepare(base, database_url, secret, fixtures, requests)
    tokens = fixtures["tokens"]
    await run_classes(base, pid, cursor, tokens, changes, WARM_UP, profile=False)
    measured = await run_classes(base, pid, cursor, tokens, changes, requests, False)
    return report(measured, hit_ratio)


def report(measured: list[Measured], hit_ratio: float = HIT_RATIO) -> list[str]:
    """The table; the mix's weighted figure takes availability at `hit_ratio` hits (the
    row `availability` is every request a miss, as this script measured it before)."""
    lines = [
        "| class | requests | server CPU ms per request | statuses |",
        "| --- | ---: | ---: | --- |",
    ]
    for m in measured:
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(m.statuses.items()))
        lines.append(f"| {m.name} | {m.count} | {m.ms:.2f} | {codes} |")
    by_name = {m.name: m for m in measured}
    weight = sum(share for k, share in SHARES.items() if k in by_name and share)

    def weighted(availability_ms: float) -> float:
        ms = {k: by_name[k].ms for k in SHARES if k in by_name} | {"availability": availability_ms}
        return sum(share * ms[k] for k, share in SHARES.items() if k in by_name and share) / weight

    misses = by_name["availability"].ms
    every_miss = weighted(misses)
    lines.append(f"| the mix, weighted, every availability request a miss | | {every_miss:.2f} | |")
    if hit := by_name.get("availability (hit)"):
        mixed = hit_ratio * hit.ms + (1 - hit_ratio) * misses
        lines.append(
            f"| **the mix, weighted, availability at {hit_ratio:.0%} hits** | | "
            f"**{weighted(mixed):.2f}** | |"
        )
    return lines


def floors(base: str, pid: int, fixtures: dict, seconds: int = 8) -> list[str]:
    """Server CPU per request of what every request of a class stands on: the bare route,
    authentication with its one Redis round trip (`/api/auth/me`), and one cached
    availability answer; wrk, 4 connections, closed loop."""
    token = fixtures["tokens"][0]
    day = fixtures["items"]["availability"][0][2]
    lines = ["| floor | requests | server CPU ms per request |", "| --- | ---: | ---: |"]
    for name, path in (
        ("bare route `/health/live`", "/health/live"),
        ("authentication `/api/auth/me`", "/api/auth/me"),
        ("cached availability", day),
    ):
        wrk = ["wrk", "-t2", "-c4", "-H", f"Authorization: Bearer {token}", base + path]
        subprocess.run([*wrk, "-d2s"], capture_output=True, check=True)  # warm, cached
        before = server_cpu(pid)
        out = subprocess.run([*wrk, f"-d{seconds}s"], capture_output=True, text=True).stdout
        used = server_cpu(pid) - before
        count = int(next(line for line in out.splitlines() if "requests in" in line).split()[0])
        lines.append(f"| {name} | {count} | {used * 1000 / count:.3f} |")
    return lines


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="per class")
    parser.add_argument("--profile", action="store_true", help="also run under py-spy")
    parser.add_argument("--show", action="store_true", help="only print the last profiles")
    parser.add_argument(
        "--hit-ratio", type=float, default=HIT_RATIO, help="the mix's slot-cache hits, 0-1"
    )
    parser.add_argument(
        "--floors", action="store_true", help="also the floors: bare route, auth, a cache hit"
    )
    parser.add_argument("--sockets", type=int, default=0, help="live websockets held open")
    parser.add_argument(
        "--watch", choices=("booked", "other"), default="booked", help="what the sockets watch"
    )
    args = parser.parse_args()
    if args.show:
        print_profiles()
        return
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        raise SystemExit("set DATABASE_URL to a database `medbook seed scale` loaded")
    redis_url, bench_redis = claim_redis("redis://127.0.0.1:6379/6", 3600)
    secret = secrets.token_urlsafe(40)
    env = server_env(
        database_url,
        redis_url,
        secret,
        RATE_LIMIT_AUTH_PER_MINUTE="1000000",  # one address signs everyone in here
        RATE_LIMIT_USER_PER_MINUTE="1000000",
    )
    today = dt.date.today()
    fixtures = await load_fixtures(database_url, secret, today)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(env, port, workers=1, log_name="mix-profile-server.log")
    workdir = Path(tempfile.mkdtemp(prefix="mix-profile-"))
    sockets = None
    try:
        passes = 2 if args.profile else 1
        n = args.requests
        cursor, changes = await prepare(base, database_url, secret, fixtures, n * passes)
        tokens = fixtures["tokens"]
        if args.sockets:
            channels = watched_days(cursor, args.watch)
            sockets = await start_sockets(
                redis_url, port, fixtures["patients"], channels, args.sockets, workdir
            )
            print(f"{args.sockets} sockets on {len(channels)} doctor-days ({args.watch})")
        await run_classes(base, server.pid, cursor, tokens, changes, WARM_UP, profile=False)
        measured = await run_classes(base, server.pid, cursor, tokens, changes, n, False)
        print("\n".join(report(measured, args.hit_ratio)), flush=True)
        if args.floors:
            print("\n".join(floors(base, server.pid, fixtures)), flush=True)
        if args.profile:
            await run_classes(base, server.pid, cursor, tokens, changes, n, True)
        if sockets is not None:
            counts, sockets = stop_sockets(sockets), None
            print(f"sockets: {counts}")
    finally:
        if sockets is not None:
            sockets.kill()
        shutil.rmtree(workdir, ignore_errors=True)
        server.terminate()
        server.wait(timeout=30)
        release_redis(bench_redis)
        print(f"bench bookings ({REASON!r}) deleted: {await delete_bookings(database_url)}")
    if args.profile:
        print_profiles()


if __name__ == "__main__":
    asyncio.run(main())
