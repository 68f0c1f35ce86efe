"""Live-update fan-out: thousands of open websockets over doctor-day channels, two processes,
optionally with the mixed benchmark's load beside them (issue 5; issue 17 at 10,000).

Usage (year-scale data loaded by `medbook seed scale` into DATABASE_URL):

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/scale_bench \
        .venv/bin/python bench/websocket_bench.py [--sockets 1000 --channels 100 \
        --bookings 100 --clients 2 --mix-rate 0 --mix-seconds 60]

It starts `medbook serve --workers 2` (and, with the mix, one `medbook worker`), opens the
sockets as patients watching a doctor's day (`/ws/live?view=slots`) from `--clients` helper
processes, waits for each socket's initial resync, then books one slot on each channel in
turn through the HTTP API and records, for every socket of that channel, the time from
sending the booking to the fragment's arrival (an upper bound on commit-to-arrival: it
includes the booking request itself). The helpers timestamp each message on arrival with
CLOCK_MONOTONIC (`time.monotonic()`), the same clock as the parent's.

With `--mix-rate R` the mixed benchmark's load (bench/mixed_bench.py: its fixtures, its
wrk processes, its report table) runs at R requests/s for `--mix-seconds` against the
same server, and the bookings are spread over that window. The mix books no slot of a
watched doctor, so every fragment a socket receives is one of this bench's bookings.

It reports p50/p99 of that delay, the server processes' resident memory per idle socket,
their descriptors and limits, the CPU of the server, the worker and the socket clients, and
the mix's latency per class. The report goes to bench/results/websockets.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import random
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.access.browser_sessions import COOKIE_NAME, create_session  # noqa: E402
from app.access.tokens import issue_access_token  # noqa: E402
from app.settings import plain_database_url  # noqa: E402
from bench.availability_bench import free_port, start_server  # noqa: E402

REASON = "websocket bench"  # marks this bench's own bookings, deleted at the end
HANDSHAKES = 20  # handshakes in flight over all helpers: people do not all arrive at once
WANT_FILES = 65536  # descriptors the bench asks for (sockets + the server's + wrk's)


def raise_file_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (at most WANT_FILES); the
    server, the worker, wrk and the socket helpers are children and inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANT_FILES if hard == resource.RLIM_INFINITY else min(WANT_FILES, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def server_tree(server: psutil.Process) -> list[psutil.Process]:
    """The uvicorn supervisor and its worker processes."""
    return [server, *server.children(recursive=True)]


def rss_mb(server: psutil.Process) -> float:
    return sum(p.memory_info().rss for p in server_tree(server) if p.is_running()) / 2**20


def cpu_of(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def descriptors(server: psutil.Process) -> str:
    """Open descriptors and the soft RLIMIT_NOFILE of each server process."""
    parts = []
    for proc in server_tree(server):
        with contextlib.suppress(psutil.NoSuchProcess):
            soft, _ = proc.rlimit(psutil.RLIMIT_NOFILE)
            parts.append(f"{proc.num_fds()} of {soft}")
    return ", ".join(parts)


# --- the socket helpers: child processes that hold the sockets and timestamp messages ---


async def hold(config_path: str) -> None:
    """Child process: open this helper's sockets, print `ready {json}`, then one line
    `m <channel> <monotonic seconds>` per message, until stdin closes; then its counts."""
    import websockets

    config = json.loads(Path(config_path).read_text())
    port, cookies = config["port"], config["cookies"]
    counts = {"opened": 0, "failed": 0, "messages": 0, "closed_by_server": 0}
    opened: dict[int, int] = {}
    errors: dict[str, int] = {}
    handshakes: list[float] = []  # seconds from connect to the resync, once a slot was free
    closes: dict[str, int] = {}
    close_after: dict[str, int] = {}
    gate = asyncio.Semaphore(config["handshakes"])
    ready = asyncio.Event()
    out = sys.stdout

    async def watch(index: int, channel: int) -> None:
        doctor_id, day = config["channels"][channel]
        url = f"ws://127.0.0.1:{port}/ws/live?view=slots&doctor_id={doctor_id}&date={day}&days=1"
        headers = {
            "Cookie": f"{config['cookie_name']}={cookies[index % len(cookies)]}",
            "Origin": f"http://127.0.0.1:{port}",
        }
        try:
            async with gate:
                began = time.monotonic()
                # Browsers answer pings and send none of their own: no client pings.
                ws = await websockets.connect(
                    url, additional_headers=headers, max_size=None, ping_interval=None
                )
                await ws.recv()  # the resync every connect starts with
                handshakes.append(time.monotonic() - began)
            counts["opened"] += 1
            opened[channel] = opened.get(channel, 0) + 1
        except Exception as exc:  # counted and reported
            counts["failed"] += 1
            name = type(exc).__name__
            errors[name] = errors.get(name, 0) + 1
            return
        finally:
            if counts["opened"] + counts["failed"] >= len(config["sockets"]):
                ready.set()
        since = time.monotonic()
        try:
            async for message in ws:
                out.write(f"m {channel} {time.monotonic():.6f} {len(message)}\n")
                out.flush()
                counts["messages"] += 1
        except websockets.ConnectionClosed:
            pass
        counts["closed_by_server"] += 1
        # Why and when: a close frame's code and reason, or 1006 when the TCP connection
        # ended without one; seconds after the resync, rounded to 10 s.
        frame = ws.close_code, ws.close_reason
        why = f"{frame[0]} {frame[1] or ''}".strip()
        closes[why] = closes.get(why, 0) + 1
        after = f"{int(time.monotonic() - since) // 10 * 10}"
        close_after[after] = close_after.get(after, 0) + 1

    tasks = [asyncio.create_task(watch(i, c)) for i, c in config["sockets"]]
    await ready.wait()
    ready_line = {"opened": opened, "errors": errors, "handshakes": handshakes}
    out.write("ready " + json.dumps(ready_line) + "\n")
    out.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    counts_line = {**counts, "closes": closes, "close_after": close_after}
    out.write("done " + json.dumps(counts_line) + "\n")
    out.flush()
    for task in tasks:
        task.cancel()


class Helpers:
    """The socket helper processes, seen from the parent: arrivals per channel."""

    def __init__(self, channels: int) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self.arrivals: dict[int, list[float]] = {c: [] for c in range(channels)}
        self.waiting: dict[int, tuple[int, asyncio.Event]] = {}
        self.opened: dict[int, int] = dict.fromkeys(range(channels), 0)
        self.errors: dict[str, int] = {}
        self.handshakes: list[float] = []
        self.sizes: list[int] = []  # each fragment's length as the client received it
        self.counts: dict[str, int] = {}
        self.closes: dict[str, dict[str, int]] = {}
        self._readers: list[asyncio.Task[None]] = []

    async def start(self, config: dict, clients: int, workdir: Path) -> float:
        """Start `clients` helpers, each with every `clients`-th socket; return the seconds
        until every socket had its resync (or failed)."""
        started = time.monotonic()
        readies = []
        for k in range(clients):
            mine = [(i, i % config["channels_count"]) for i in range(k, config["total"], clients)]
            path = workdir / f"helper-{k}.json"
            path.write_text(json.dumps({**config, "sockets": mine}))
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--hold",
                str(path),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=ROOT,
                limit=2**20,
            )
            self.procs.append(proc)
            ready = asyncio.get_running_loop().create_future()
            readies.append(ready)
            self._readers.append(asyncio.create_task(self._read(proc, ready)))
        await asyncio.gather(*readies)
        return time.monotonic() - started

    async def _read(self, proc: asyncio.subprocess.Process, ready: asyncio.Future) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode()
            if line.startswith("m "):
                _, channel, at, size = line.split()
                c = int(channel)
                self.sizes.append(int(size))
                self.arrivals[c].append(float(at))
                want = self.waiting.get(c)
                if want is not None and len(self.arrivals[c]) >= want[0]:
                    want[1].set()
            elif line.startswith("ready "):
                info = json.loads(line[6:])
                for c, n in info["opened"].items():
                    self.opened[int(c)] += n
                self.handshakes += info["handshakes"]
                for name, n in info["errors"].items():
                    self.errors[name] = self.errors.get(name, 0) + n
                ready.set_result(None)
            elif line.startswith("done "):
                for name, n in json.loads(line[5:]).items():
                    if isinstance(n, dict):  # closes by code, by seconds after the resync
                        into = self.closes.setdefault(name, {})
                        for key, m in n.items():
                            into[key] = into.get(key, 0) + m
                    else:
                        self.counts[name] = self.counts.get(name, 0) + n
        if not ready.done():
            ready.set_exception(SystemExit("a socket helper ended before its sockets opened"))

    async def wait_for(self, channel: int, count: int, seconds: float) -> None:
        """Until `count` messages have arrived on `channel` since it was cleared."""
        event = asyncio.Event()
        self.waiting[channel] = (count, event)
        if len(self.arrivals[channel]) >= count:
            event.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()
        del self.waiting[channel]

    def pids(self) -> list[psutil.Process]:
        return [psutil.Process(p.pid) for p in self.procs]

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                async with asyncio.timeout(60):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for reader in self._readers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader


def stop_server(stack, server) -> None:
    """Stop the server (and the worker): uvicorn waits for its sockets' handlers (up to
    CLOSE_GRACE_SECONDS each), which a loaded machine can stretch; then kill the tree."""
    tree = server_tree(psutil.Process(server.pid))
    try:
        if stack is not None:
            stack.stop()
        else:
            server.terminate()
            server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            for proc in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            server.wait(timeout=10)
        if stack is not None and stack.worker.poll() is None:
            stack.worker.kill()
            stack.worker.wait(timeout=10)


# --- the run ---------------------------------------------------------------------------


def working_day(day: dt.date) -> dt.date:
    # The seed closes every clinic at weekends, on 1 January and 25 December.
    while day.weekday() >= 5 or (day.month, day.day) in {(1, 1), (12, 25)}:
        day += dt.timedelta(days=1)
    return day


async def delete_own(database_url: str) -> str:
    from bench.mixed_bench import delete_bookings

    conn = await asyncpg.connect(plain_database_url(database_url))
    try:
        await conn.execute(
            "DELETE FROM dev_mailbox m USING notifications n, appointments a "
            "WHERE m.notification_id = n.id AND n.appointment_id = a.id AND a.reason = $1",
            REASON,
        )
        mine = str(await conn.execute("DELETE FROM appointments WHERE reason = $1", REASON))
        return f"this bench's: {mine}; the mix's: {await delete_bookings(database_url, conn)}"
    finally:
        await conn.close()


async def warm_up(base: str, port: int, channels, cookie: str, token: str) -> None:
    """One available-slots request and one socket (opened, resynced, closed) per channel,
    so the baseline RSS is a warmed server's (templates compiled, pools filled), not a
    cold start's."""
    import websockets

    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        for doctor_id, day in channels:
            await http.get(
                "/api/appointments/available-slots",
                params={"doctor_id": doctor_id, "date": day.isoformat()},
                headers={"Authorization": f"Bearer {token}"},
            )
    for doctor_id, day in channels:
        url = f"ws://127.0.0.1:{port}/ws/live?view=slots&doctor_id={doctor_id}&date={day}&days=1"
        headers = {"Cookie": f"{COOKIE_NAME}={cookie}", "Origin": base}
        async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
            await ws.recv()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--bookings", type=int, default=100)
    parser.add_argument("--clients", type=int, default=2, help="socket helper processes")
    parser.add_argument("--mix-rate", type=float, default=0, help="requests/s; 0: no mix")
    parser.add_argument("--mix-seconds", type=float, default=60)
    parser.add_argument("--hold", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold:
        await hold(args.hold)
        return
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        raise SystemExit("set DATABASE_URL to the database `medbook seed scale` loaded")
    from bench import mixed_bench as mix

    files = raise_file_limit()
    needed = args.sockets + 1000
    if files[0] < needed:
        raise SystemExit(f"RLIMIT_NOFILE {files} is below the {needed} descriptors needed")
    code = mix.code_version()
    redis_url, bench_redis = mix.claim_redis("redis://127.0.0.1:6379/2", 3600)
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    secret = secrets.token_urlsafe(40)
    env = mix.bench_env(database_url, redis_url, secret)
    today = dt.date.today()
    fixtures = await mix.load_fixtures(database_url, secret, today) if args.mix_rate else None
    conn = await asyncpg.connect(plain_database_url(database_url))
    await conn.execute(
        "DELETE FROM dev_mailbox m USING notifications n, appointments a "
        "WHERE m.notification_id = n.id AND n.appointment_id = a.id AND a.reason = $1",
        REASON,
    )
    await conn.execute("DELETE FROM appointments WHERE reason = $1", REASON)
    doctors = [r["id"] for r in await conn.fetch("SELECT id FROM doctors WHERE active ORDER BY id")]
    patients = await conn.fetch("SELECT id FROM users WHERE role = 'patient' ORDER BY id LIMIT 200")
    await conn.close()
    day = working_day(today + dt.timedelta(days=30))
    rng = random.Random(9)
    channels = [(d, day) for d in rng.sample(doctors, args.channels)]
    watched = {d for d, _ in channels}
    from redis.asyncio import Redis

    aredis = Redis.from_url(redis_url)
    cookies = [(await create_session(aredis, p["id"])).session_id for p in patients]
    await aredis.aclose()
    tokens = [
        issue_access_token(secret, user_id=p["id"], role="patient", ttl_seconds=7200)
        for p in patients
    ]

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    workdir = Path(tempfile.mkdtemp(prefix="websocket-bench-"))
    if args.mix_rate:
        stack = mix.start_stack(env, port, 2)
        server, worker_pid = stack.server, stack.worker.pid
    else:
        stack, server, worker_pid = None, start_server(env, port), None
    server_proc = psutil.Process(server.pid)
    helpers = Helpers(args.channels)
    try:
        if fixtures is not None:
            slots = await mix.with_bookings(base, fixtures)
            # The mix books no slot of a watched doctor: every fragment is one of ours.
            fixtures["items"]["booking"] = [
                item
                for item, (doctor_id, _) in zip(fixtures["items"]["booking"], slots, strict=True)
                if doctor_id not in watched
            ]
        await warm_up(base, port, channels, cookies[0], tokens[0])
        first_workers = {p.pid for p in server_proc.children()}
        await asyncio.sleep(2)
        idle_before = rss_mb(server_proc)
        fds_before = descriptors(server_proc)
        config = {
            "port": port,
            "cookies": cookies,
            "cookie_name": COOKIE_NAME,
            "channels": [(d, when.isoformat()) for d, when in channels],
            "channels_count": args.channels,
            "total": args.sockets,
            "handshakes": max(1, math.ceil(HANDSHAKES / args.clients)),
        }
        open_wall0 = time.monotonic()
        server_open0 = cpu_of(server_tree(server_proc))
        open_seconds = await helpers.start(config, args.clients, workdir)
        client_procs = helpers.pids()
        client_cpu_open = cpu_of(client_procs)
        open_wall = time.monotonic() - open_wall0
        server_cpu_open = cpu_of(server_tree(server_proc)) - server_open0
        await asyncio.sleep(5)  # let the handshakes' garbage go
        idle_after = rss_mb(server_proc)
        fds_after = descriptors(server_proc)
        opened = sum(helpers.opened.values())
        open_metric = mix.metrics(base)["medbook_websockets_open"]

        cpu_before = mix.cpu_seconds(server.pid, worker_pid or server.pid)
        client_before = cpu_of(client_procs)
        mix_job = None
        if fixtures is not None:
            t0 = time.monotonic() + mix.wrk_lead(args.mix_rate)
            mix_job = asyncio.get_running_loop().run_in_executor(
                None,
                mix.run_mix,
                base,
                fixtures,
                args.mix_rate,
                args.mix_seconds,
                workdir / "mix",
                t0,
            )
            # Bookings spread over the mix's window, clear of its first and last seconds.
            first, spacing = t0 + 2, max(0.0, args.mix_seconds - 4) / max(1, args.bookings)
        else:
            first, spacing = time.monotonic(), 0.0
        delays: list[float] = []
        booked = missing = expected = 0
        statuses: dict[int, int] = {}
        lookups: dict[int, int] = {}  # available-slots answers other than 200
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            for n in range(args.bookings):
                await asyncio.sleep(max(0.0, first + n * spacing - time.monotonic()))
                channel = n % args.channels
                doctor_id, when = channels[channel]
                answer = await http.get(
                    "/api/appointments/available-slots",
                    params={"doctor_id": doctor_id, "date": when.isoformat()},
                    headers={"Authorization": f"Bearer {tokens[0]}"},
                )
                if answer.status_code != 200:  # shed (503) by a busy server: count it
                    lookups[answer.status_code] = lookups.get(answer.status_code, 0) + 1
                    continue
                free = [s["start"] for s in answer.json()["slots"] if s["available"]]
                if not free:
                    continue
                helpers.arrivals[channel].clear()
                sent = time.monotonic()
                response = await http.post(
                    "/api/appointments",
                    json={"doctor_id": doctor_id, "start": free[0], "reason": REASON},
                    headers={"Authorization": f"Bearer {tokens[(n + 1) % len(tokens)]}"},
                )
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code != 201:
                    print(f"booking {n}: {response.status_code} {response.text[:120]}")
                    continue
                booked += 1
                watchers = helpers.opened[channel]
                expected += watchers
                await helpers.wait_for(channel, watchers, 5)
                # Measured from sending the booking: an upper bound on commit -> arrival (the
                # fragment is published right after the commit, often before the 201 arrives).
                got = [(t - sent) * 1000 for t in helpers.arrivals[channel] if t >= sent]
                delays += got
                if len(got) < watchers:
                    missing += watchers - len(got)
                    print(f"booking {n}: {watchers - len(got)} sockets got nothing within 5 s")
        phase = await mix_job if mix_job is not None else None
        cpu_after = mix.cpu_seconds(server.pid, worker_pid or server.pid)
        client_after = cpu_of(client_procs)
        busy_rss = rss_mb(server_proc)
        # uvicorn's supervisor kills a worker whose health check goes unanswered for 5 s
        # and starts another: every socket of the old one is gone.
        replaced = len(first_workers - {p.pid for p in server_proc.children()})
        load = os.getloadavg()
        await helpers.stop()
    finally:
        try:
            for proc in helpers.procs:
                if proc.returncode is None:
                    proc.kill()
            stop_server(stack, server)
        finally:
            mix.release_redis(bench_redis)
    removed = await delete_own(database_url)

    ordered = sorted(delays)
    if not ordered:
        raise SystemExit(f"no fragment measured ({booked} bookings made on {day}); see the log")

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * len(ordered)) - 1)]

    handshakes = sorted(helpers.handshakes) or [math.nan]

    def hs(p: float) -> float:
        return (
            1000
            * handshakes[min(len(handshakes) - 1, max(0, round(p / 100 * len(handshakes)) - 1))]
        )

    per_socket_kb = (idle_after - idle_before) * 1024 / max(1, opened)
    wall = cpu_after["wall"] - cpu_before["wall"]
    client_cores = (client_after - client_before) / wall
    used = mix.delta(cpu_after, cpu_before)
    counts = helpers.counts
    cores = os.cpu_count()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    beside = (
        f", with the mixed benchmark's load at {args.mix_rate:g} requests/s for "
        f"{args.mix_seconds:g} s beside it (bookings spread over that window)"
        if args.mix_rate
        else ""
    )
    lines = [
        f"# Websocket fan-out ({stamp})",
        "",
        f"{args.sockets} sockets over {args.channels} doctor-day channels ({day}) on "
        f"`medbook serve --workers 2`{' and one `medbook worker`' if args.mix_rate else ''}"
        f"{beside}; {args.clients} socket client processes, everything on the same "
        f"{cores}-core machine. Load average (1/5/15 min) at the end: "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}. Code: {code}. Command: "
        f"`{' '.join(['bench/websocket_bench.py', *sys.argv[1:]])}`.",
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| sockets opened (with resync) in | {open_seconds:.1f} s |",
        f"| sockets opened / failed | {opened} / {sum(helpers.errors.values())} "
        f"{helpers.errors or ''} |",
        f"| sockets the server counts open (`medbook_websockets_open`) | {open_metric:.0f} |",
        f"| bookings made (doctors with hours that day) | {booked} (statuses {statuses}; "
        f"slot look-ups not answered 200: {lookups or 0}) |",
        f"| fragments received | {len(delays)} (expected {expected}, missing {missing}) |",
        f"| booking sent → fragment, p50 | {pct(50):.1f} ms |",
        f"| booking sent → fragment, p99 | {pct(99):.1f} ms |",
        f"| booking sent → fragment, max | {ordered[-1]:.1f} ms |",
        f"| mean | {statistics.fmean(delays):.1f} ms |",
        f"| fragment size as received, median / max (uncompressed: the server offers no "
        f"permessage-deflate) | {statistics.median(helpers.sizes or [0]):,.0f} / "
        f"{max(helpers.sizes or [0]):,} characters |",
        f"| server RSS warmed, no sockets | {idle_before:.0f} MB |",
        f"| server RSS with {opened} idle sockets | {idle_after:.0f} MB |",
        f"| memory per idle socket | {per_socket_kb:.0f} KB |",
        f"| server RSS at the end of the bookings{' and the mix' if args.mix_rate else ''} | "
        f"{busy_rss:.0f} MB |",
        f"| server descriptors open / soft limit, no sockets (supervisor, workers) | "
        f"{fds_before} |",
        f"| same with the sockets | {fds_after} |",
        f"| bench's RLIMIT_NOFILE (soft, hard; every child inherits it) | {files[0]}, {files[1]} |",
        f"| socket clients' CPU while opening | {client_cpu_open / open_wall:.2f} cores "
        f"({client_cpu_open:.1f} s over {open_wall:.1f} s) |",
        f"| handshake → resync per socket, p50 / p99 / max | "
        f"{hs(50):.0f} / {hs(99):.0f} / {hs(100):.0f} ms ({config['handshakes']} in flight "
        f"per client process) |",
        f"| server processes' CPU while opening | {server_cpu_open / open_wall:.2f} cores "
        f"({server_cpu_open * 1000 / max(1, opened):.1f} ms per socket) |",
        f"| socket clients' CPU during the bookings | {client_cores:.2f} cores |",
        f"| server processes' CPU during the bookings | {used['server'] / wall:.2f} cores |",
        *(
            []  # the mix's requests share that CPU
            if args.mix_rate or not delays
            else [
                f"| server CPU per booking with its slot look-up and fan-out (no mix) | "
                f"{1000 * used['server'] / max(1, booked):.2f} ms "
                f"({1000 * used['server'] / len(delays):.3f} ms per fragment delivered) |"
            ]
        ),
        f"| machine busy during the bookings | {used['machine'] / wall:.2f} of {cores} cores |",
        f"| messages the clients received / sockets closed by the server | "
        f"{counts.get('messages', 0)} / {counts.get('closed_by_server', 0)} |",
        f"| server processes replaced during the run (uvicorn's health check) | {replaced} |",
        f"| closes by code and reason | {helpers.closes.get('closes') or 'none'} |",
        f"| closes by seconds after the resync (10 s bins) | "
        f"{helpers.closes.get('close_after') or 'none'} |",
    ]
    lines += [
        "",
        "Memory per socket: the resident set (RSS) of the uvicorn supervisor and its two "
        "worker processes together, 5 s after the last socket's resync, minus the same 2 s "
        "after a warm-up (one available-slots request and one socket opened and closed per "
        "channel), divided by the sockets opened. Clients send no pings (as browsers) and "
        "offer permessage-deflate (as browsers). Latency is taken from sending the booking "
        "to the fragment's arrival in the client process (CLOCK_MONOTONIC in both), so a "
        "busy client adds to it.",
    ]
    if phase is not None:
        lines += [
            "",
            f"## The mix beside the sockets: {args.mix_rate:g} requests/s for "
            f"{args.mix_seconds:g} s",
            "",
            *mix.phase_table(phase),
            "",
            mix.cpu_line(cpu_before, cpu_after, phase)
            + f" Of that rest, the socket clients: {client_cores:.2f} cores.",
        ]
    lines += ["", f"Bookings deleted afterwards ({removed})."]
    report = "\n".join(lines) + "\n"
    (results / "websockets.md").write_text(report)
    print(report)


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(main())
    else:
        uvloop.run(main())
