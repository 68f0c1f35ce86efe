"""A real S3 endpoint for tests: moto's threaded server on a free local port, reached over
HTTP by real boto3 calls, with one bucket made."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import boto3
from moto.server import ThreadedMotoServer

from conftest import free_port

REGION = "eu-central-1"


@contextmanager
def s3_server(bucket: str) -> Iterator[str]:
    """Run the server with `bucket` in it; yield its endpoint URL."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        yield endpoint
    finally:
        server.stop()
