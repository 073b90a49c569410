"""A real S3-compatible server for tests: moto in server mode on 127.0.0.1 (not a mock of any
client; genq talks to it over HTTP as it would to S3, R2 or MinIO)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
ACCESS_KEY = "testing"
SECRET_KEY = "testing-secret"


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def env(self) -> dict[str, str]:
        """What a genq process needs to reach the server (bucket chosen by the caller)."""
        return {
            "GENQ_S3_ENDPOINT_URL": self.endpoint_url,
            "GENQ_S3_REGION": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }

    def client(self) -> object:
        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        )

    def new_bucket(self) -> str:
        """A fresh, empty bucket."""
        name = f"genq-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
        return name

    def keys(self, bucket: str) -> list[str]:
        """Every key in ``bucket`` (read with boto3, independently of genq's client)."""
        found: list[str] = []
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)  # type: ignore[attr-defined]
        for page in pages:
            found.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(found)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_s3_server() -> Iterator[S3Server]:
    """Start moto's threaded server; stop it afterwards."""
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        server.stop()
