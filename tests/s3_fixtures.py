"""moto's S3 server on loopback, owned by a test: import the fixtures into a test module."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from conftest import free_port, needs_integration_marker
from moto.server import ThreadedMotoServer

TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class MotoServer:
    """moto in a thread of the test process; its state outlives stop() and start()."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._server: ThreadedMotoServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stop()
        # stop() leaves the socket listening: clients would hang instead of being refused.
        inner = getattr(self._server, "_server", None)
        if inner is not None:
            inner.server_close()
        self._server = None

    def stored_keys(self, bucket: str) -> list[str]:
        """The keys in bucket, read from moto's state in this process: works while stopped."""
        from moto.s3.models import s3_backends

        for backends in s3_backends.values():
            for backend in backends.values():
                if bucket in backend.buckets:
                    return sorted(backend.buckets[bucket].keys)
        return []

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def moto_server(request: pytest.FixtureRequest) -> Iterator[MotoServer]:
    needs_integration_marker(request, "moto's S3 server")
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_url(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the test's moto server; this process and its children use it."""
    for name, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "FARM_S3_CHECKSUM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FARM_S3_ENDPOINT_URL", moto_server.url)
    bucket = f"farm-{uuid.uuid4().hex[:12]}"
    moto_server.client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/datasets/test"
