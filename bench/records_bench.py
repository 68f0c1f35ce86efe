"""Medical record lists with 50 download URLs at year scale (issue 6: review C-2 and S-7).

Usage (after `medbook seed scale` loaded the year into DATABASE_URL):

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/scale_bench \
        .venv/bin/python bench/records_bench.py [--seconds 30] [--rate 50]

It gives one patient of the year (one with a login and a doctor in their care) exactly 50
records with real documents, then, for each storage backend (local disk; S3 through moto's
server, whose URLs are signed by medbook's presigner), starts `medbook serve --workers 2`
and measures:

- `GET /api/patients/{id}/records` (50 records, 50 URLs, one audit row each) at `--rate`
  requests/s, open loop, latency from each request's scheduled time;
- the review's N+1 flow in the same run: the list, then one request per record for its
  URL (`GET /api/patients/{id}/records/{record_id}`), one after the other as the review's
  frontend does, and with six at a time as a browser would; reported as a ratio to the
  single list request;
- in process, the cost of signing 50 URLs: botocore's `generate_presigned_url`, medbook's
  presigner and the disk store's HMAC URLs.

The per-user rate limit is turned off for the server (one user asking 50 times a second is
what the limit exists to stop). The Markdown report is printed and written to
bench/results/records.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import shutil
import statistics
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.access.tokens import issue_access_token  # noqa: E402
from app.records.documents import URL_PATH, new_key  # noqa: E402
from app.settings import plain_database_url  # noqa: E402
from app.storage import DiskStore  # noqa: E402
from bench.availability_bench import free_port, start_server  # noqa: E402
from bench.loadgen import HEADER, Client, Result, run  # noqa: E402

RECORDS = 50
BENCH_TITLE = "bench record"
DATA_DIR = ROOT / "var" / "bench-records"
BUCKET = "medbook-bench"
PDF = b"%PDF-1.4\n" + b"0" * 40_000 + b"\n%%EOF\n"


async def load_fixtures(database_url: str, secret: str) -> dict:
    """Pick a patient with a login and a doctor in their care; give them exactly 50 records
    (ours replace any earlier bench run's), each with a document on disk."""
    conn = await asyncpg.connect(plain_database_url(database_url))
    try:
        row = await conn.fetchrow(
            "SELECT u.id AS patient_user, u.patient_id, a.doctor_id, du.id AS doctor_user "
            "FROM users u JOIN appointments a ON a.patient_id = u.patient_id "
            "JOIN users du ON du.doctor_id = a.doctor_id "
            "WHERE u.role = 'patient' AND a.status IN ('booked', 'checked_in', 'completed') "
            "ORDER BY u.id LIMIT 1"
        )
        if row is None:
            raise SystemExit("load the year first: medbook seed scale")
        patient_id = row["patient_id"]
        await conn.execute(
            "DELETE FROM medical_records WHERE patient_id = $1 AND title LIKE $2",
            patient_id,
            f"{BENCH_TITLE}%",
        )
        existing = await conn.fetchval(
            "SELECT count(*) FROM medical_records WHERE patient_id = $1", patient_id
        )
        store = DiskStore(DATA_DIR / "documents", "unused-for-writing" * 3)
        shutil.rmtree(DATA_DIR / "documents" / "patients", ignore_errors=True)
        keys = []
        now = dt.datetime.now(dt.UTC)
        for n in range(RECORDS - existing):
            key = new_key(patient_id, "pdf")
            await store.put(key, PDF, "application/pdf")
            keys.append(key)
            await conn.execute(
                "INSERT INTO medical_records (patient_id, author_doctor_id, record_type, title, "
                "storage_key, content_type, size, sha256, uploaded_at) "
                "VALUES ($1, $2, 'lab_result', $3, $4, 'application/pdf', $5, $6, $7)",
                patient_id,
                row["doctor_id"],
                f"{BENCH_TITLE} {n + 1}",
                key,
                len(PDF),
                hashlib.sha256(PDF).hexdigest(),
                now - dt.timedelta(days=n),
            )
        record_ids = [
            r["id"]
            for r in await conn.fetch(
                "SELECT id FROM medical_records WHERE patient_id = $1", patient_id
            )
        ]
        all_keys = [
            r["storage_key"]
            for r in await conn.fetch(
                "SELECT storage_key FROM medical_records WHERE patient_id = $1", patient_id
            )
        ]
        total = await conn.fetchval("SELECT count(*) FROM medical_records")
        appointments = await conn.fetchval("SELECT count(*) FROM appointments")
    finally:
        await conn.close()
    assert len(record_ids) == RECORDS, len(record_ids)
    token = issue_access_token(secret, user_id=row["doctor_user"], role="doctor", ttl_seconds=7200)
    return {
        "patient_id": patient_id,
        "record_ids": record_ids,
        "keys": all_keys,
        "headers": {"Authorization": f"Bearer {token}"},
        "total_records": total,
        "appointments": appointments,
    }


def signing_costs(keys: list[str], reps: int = 200) -> list[tuple[str, float, float]]:
    """Milliseconds to sign the 50 URLs of one list: median and p95 over `reps` lists."""
    from app.settings import load_settings
    from app.storage import S3Store

    settings = load_settings(
        {
            "DATABASE_URL": "postgresql://x@h/db",
            "REDIS_URL": "redis://h",
            "SECRET_KEY": "k" * 40,
            "S3_BUCKET": BUCKET,
            "S3_REGION": "eu-central-1",
            "S3_ACCESS_KEY_ID": "AKIDEXAMPLE",
            "S3_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        }
    )
    s3 = S3Store(settings)
    disk = DiskStore(DATA_DIR / "documents", "k" * 40, URL_PATH)

    def botocore_list() -> None:
        for key in keys:
            s3.client.generate_presigned_url(
                "get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=600
            )

    out = []
    for name, fn in (
        ("botocore `generate_presigned_url`", botocore_list),
        ("medbook S3 presigner (`S3Store.urls`)", lambda: s3.urls(keys)),
        ("disk store HMAC URLs (`DiskStore.urls`)", lambda: disk.urls(keys)),
    ):
        fn()
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            fn()
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        out.append((name, statistics.median(times), times[int(len(times) * 0.95) - 1]))
    return out


async def n_plus_one(client: Client, fixtures: dict, flows: int, parallel: int) -> Result:
    """The review's flow: the list, then one request per record for its URL."""
    result = Result(f"N+1: list + {RECORDS} single-record requests, {parallel} at a time")
    pid, headers = fixtures["patient_id"], fixtures["headers"]
    list_raw = Client.encode(("GET", f"/api/patients/{pid}/records", None, headers), client.host)
    singles = [
        Client.encode(("GET", f"/api/patients/{pid}/records/{rid}", None, headers), client.host)
        for rid in fixtures["record_ids"]
    ]
    lanes = [Client(client.host, client.port) for _ in range(parallel)]
    started_all = time.perf_counter()
    for _ in range(flows):
        started = time.perf_counter()
        status, _ = await client.send(list_raw)
        result.statuses[status] = result.statuses.get(status, 0) + 1

        async def lane(index: int) -> None:
            for raw in singles[index::parallel]:
                code, _ = await lanes[index].send(raw)
                result.statuses[code] = result.statuses.get(code, 0) + 1

        await asyncio.gather(*(lane(i) for i in range(parallel)))
        result.latencies_ms.append((time.perf_counter() - started) * 1000)
    result.duration_s = time.perf_counter() - started_all
    for lane_client in lanes:
        lane_client.close()
    return result


async def sequential_lists(client: Client, fixtures: dict, count: int) -> Result:
    result = Result("one list request (50 URLs), alone")
    raw = Client.encode(
        ("GET", f"/api/patients/{fixtures['patient_id']}/records", None, fixtures["headers"]),
        client.host,
    )
    started_all = time.perf_counter()
    for _ in range(count):
        started = time.perf_counter()
        status, body = await client.send(raw)
        result.latencies_ms.append((time.perf_counter() - started) * 1000)
        result.statuses[status] = result.statuses.get(status, 0) + 1
    result.duration_s = time.perf_counter() - started_all
    assert len(json.loads(body)["records"]) == RECORDS
    return result


def moto_with_objects(keys: list[str]):
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per PUT and GET
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="eu-central-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    s3.create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"}
    )
    for key in keys:
        s3.put_object(Bucket=BUCKET, Key=key, Body=PDF, ContentType="application/pdf")
    return server, endpoint


async def measure_backend(name: str, env: dict[str, str], fixtures: dict, args) -> list[str]:
    port = free_port()
    server = start_server(env, port, log_name=f"records-server-{name}.log")
    try:
        pid, headers = fixtures["patient_id"], fixtures["headers"]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            listed = (await http.get(f"/api/patients/{pid}/records", headers=headers)).json()
            first = listed["records"][0]["document_url"]
            url = first if first.startswith("http") else f"http://127.0.0.1:{port}{first}"
            document = await http.get(url)
            assert document.status_code == 200 and document.content == PDF, document.status_code
        client = Client("127.0.0.1", port)

        def records_list(n: int):
            return ("GET", f"/api/patients/{pid}/records", None, headers)

        await run(client, {"warm-up": (args.rate, records_list)}, 5)
        load_before = os.getloadavg()[0]
        results = list(
            (
                await run(
                    client,
                    {f"record list, 50 URLs, at {args.rate:.0f}/s": (args.rate, records_list)},
                    args.seconds,
                )
            ).values()
        )
        alone = await sequential_lists(client, fixtures, args.flows)
        sequential = await n_plus_one(client, fixtures, args.flows, 1)
        browser = await n_plus_one(client, fixtures, args.flows, 6)
        load_after = os.getloadavg()[0]
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=15)
    lines = [
        f"#### Backend: {name}",
        "",
        f"Load average (1 min) before / after: {load_before:.2f} / {load_after:.2f}.",
        "",
        HEADER,
        *(r.row() for r in (*results, alone, sequential, browser)),
        "",
        f"N+1 flow against one list request (medians): "
        f"**{sequential.pct(50) / alone.pct(50):.0f}×** one at a time, "
        f"**{browser.pct(50) / alone.pct(50):.0f}×** six at a time.",
        "",
    ]
    return lines


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--flows", type=int, default=40)
    parser.add_argument("--backends", default="disk,s3")
    args = parser.parse_args()
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        raise SystemExit("set DATABASE_URL to the database `medbook seed scale` loaded")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/3")
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    redis.Redis.from_url(redis_url).flushdb()
    secret = secrets.token_urlsafe(40)
    fixtures = await load_fixtures(database_url, secret)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": secret,
        "LOG_LEVEL": "WARNING",
        "MEDBOOK_EMBEDDED": "",
        "MEDBOOK_DATA_DIR": str(DATA_DIR),
        "RATE_LIMIT_USER_PER_MINUTE": "0",
    }
    for name in ("S3_BUCKET", "S3_ENDPOINT_URL", "S3_SSE"):
        env.pop(name, None)
    lines = [
        f"Data: {fixtures['appointments']:,} appointments, {fixtures['total_records']:,} "
        f"medical records; patient {fixtures['patient_id']} has {RECORDS}, read by a doctor "
        "in their care. Server: `medbook serve --workers 2` (uvicorn); load generator on the "
        "same 2-core machine, open loop. Every list writes its audit row before answering.",
        "",
    ]
    backends = args.backends.split(",")
    if "disk" in backends:
        lines += await measure_backend("disk", env, fixtures, args)
    if "s3" in backends:
        moto, endpoint = moto_with_objects(fixtures["keys"])
        try:
            s3_env = {
                **env,
                "S3_BUCKET": BUCKET,
                "S3_REGION": "eu-central-1",
                "S3_ENDPOINT_URL": endpoint,
                "S3_ACCESS_KEY_ID": "bench",
                "S3_SECRET_ACCESS_KEY": "bench",
            }
            lines += await measure_backend("S3 (moto server)", s3_env, fixtures, args)
        finally:
            moto.stop()
    lines += [
        "#### Signing the 50 URLs of one list, in process (200 lists)",
        "",
        "| signer | median ms | p95 ms |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {n} | {m:.2f} | {p:.2f} |" for n, m, p in signing_costs(fixtures["keys"])]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    report = f"### Records bench, {stamp}\n\n" + "\n".join(lines) + "\n"
    (ROOT / "bench" / "results" / "records.md").write_text(report)
    print(report)


if __name__ == "__main__":
    asyncio.run(main())
