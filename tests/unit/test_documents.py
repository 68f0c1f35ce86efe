"""Storage backends without a network: the fast S3 presigner against botocore's own, the
disk store's signed URLs (tampering, expiry, keys), and type sniffing by content."""

import dataclasses
import datetime as dt
import time
from urllib.parse import parse_qsl, urlsplit

import botocore.credentials
import pytest

from app import storage
from app.records.documents import (
    FOLDER,
    URL_PATH,
    content_disposition,
    download_name,
    new_key,
)
from app.records.records import sniff
from app.settings import load_settings
from app.storage import URL_SECONDS, DiskStore, S3Store, valid_key

BASE = load_settings(
    {"DATABASE_URL": "postgresql://x@h/db", "REDIS_URL": "redis://h", "SECRET_KEY": "k" * 40}
)


def s3_settings(**changes):
    return dataclasses.replace(
        BASE,
        s3_bucket="medbook-docs",
        s3_access_key_id="AKIDEXAMPLE",
        s3_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        **changes,
    )


@pytest.mark.parametrize(
    ("region", "endpoint", "token"),
    [
        ("us-east-1", None, None),  # AWS, virtual-hosted global endpoint
        ("eu-central-1", None, None),  # AWS, regional endpoint
        ("eu-west-2", None, "session/token+=="),  # temporary credentials (STS)
        ("us-east-1", "http://127.0.0.1:9000", None),  # S3-compatible store, path style
    ],
)
@pytest.mark.parametrize(
    "key", ["patients/12/0f3a9c.pdf", "patients/7/a b+c~é.png", "scale/records/00000001.pdf"]
)
def test_fast_presigner_signs_exactly_like_botocore(region, endpoint, token, key):
    store = S3Store(s3_settings(s3_region=region, s3_endpoint_url=endpoint))
    if token:
        creds = botocore.credentials.Credentials("AKIDEXAMPLE", "secret-of-the-session", token)
        store.presigner.credentials = creds
        store.client._request_signer._credentials = creds  # botocore signs with the same
    reference = store.client.generate_presigned_url(
        "get_object", Params={"Bucket": "medbook-docs", "Key": key}, ExpiresIn=URL_SECONDS
    )
    params = dict(parse_qsl(urlsplit(reference).query))
    at = dt.datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    (ours,) = store.presigner.urls([key], URL_SECONDS, at)
    # Same endpoint, path and every signed parameter, the signature included; botocore
    # only places the security token elsewhere in the query string.
    assert urlsplit(ours)._replace(query="") == urlsplit(reference)._replace(query="")
    assert dict(parse_qsl(urlsplit(ours).query)) == params
    assert int(params["X-Amz-Expires"]) <= 15 * 60


@pytest.mark.parametrize(
    ("region", "endpoint"), [("eu-central-1", None), ("us-east-1", "http://127.0.0.1:9000")]
)
def test_fast_presigner_signs_a_download_name_like_botocore(region, endpoint):
    store = S3Store(s3_settings(s3_region=region, s3_endpoint_url=endpoint))
    key = "patients/12/0f3a9c.pdf"
    disposition = content_disposition(download_name("Befund März", "lab_result", "application/pdf"))
    reference = store.client.generate_presigned_url(
        "get_object",
        Params={"Bucket": "medbook-docs", "Key": key, "ResponseContentDisposition": disposition},
        ExpiresIn=URL_SECONDS,
    )
    params = dict(parse_qsl(urlsplit(reference).query))
    at = dt.datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    (ours,) = store.presigner.urls([key], URL_SECONDS, at, [disposition])
    assert dict(parse_qsl(urlsplit(ours).query)) == params  # the signature included
    assert params["response-content-disposition"] == disposition


@pytest.mark.parametrize(
    ("title", "record_type", "content_type", "name"),
    [
        ("Blood panel", "lab_result", "application/pdf", "Blood panel (lab result).pdf"),
        ("Knee MRI, left", "imaging", "image/png", "Knee MRI, left (imaging).png"),
        ('a/b\\c: "d"; e', "referral", "image/jpeg", "a b c d e (referral).jpg"),
        ("Röntgen Thorax", "imaging", "image/jpeg", "Röntgen Thorax (imaging).jpg"),
        ("x" * 300, "other", "application/pdf", "x" * 120 + ".pdf"),
    ],
)
def test_a_document_downloads_under_its_title_and_type(title, record_type, content_type, name):
    assert download_name(title, record_type, content_type) == name


def test_the_download_header_names_the_file_for_every_browser():
    assert content_disposition("Röntgen Thorax (imaging).jpg") == (
        'attachment; filename="Rontgen Thorax (imaging).jpg"; '
        "filename*=UTF-8''R%C3%B6ntgen%20Thorax%20%28imaging%29.jpg"
    )


def test_a_list_of_fifty_urls_is_signed_without_botocore_and_one_key_a_day(monkeypatch):
    """What makes a list of download links cheap, asserted without a clock (the time is
    bench/README.md's): no URL goes through botocore's presigner, and the day's signing
    key is derived once (four HMACs), not once per URL or per list."""
    store = S3Store(s3_settings())

    def botocore_presigner(*args: object, **kwargs: object) -> str:
        raise AssertionError("a download URL went through botocore's presigner")

    monkeypatch.setattr(store.client, "generate_presigned_url", botocore_presigner)
    derivations: list[str] = []
    real_sign = storage._sign

    def counted(key: bytes, message: str) -> bytes:
        derivations.append(message)
        return real_sign(key, message)

    monkeypatch.setattr(storage, "_sign", counted)
    keys = [new_key(1, "pdf") for _ in range(50)]
    first = store.urls(keys)
    assert len(derivations) == 4 and derivations[-1] == "aws4_request"
    second = store.urls(keys)
    assert len(derivations) == 4  # the same day: the key is reused
    assert len(set(first)) == 50 and len(set(second)) == 50


def test_disk_urls_verify_and_refuse_tampering_and_expiry(tmp_path):
    store = DiskStore(tmp_path, "s" * 40, URL_PATH)
    key = new_key(3, "pdf")
    now = time.time()
    (url,) = store.urls([key], now=now)
    path, _, query = url.partition("?")
    params = dict(parse_qsl(query))
    assert path == f"/documents/{key}"
    assert int(params["expires"]) == int(now) + URL_SECONDS
    assert store.verify(key, params["expires"], params["sig"], now=now) == "ok"
    tampered = params["sig"][:-1] + ("0" if params["sig"][-1] != "0" else "1")
    assert store.verify(key, params["expires"], tampered, now=now) == "invalid"
    later = str(int(params["expires"]) + 3600)  # a longer life is not the signer's
    assert store.verify(key, later, params["sig"], now=now) == "invalid"
    other = new_key(3, "pdf")
    assert store.verify(other, params["expires"], params["sig"], now=now) == "invalid"
    assert store.verify(key, params["expires"], params["sig"], now=now + URL_SECONDS) == "expired"
    assert store.verify(key, "", "", now=now) == "invalid"
    # Another secret (another installation) signs differently.
    assert (
        DiskStore(tmp_path, "t" * 40, URL_PATH).verify(key, params["expires"], params["sig"])
        == "invalid"
    )


@pytest.mark.parametrize(
    "key",
    [
        "../secret_key",
        "patients/1/../../secret_key.pdf",
        "/etc/passwd.pdf",
        "patients/1/x.exe",
        "patients/1/X.PDF",
        "patients//1.pdf",
        "",
    ],
)
def test_only_our_keys_are_accepted(tmp_path, key):
    store = DiskStore(tmp_path, "s" * 40, URL_PATH)
    assert not valid_key(key)
    with pytest.raises(ValueError):
        store.path(key)
    assert store.verify(key, str(int(time.time()) + 60), store.signature(key, 0)) == "invalid"


async def test_disk_store_round_trip_and_keys(tmp_path):
    store = DiskStore(tmp_path, "s" * 40, URL_PATH)
    key = new_key(9, "png")
    await store.put(key, b"\x89PNG\r\n\x1a\nrest", "image/png")
    assert await store.get(key) == b"\x89PNG\r\n\x1a\nrest"
    assert [k for k, _ in await store.keys(FOLDER)] == [key]
    await store.delete(key)
    await store.delete(key)  # twice is harmless
    assert await store.keys(FOLDER) == []


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"%PDF-1.7\n...", "pdf"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "jpg"),
        (b"GIF89a", None),
        (b"<html>%PDF-", None),
        (b"PK\x03\x04", None),  # a zip (or .docx) named report.pdf
        (b"", None),
    ],
)
def test_type_is_decided_by_content(data, expected):
    assert sniff(data) == expected
