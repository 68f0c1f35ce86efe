"""Where a record list's and an appointment list's CPU goes beside a cached availability
answer's, in process (issue 17).

Usage (a database `medbook seed scale` loaded):

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/scale_bench \\
    BENCH_REDIS_URL=redis://127.0.0.1:6379/10 .venv/bin/python bench/class_parts.py

The app is built and its lifespan run once (`create_app`, real PostgreSQL and Redis). For
the mix's record-list and appointment-list items (`bench/mixed_bench.py`), it times as CPU
of this process per call, in interleaved blocks: the whole request through httpx's ASGI
transport (client included; a cached availability answer beside it for scale), the domain
call alone (`records.list_records`, `queries.list_appointments` with the engine), its
statement alone through `driver_fetchall`, and the answer's shaping and JSON encoding
alone (dicts as the handler builds them, msgspec as Litestar encodes them).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.availability_bench import server_env  # noqa: E402
from bench.inprocess_ab import IN_PROCESS_LIMITS  # noqa: E402
from bench.mixed_bench import bench_target, load_fixtures, release_redis  # noqa: E402


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="requests of a class per block")
    parser.add_argument("--blocks", type=int, default=5)
    args = parser.parse_args()
    database_url, redis_url, bench_redis, secret = bench_target("redis://127.0.0.1:6379/6", 1800)
    os.environ.update(server_env(database_url, redis_url, secret, **IN_PROCESS_LIMITS))
    import httpx
    import msgspec

    from app.access.identity import load_principal
    from app.access.tokens import verify_access_token
    from app.appointments import queries
    from app.records import records
    from app.services import Services
    from app.web.asgi import create_app
    from db.session import driver_fetchall

    fixtures = await load_fixtures(database_url, secret, dt.date.today())
    tokens = fixtures["tokens"]
    items = {k: fixtures["items"][k][: args.n] for k in ("records", "lists", "availability")}
    app = create_app()
    encoder = msgspec.json.Encoder()
    try:
        async with (
            app.lifespan(),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app), base_url="http://127.0.0.1", timeout=30
            ) as client,
        ):
            services = Services.of(app)
            engine, store = services.engine, services.documents

            async def request(kind: str) -> None:
                for _, method, path, t, _body in items[kind]:
                    r = await client.request(
                        method, path, headers={"Authorization": f"Bearer {tokens[t - 1]}"}
                    )
                    assert r.status_code == 200, (path, r.status_code, r.text[:200])

            # Who asks, as the request's Principal (read once, as the server caches it).
            principals: dict[int, object] = {}
            for kind in ("records", "lists"):
                for *_, t, _body in items[kind]:
                    if t not in principals:
                        claims = verify_access_token(secret, tokens[t - 1])
                        assert claims is not None
                        async with services.sessions() as session:
                            principals[t] = await load_principal(session, claims.user_id)

            async def records_domain() -> None:
                for _, _, path, t, _ in items["records"]:
                    patient_id = int(path.split("/")[3])
                    await records.list_records(engine, store, principals[t], patient_id)

            list_args = []
            for _, _, path, t, _ in items["lists"]:
                query = {k: v[0] for k, v in parse_qs(urlsplit(path).query).items()}
                list_args.append(
                    (
                        principals[t],
                        {
                            "doctor_id": int(query["doctor_id"]) if "doctor_id" in query else None,
                            "clinic_id": int(query["clinic_id"]) if "clinic_id" in query else None,
                            "day": dt.date.fromisoformat(query["date"])
                            if "date" in query
                            else None,
                        },
                    )
                )

            async def lists_domain() -> None:
                now = dt.datetime.now(dt.UTC)
                for actor, kw in list_args:
                    await queries.list_appointments(engine, actor, now=now, **kw)

            # The statements alone and the answers alone, from rows read once.
            now = dt.datetime.now(dt.UTC)
            list_rows = [
                (await queries.list_appointments(engine, a, now=now, **kw))[0]
                for a, kw in list_args
            ]
            record_items = []
            for _, _, path, t, _ in items["records"]:
                _, found = await records.list_records(
                    engine, store, principals[t], int(path.split("/")[3])
                )
                record_items.append((int(path.split("/")[3]), found))

            async def select_1() -> None:
                for _ in items["lists"]:
                    await driver_fetchall(engine, "SELECT 1")

            shape = _rows_out()

            async def lists_answers() -> None:
                for rows in list_rows:
                    encoder.encode({"items": shape(rows), "next_cursor": None})

            async def records_answers() -> None:
                for patient_id, found in record_items:
                    encoder.encode(
                        {"patient_id": patient_id, "records": [i.as_json() for i in found]}
                    )

            parts: dict[str, tuple[Callable[[], Awaitable[None]], int]] = {
                "availability request (hit)": (lambda: request("availability"), 1),
                "records request": (lambda: request("records"), 1),
                "lists request": (lambda: request("lists"), 1),
                "records: list_records alone": (records_domain, 1),
                "lists: list_appointments alone": (lists_domain, 1),
                "`SELECT 1` through driver_fetchall": (select_1, 1),
                "records: the answer's dicts + JSON": (records_answers, 1),
                "lists: the answer's dicts + JSON": (lists_answers, 1),
            }
            for work, _ in parts.values():
                await work()  # warm: caches, prepared statements
            results: dict[str, list[float]] = {name: [] for name in parts}
            for _ in range(args.blocks):
                for name, (work, _) in parts.items():
                    started = time.process_time()
                    await work()
                    results[name].append((time.process_time() - started) * 1000 / args.n)
    finally:
        release_redis(bench_redis)
    rows = sum(len(r) for r in list_rows) / len(list_rows)
    recs = sum(len(f) for _, f in record_items) / len(record_items)
    print(f"load average {os.getloadavg()}; {args.n} calls a block; rows per list {rows:.1f},")
    print(f"records per record list {recs:.1f}")
    print("| part | CPU ms per call, median (min–max) of blocks |")
    print("| --- | --- |")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f}) |")
    print(json.dumps({k: [round(v, 4) for v in vs] for k, vs in results.items()}))


def _rows_out() -> Callable[[list], list]:
    """The handler's shaping of a list's rows (`rows_out`; before cpu17g, `row_out` a row)."""
    from app.routes import api_appointments

    if hasattr(api_appointments, "rows_out"):
        return api_appointments.rows_out
    return lambda rows: [api_appointments.row_out(r) for r in rows]


def _day(text: str | None) -> dt.date | None:
    return dt.date.fromisoformat(text) if text else None


if __name__ == "__main__":
    asyncio.run(main())
