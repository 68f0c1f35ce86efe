"""Exports kept in S3, over real HTTP: moto's threaded server, real boto3 calls (upload
with server-side encryption, pre-signed download, delete on expiry)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from urllib.parse import parse_qsl, urlsplit

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from app.analytics import exports
from app.web.asgi import create_app
from tasks import analytics as jobs
from tests.integration.analytics_data import add_random_appointments
from tests.integration.s3_server import REGION, s3_server
from tests.integration.test_analytics_exports import (
    DAYS,
    expected_rows,
    parse,
    run_queued,
    worker_ctx,
)
from tests.integration.world import make_world

BUCKET = "medbook-exports-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    with s3_server(BUCKET) as endpoint:
        yield endpoint


@pytest.fixture
def s3_settings(settings, s3_endpoint):
    return dataclasses.replace(
        settings,
        s3_bucket=BUCKET,
        s3_region=REGION,
        s3_endpoint_url=s3_endpoint,
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        s3_sse="AES256",
    )


@pytest.fixture
async def s3_client(db, redis, s3_settings):
    async with AsyncTestClient(app=create_app(s3_settings)) as client:
        yield client


@pytest.fixture
async def s3_ctx(s3_settings, engine, redis):
    """The worker's ctx, with the S3 settings (as a worker configured with S3_* has)."""
    async with worker_ctx(s3_settings, engine, redis) as made:
        yield made


def bucket_client(endpoint: str):
    """A client of our own, to look into the bucket independently of the app's."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


async def test_export_to_s3_download_by_presigned_url_and_delete_on_expiry(
    s3_client, s3_ctx, s3_settings, s3_endpoint, session, settings
):
    world = await make_world(session, settings.secret_key, patients=5)
    await add_random_appointments(session, world, DAYS, seed=5, per_day=5)
    admin = world.headers("admin")
    made = await s3_client.post(
        "/api/analytics/exports", json={"from": "2026-04-01", "to": "2026-04-10"}, headers=admin
    )
    assert made.status_code == 202, made.text
    export_id = made.json()["id"]
    assert await run_queued(s3_settings, s3_ctx, export_id) == {"status": "done", "rows": 100}

    # The object is in the bucket, encrypted at rest, with exactly the query's rows; no
    # copy is left on the worker's disk.
    key = f"exports/{export_id}.csv"
    bucket = bucket_client(s3_endpoint)
    stored = bucket.get_object(Bucket=BUCKET, Key=key)
    assert stored["ServerSideEncryption"] == "AES256"
    assert stored["ContentType"] == "text/csv"
    body = stored["Body"].read().decode()
    header, rows = parse(body)
    assert header == list(exports.COLUMNS)
    assert rows == await expected_rows(session)
    local = exports.work_dir(s3_settings)
    assert not (local / f"{export_id}.csv").exists()
    assert not (local / f"{export_id}.part").exists()

    # The download is a redirect to a short-lived pre-signed URL that serves the CSV to
    # anyone holding it (the browser's side: no credentials at all).
    status = (await s3_client.get(f"/api/analytics/exports/{export_id}", headers=admin)).json()
    download = await s3_client.get(status["download_url"], headers=admin, follow_redirects=False)
    assert download.status_code == 302, download.text
    url = download.headers["location"]
    assert url.startswith(f"{s3_endpoint}/{BUCKET}/{key}?")  # path style, our key
    params = dict(parse_qsl(urlsplit(url).query))
    assert 60 <= int(params["X-Amz-Expires"]) <= 15 * 60
    assert params["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert (
        'filename="appointments-all-clinics-2026-04-01-2026-04-10.csv"'
        in params["response-content-disposition"]
    )
    async with httpx.AsyncClient() as http:
        fetched = await http.get(url)
    assert fetched.status_code == 200, fetched.text
    assert fetched.text == body
    assert "attachment" in fetched.headers["content-disposition"]
    downloads = await session.scalar(
        text("SELECT count(*) FROM audit_events WHERE action = 'export.downloaded'")
    )
    assert downloads == 1

    # Once expired, the hourly purge deletes the object and the link is refused.
    await session.execute(
        text("UPDATE export_jobs SET expires_at = now() - interval '1 minute' WHERE id = :id"),
        {"id": export_id},
    )
    await session.commit()
    assert await jobs.purge_exports(s3_ctx) == 1
    with pytest.raises(ClientError) as gone:
        bucket.head_object(Bucket=BUCKET, Key=key)
    assert gone.value.response["Error"]["Code"] in ("404", "NoSuchKey")
    refused = await s3_client.get(status["download_url"], headers=admin, follow_redirects=False)
    assert refused.status_code == 404
    assert await jobs.purge_exports(s3_ctx) == 0  # nothing left to purge
    status = (await s3_client.get(f"/api/analytics/exports/{export_id}", headers=admin)).json()
    assert status["status"] == "expired" and status["download_url"] is None


async def test_the_export_file_expiry_falls_inside_the_presigned_life(s3_settings):
    """A link never outlives its export by more than the 60-second floor, and is never
    longer than 15 minutes."""
    store = exports.export_store(s3_settings)
    now = dt.datetime.now(dt.UTC)
    for left, expected in (
        (dt.timedelta(hours=5), 900),
        (dt.timedelta(minutes=5), 300),
        (dt.timedelta(seconds=10), 60),
    ):
        found = exports.stored_file(store, "exports/x.csv", "x.csv", now + left)
        assert found.path is None and found.url is not None
        seconds = int(dict(parse_qsl(urlsplit(found.url).query))["X-Amz-Expires"])
        assert expected - 2 <= seconds <= expected
