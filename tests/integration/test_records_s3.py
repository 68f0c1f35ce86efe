"""The S3 backend over real HTTP: moto's threaded server, real boto3 calls, documents
fetched back through the pre-signed URLs the API hands out."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import time
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from app.records.documents import FOLDER, content_disposition
from app.services import Services
from app.storage import URL_SECONDS, S3Store
from app.web.asgi import create_app
from db.models import MedicalRecord
from tests.integration.s3_server import s3_server
from tests.integration.test_records import PDF, PNG, add_appointment, upload
from tests.integration.world import make_world

BUCKET = "medbook-records-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    with s3_server(BUCKET) as endpoint:
        yield endpoint


@pytest.fixture
async def s3_client(db, redis, settings, s3_endpoint):
    s3 = dataclasses.replace(
        settings,
        s3_bucket=BUCKET,
        s3_region="eu-central-1",
        s3_endpoint_url=s3_endpoint,
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        s3_sse="AES256",
    )
    async with AsyncTestClient(app=create_app(s3)) as client:
        yield client


async def test_upload_to_s3_and_download_through_presigned_urls(s3_client, session, settings):
    store = Services.of(s3_client.app).documents
    assert isinstance(store, S3Store)
    world = await make_world(session, settings.secret_key, patients=1)
    patient = world.patients[0]
    await add_appointment(session, world, patient, "booked", 9)
    doctor = world.headers("doctor")
    for data, title in ((PDF, "Referral"), (PNG, "Skin photo")):
        created = await upload(s3_client, doctor, patient, data=data, title=title)
        assert created.status_code == 201, created.text

    listed = (await s3_client.get(f"/api/patients/{patient}/records", headers=doctor)).json()
    assert [r["title"] for r in listed["records"]] == ["Skin photo", "Referral"]
    async with httpx.AsyncClient() as http:  # the browser's side: no credentials at all
        for record, data in zip(listed["records"], (PNG, PDF), strict=True):
            url = record["document_url"]
            params = dict(parse_qsl(urlsplit(url).query))
            assert int(params["X-Amz-Expires"]) <= 15 * 60
            assert url.startswith(f"{store.presigner.endpoint.prefix}patients/{patient}/")
            got = await http.get(url)
            assert got.status_code == 200, got.text
            assert got.content == data
            assert got.headers["content-type"] == record["content_type"]
            assert hashlib.sha256(got.content).hexdigest() == hashlib.sha256(data).hexdigest()

    # Stored with the server-side encryption the settings ask for, under our key scheme.
    keys = (await session.scalars(select(MedicalRecord.storage_key))).all()
    head = store.client.head_object(Bucket=BUCKET, Key=keys[0])
    assert head["ServerSideEncryption"] == "AES256"
    assert sorted(k for k, _ in await store.keys(FOLDER)) == sorted(keys)


async def test_presigned_urls_carry_their_issue_time_and_life(s3_client, session, settings):
    """moto's server does not check query signatures or expiry (its IAM checks read only
    the Authorization header), so refusal itself cannot be shown here; S3 refuses with 403
    "Request has expired" once X-Amz-Date + X-Amz-Expires has passed. What we can show:
    every URL states a life of at most 15 minutes from the moment it was issued, and is
    signed exactly as botocore signs it (next test and tests/unit/test_documents.py)."""
    store = Services.of(s3_client.app).documents
    world = await make_world(session, settings.secret_key, patients=1)
    await add_appointment(session, world, world.patients[0], "completed", 9)
    await upload(s3_client, world.headers("doctor"), world.patients[0])
    key = await session.scalar(select(MedicalRecord.storage_key))
    issued = time.time() - URL_SECONDS - 5
    (old,) = store.urls([key], now=issued)
    params = dict(parse_qsl(urlsplit(old).query))
    signed_at = dt.datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    assert abs(signed_at.timestamp() - issued) < 1
    assert signed_at.timestamp() + int(params["X-Amz-Expires"]) < time.time()  # S3: expired
    listed = await s3_client.get(
        f"/api/patients/{world.patients[0]}/records", headers=world.headers("doctor")
    )
    (record,) = listed.json()["records"]
    fresh = dict(parse_qsl(urlsplit(record["document_url"]).query))
    fresh_at = dt.datetime.strptime(fresh["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    assert abs(fresh_at.timestamp() - time.time()) < 5
    assert int(fresh["X-Amz-Expires"]) == URL_SECONDS <= 15 * 60


async def test_one_client_per_process_and_urls_match_botocore(s3_client, s3_endpoint):
    store = Services.of(s3_client.app).documents
    assert Services.of(s3_client.app).documents is store  # made once, in the lifespan
    key = "patients/1/0123456789abcdef0123456789abcdef.pdf"
    reference = store.client.generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=URL_SECONDS
    )
    params = dict(parse_qsl(urlsplit(reference).query))
    at = dt.datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    (ours,) = store.presigner.urls([key], URL_SECONDS, at)
    assert ours == reference


async def test_failed_row_deletes_the_s3_object(s3_client, session, settings, engine):
    from sqlalchemy import text

    from app.access.identity import Principal
    from app.records import records

    store = Services.of(s3_client.app).documents
    world = await make_world(session, settings.secret_key, patients=1)
    await add_appointment(session, world, world.patients[0], "booked", 9)
    before = await store.keys(FOLDER)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE FUNCTION refuse_s3_record() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'row refused'; END $$"
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER refuse_s3_record BEFORE INSERT ON medical_records "
                "FOR EACH ROW EXECUTE FUNCTION refuse_s3_record()"
            )
        )
    try:
        actor = Principal(
            id=world.users["doctor"].id,
            email="doc@t.test",
            role="doctor",
            doctor_id=world.doctor_id,
        )
        with pytest.raises(Exception, match="row refused"):
            await records.upload(
                session,
                store,
                actor,
                world.patients[0],
                data=PDF,
                record_type="note",
                title="x",
                max_bytes=1 << 20,
                effects=Services.of(s3_client.app).effects,
            )
        assert await store.keys(FOLDER) == before
    finally:
        await session.rollback()
        async with engine.begin() as conn:
            await conn.execute(text("DROP TRIGGER refuse_s3_record ON medical_records"))
            await conn.execute(text("DROP FUNCTION refuse_s3_record()"))


async def test_an_s3_download_is_named_by_title_and_type(s3_client, session, settings):
    world = await make_world(session, settings.secret_key, patients=1)
    patient = world.patients[0]
    await add_appointment(session, world, patient, "booked", 9)
    doctor = world.headers("doctor")
    created = await upload(
        s3_client, doctor, patient, record_type="imaging", title="Röntgen Thorax"
    )
    assert created.status_code == 201, created.text
    listed = (await s3_client.get(f"/api/patients/{patient}/records", headers=doctor)).json()
    async with httpx.AsyncClient() as http:
        got = await http.get(listed["records"][0]["document_url"])
    assert got.status_code == 200 and got.content == PDF
    name = "Röntgen Thorax (imaging).pdf"
    assert got.headers["content-disposition"] == content_disposition(name)
