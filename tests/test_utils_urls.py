"""Tests of the base-URL validation and joining helpers."""

from __future__ import annotations

import pytest

from airflow_provider_clarify.utils.urls import (
    is_loopback_host,
    join_url,
    split_conn_id,
    strip_query,
    validate_base_url,
)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("127.0.0.1", True),
        ("127.9.8.7", True),
        ("::1", True),
        ("[::1]", True),
        ("128.0.0.1", False),
        ("api.clarify.io", False),
        ("localhost.evil.com", False),
        ("10.0.0.1", False),
        (None, False),
        ("", False),
    ],
)
def test_is_loopback_host(host: str | None, expected: bool) -> None:
    assert is_loopback_host(host) is expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.clarify.io/v1/", "https://api.clarify.io/v1/"),
        ("https://api.clarify.io/v1", "https://api.clarify.io/v1/"),
        ("HTTPS://api.clarify.io", "https://api.clarify.io/"),
        ("http://127.0.0.1:8080/v1/", "http://127.0.0.1:8080/v1/"),
        ("http://localhost:1234", "http://localhost:1234/"),
        ("http://[::1]:9/x", "http://[::1]:9/x/"),
    ],
)
def test_validate_base_url_accepts(url: str, expected: str) -> None:
    assert validate_base_url(url) == expected


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http://api.clarify.io/v1/", "plain http is allowed only for loopback"),
        ("ftp://api.clarify.io/", "expected an absolute https"),
        ("api.clarify.io/v1/", "expected an absolute https"),
        ("https://user:hunter2@api.clarify.io/", "must not contain credentials"),
        ("https://api.clarify.io/?token=abc", "query string"),
        ("https://api.clarify.io:notaport/", "not a valid URL"),
    ],
)
def test_validate_base_url_rejects_naming_field(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        validate_base_url(url, field="host", conn_id="clarify_default")
    text = str(err.value)
    assert "connection 'clarify_default' field 'host'" in text
    assert "hunter2" not in text
    assert "token=abc" not in text


def test_join_and_strip() -> None:
    assert join_url("https://api.clarify.io/v1/", "rpc") == "https://api.clarify.io/v1/rpc"
    assert (
        join_url("https://api.clarify.io/v1", "/oauth/", "token") == "https://api.clarify.io/v1/oauth/token"
    )
    assert join_url("http://h", "", "v2/report-requests") == "http://h/v2/report-requests"
    assert strip_query("https://b.s3/x.csv.gz?X-Amz-Signature=abc#f") == "https://b.s3/x.csv.gz"


def test_split_conn_id() -> None:
    assert split_conn_id("s3://aws_x@bucket/k/f.csv") == ("s3://bucket/k/f.csv", "aws_x")
    assert split_conn_id("s3://bucket/k") == ("s3://bucket/k", None)
    assert split_conn_id("file:///data/x") == ("file:///data/x", None)
