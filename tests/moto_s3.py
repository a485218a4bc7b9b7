"""Real S3 for tests: moto's threaded server on 127.0.0.1, reached through an Airflow ``aws`` connection.

In-process ``moto.mock_aws()`` does not work with s3fs/aiobotocore, so the server runs in a thread and
everything talks HTTP to it. One server per test session (Airflow caches the filesystem of a connection id
for the whole process, endpoint included); a fresh bucket per test.

The ``moto_s3`` fixture is registered for every test module by ``conftest.py``.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

CONN_ID = "aws_moto"
REGION = "us-east-1"


@dataclass(frozen=True)
class MotoS3:
    """A bucket on the moto server, and the connection id that reaches it.

    :param endpoint_url: the server, ``http://127.0.0.1:PORT``.
    :param bucket: the test's bucket.
    :param conn_id: the Airflow connection id (``aws_moto``).
    """

    endpoint_url: str
    bucket: str
    conn_id: str = CONN_ID

    def client(self) -> Any:
        """A boto3 S3 client for the server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=REGION)

    def keys(self) -> list[str]:
        """Every key in the bucket, sorted."""
        answer = self.client().list_objects_v2(Bucket=self.bucket)
        return sorted(item["Key"] for item in answer.get("Contents", []))

    def read(self, key: str) -> bytes:
        """An object's bytes.

        :param key: the object key.
        """
        return bytes(self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def put(self, key: str, data: bytes) -> None:
        """Write an object directly (not through Airflow).

        :param key: the object key.
        :param data: its bytes.
        """
        self.client().put_object(Bucket=self.bucket, Key=key, Body=data)

    def pending_uploads(self) -> list[str]:
        """Keys of multipart uploads started and neither completed nor aborted."""
        answer = self.client().list_multipart_uploads(Bucket=self.bucket)
        return [upload["Key"] for upload in answer.get("Uploads", [])]


@pytest.fixture(scope="session", name="moto_endpoint")
def moto_endpoint_fixture() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 for the whole session; yields its URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(name="moto_s3")
def moto_s3_fixture(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> MotoS3:
    """A fresh bucket on the moto server; connection ``aws_moto`` points at it, dummy AWS credentials set."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": moto_endpoint, "region_name": REGION},
            }
        ),
    )
    store = MotoS3(endpoint_url=moto_endpoint, bucket=f"clarity-test-{secrets.token_hex(4)}")
    store.client().create_bucket(Bucket=store.bucket)
    return store
