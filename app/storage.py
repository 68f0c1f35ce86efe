"""File storage: an S3 bucket (boto3), or a folder on the local disk in embedded mode.

Records' documents (app/records/documents.py) and CSV exports (app/analytics/exports.py)
both keep their files here, by key (`patients/…`, `exports/…`). Both backends hand out
short-lived download URLs (`URL_SECONDS`, under 15 minutes): S3 pre-signed GET URLs, or app
URLs `{url_path}{key}?expires=&sig=` carrying an HMAC that the app's download route checks
in constant time. Writes and deletes are blocking calls and run in a worker thread;
signing is pure CPU and runs inline because it costs microseconds (docs/records.md has the
measurements behind that).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, quote, urlsplit

from app.settings import Settings

# How long an issued download URL works. The review's pre-signed URLs live an hour; a
# record link is for the consultation in progress, and a reload issues fresh ones.
URL_SECONDS = 600

# Keys are ours (`patients/{id}/{uuid}.pdf`, `exports/{id}.csv`), never a user's file name,
# and only of the kinds of file medbook stores.
_KEY = re.compile(r"^[a-z0-9][a-z0-9_\-]*(/[a-z0-9][a-z0-9_\-]*)*\.(pdf|png|jpg|csv|json|ndjson)$")


def valid_key(key: str) -> bool:
    return bool(_KEY.match(key)) and ".." not in key


class Store(Protocol):
    """What documents and exports need from a storage backend."""

    kind: str

    async def put(self, key: str, data: bytes, content_type: str) -> None: ...

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        """Store a finished local file under `key`; the local file is gone afterwards."""
        ...

    async def get(self, key: str) -> bytes: ...

    async def delete(self, key: str) -> None: ...

    async def keys(self, prefix: str) -> list[tuple[str, dt.datetime]]:
        """Every stored key under `prefix` with its last-modified instant."""
        ...

    def urls(
        self,
        keys: list[str],
        *,
        now: float | None = None,
        issued_to: int | None = None,
        dispositions: list[str] | None = None,
    ) -> list[str]:
        """Download URLs for `keys`, valid for URL_SECONDS from `now` (epoch seconds).

        Args:
            issued_to: the user the URLs are for; the disk store signs it into the URL so
                its download route can audit who downloaded (S3 cannot: its server access
                logs are the trail there, docs/security.md).
            dispositions: the Content-Disposition each download is answered with (S3 signs
                it into the URL; the disk store's download route sets it itself).
        """
        ...


# --- S3 -----------------------------------------------------------------------------------


def _sign(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def _q(value: str) -> str:
    return quote(value, safe="-_.~")


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """Where botocore sends a GET for a key, and the scope it signs it for."""

    prefix: str  # scheme://host/[bucket/] — everything before the key
    host: str
    path_prefix: str
    region: str
    service: str


class FastPresigner:
    """AWS Signature V4 query signing for S3 GETs, equivalent to botocore's presigner.

    botocore's `generate_presigned_url` spends most of its time in its request model,
    event hooks and endpoint resolution, so a list of 50 held the event loop noticeably
    (bench/README.md). The signature itself is four HMACs and a SHA-256: this class learns
    the endpoint and credential scope from one botocore URL at start-up, caches the day's
    signing key and signs in a small fraction of that time. `tests/unit/test_documents.py`
    checks that it produces exactly botocore's URL.
    """

    def __init__(self, probe_url: str, credentials: Any) -> None:
        base, _, query = probe_url.partition("?")
        params = dict(parse_qsl(query))
        scope = params["X-Amz-Credential"].split("/")
        self.endpoint = _Endpoint(
            prefix=base[: -len(_PROBE_KEY)],
            host=urlsplit(base).netloc,
            path_prefix=urlsplit(base).path[: -len(_PROBE_KEY)],
            region=scope[2],
            service=scope[3],
        )
        self.credentials = credentials  # botocore Credentials; refreshable ones refresh
        self._day_key: tuple[str, str, bytes] | None = None

    def _signing_key(self, secret: str, day: str) -> bytes:
        cached = self._day_key
        if cached is not None and cached[0] == secret and cached[1] == day:
            return cached[2]
        k = _sign(("AWS4" + secret).encode(), day)
        k = _sign(k, self.endpoint.region)
        k = _sign(k, self.endpoint.service)
        k = _sign(k, "aws4_request")
        self._day_key = (secret, day, k)
        return k

    def urls(
        self,
        keys: list[str],
        expires_in: int,
        now: dt.datetime,
        dispositions: list[str] | None = None,
    ) -> list[str]:
        """Signed GET URLs for `keys`; the parts shared by a batch are computed once.
        `dispositions`: a `response-content-disposition` per key for S3 to answer with."""
        frozen = self.credentials.get_frozen_credentials()
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        ep = self.endpoint
        scope = f"{day}/{ep.region}/{ep.service}/aws4_request"
        params = {
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Credential": f"{frozen.access_key}/{scope}",
            "X-Amz-Date": stamp,
            "X-Amz-Expires": str(expires_in),
            "X-Amz-SignedHeaders": "host",
        }
        if frozen.token:
            params["X-Amz-Security-Token"] = frozen.token
        query = "&".join(f"{_q(k)}={_q(v)}" for k, v in sorted(params.items()))
        tail = f"\n{query}\nhost:{ep.host}\n\nhost\nUNSIGNED-PAYLOAD"
        head = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n"
        signing_key = self._signing_key(frozen.secret_key, day)
        sha256, new_hmac = hashlib.sha256, hmac.new
        out = []
        for i, key in enumerate(keys):
            quoted = quote(key, safe="/~")
            this_tail, this_query = tail, query
            if dispositions:
                # Sorts after every X-Amz-* name, as the canonical query must.
                this_query = f"{query}&response-content-disposition={_q(dispositions[i])}"
                this_tail = f"\n{this_query}\nhost:{ep.host}\n\nhost\nUNSIGNED-PAYLOAD"
            canonical = f"GET\n{ep.path_prefix}{quoted}{this_tail}"
            to_sign = head + sha256(canonical.encode()).hexdigest()
            signature = new_hmac(signing_key, to_sign.encode(), sha256).hexdigest()
            out.append(f"{ep.prefix}{quoted}?{this_query}&X-Amz-Signature={signature}")
        return out


_PROBE_KEY = "medbook-probe"


class S3Store:
    """Files in an S3 bucket (or an S3-compatible store at `S3_ENDPOINT_URL`).

    One boto3 client per process (`create_store` shares it; a client is slow to build;
    boto3 clients are thread-safe, so the worker threads share it).
    """

    kind = "s3"

    def __init__(self, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        assert settings.s3_bucket
        self.bucket = settings.s3_bucket
        self.sse = settings.s3_sse
        session = boto3.session.Session(
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=settings.s3_secret_access_key,
            region_name=settings.s3_region,
        )
        self.client = session.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            config=Config(
                signature_version="s3v4",
                connect_timeout=5,
                read_timeout=30,
                retries={"max_attempts": 3, "mode": "standard"},
                max_pool_connections=16,
            ),
        )
        credentials = session.get_credentials()
        if credentials is None:
            raise RuntimeError("S3_BUCKET is set but no S3 credentials were found")
        probe = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": _PROBE_KEY}, ExpiresIn=60
        )
        self.presigner = FastPresigner(probe, credentials)

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        extra = {"ServerSideEncryption": self.sse} if self.sse else {}
        await asyncio.to_thread(
            self.client.put_object,
            Bucket=self.bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
            **extra,
        )

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        extra: dict[str, Any] = {"ContentType": content_type}
        if self.sse:
            extra["ServerSideEncryption"] = self.sse
        # upload_file streams from disk, in parts when the file is large.
        await asyncio.to_thread(
            self.client.upload_file, str(path), self.bucket, key, ExtraArgs=extra
        )
        await asyncio.to_thread(path.unlink, missing_ok=True)

    async def get(self, key: str) -> bytes:
        def read() -> bytes:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

        return await asyncio.to_thread(read)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.client.delete_object, Bucket=self.bucket, Key=key)

    async def keys(self, prefix: str) -> list[tuple[str, dt.datetime]]:
        def scan() -> list[tuple[str, dt.datetime]]:
            found = []
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                found += [(o["Key"], o["LastModified"]) for o in page.get("Contents", ())]
            return found

        return await asyncio.to_thread(scan)

    def urls(
        self,
        keys: list[str],
        *,
        now: float | None = None,
        issued_to: int | None = None,
        dispositions: list[str] | None = None,
    ) -> list[str]:
        instant = dt.datetime.fromtimestamp(int(time.time() if now is None else now), dt.UTC)
        return self.presigner.urls(keys, URL_SECONDS, instant, dispositions)

    def download_url(self, key: str, filename: str, seconds: int) -> str:
        """A pre-signed GET that saves the file as `filename` (botocore signs this one:
        the fast presigner signs no response headers)."""
        return str(
            self.client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": key,
                    "ResponseContentDisposition": f'attachment; filename="{filename}"',
                },
                ExpiresIn=seconds,
            )
        )


# --- Local disk ---------------------------------------------------------------------------

Verdict = Literal["ok", "invalid", "expired"]


class DiskStore:
    """Files under a folder (embedded mode); the app serves them at signed URLs under
    `url_path` when it is given."""

    kind = "disk"

    def __init__(self, root: Path, secret_key: str, url_path: str | None = None) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url_path = url_path
        # A key of its own per URL space ("medbook-documents-v1" for /documents/), so a
        # download signature can never stand in for anything else.
        purpose = f"medbook-{(url_path or '').strip('/')}-v1"
        self._key = hmac.new(secret_key.encode(), purpose.encode(), hashlib.sha256).digest()

    def path(self, key: str) -> Path:
        if not valid_key(key):
            raise ValueError("not a storage key")
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError("not a storage key")
        return path

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self.path(key)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            part = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
            with part.open("xb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            part.replace(path)  # a reader sees the whole file or none

        await asyncio.to_thread(write)

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        target = self.path(key)

        def move() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, target)  # a rename when both are on one file system

        await asyncio.to_thread(move)

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self.path(key).read_bytes)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.path(key).unlink, missing_ok=True)

    async def keys(self, prefix: str) -> list[tuple[str, dt.datetime]]:
        def scan() -> list[tuple[str, dt.datetime]]:
            found = []
            for path in self._files(prefix):
                modified = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
                found.append((path.relative_to(self.root).as_posix(), modified))
            return found

        return await asyncio.to_thread(scan)

    def _files(self, prefix: str) -> Iterator[Path]:
        base = self.root / prefix.strip("/")
        if base.exists():
            yield from (p for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))

    def signature(self, key: str, expires: int, issued_to: str = "") -> str:
        message = f"{key}\n{expires}" + (f"\n{issued_to}" if issued_to else "")
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def urls(
        self,
        keys: list[str],
        *,
        now: float | None = None,
        issued_to: int | None = None,
        dispositions: list[str] | None = None,
    ) -> list[str]:
        # `dispositions` are not carried: the download route names the file itself.
        if self.url_path is None:
            raise RuntimeError(f"the app serves no downloads from {self.root}")
        expires = int(time.time() if now is None else now) + URL_SECONDS
        user = "" if issued_to is None else str(issued_to)
        tail = f"&u={user}" if user else ""
        out = []
        for key in keys:
            sig = self.signature(key, expires, user)
            out.append(f"{self.url_path}{quote(key, safe='/')}?expires={expires}{tail}&sig={sig}")
        return out

    def verify(
        self, key: str, expires: str, sig: str, *, issued_to: str = "", now: float | None = None
    ) -> Verdict:
        """Check a download URL: the signature (over key, expiry and the user it was issued
        to, when it names one) in constant time, then the expiry.

        A bad signature says nothing more than "invalid"; only a URL this app issued can
        be told apart as expired.
        """
        if not valid_key(key) or not expires.isdigit() or len(expires) > 12:
            return "invalid"
        if issued_to and (not issued_to.isdigit() or len(issued_to) > 19):
            return "invalid"
        expected = self.signature(key, int(expires), issued_to)
        if not hmac.compare_digest(expected.encode(), sig.encode()):
            return "invalid"
        if int(expires) <= (time.time() if now is None else now):
            return "expired"
        return "ok"


# The S3 stores of this process, by configuration: one boto3 client each, shared by
# documents and exports (a client is slow to build).
_S3_STORES: dict[tuple[str | None, ...], S3Store] = {}


def create_store(settings: Settings, folder: Path, url_path: str | None = None) -> Store:
    """The backend the settings choose: the S3 bucket when S3_BUCKET is set (one store and
    client per process, whoever asks), else `folder` on the local disk.

    Args:
        url_path: where the app serves signed downloads of `folder` (disk only).
    """
    if not settings.s3_bucket:
        return DiskStore(folder, settings.secret_key, url_path)
    config = (
        settings.s3_bucket,
        settings.s3_region,
        settings.s3_endpoint_url,
        settings.s3_access_key_id,
        settings.s3_secret_access_key,
        settings.s3_sse,
    )
    store = _S3_STORES.get(config)
    if store is None:
        store = _S3_STORES[config] = S3Store(settings)
    return store
