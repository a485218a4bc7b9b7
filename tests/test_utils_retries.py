"""Tests of the shared retry helpers (tenacity wait strategy, predicates, Retry-After)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import pytest
import requests
import tenacity
import urllib3

from airflow_provider_clarify.utils.retries import (
    async_retrying,
    is_aiohttp_transient,
    is_requests_transient,
    is_retryable_status,
    is_unreceived,
    parse_retry_after,
    retry_after_from_exception,
    retrying,
    wait_retry_after_or_backoff,
)


class _Throttled(Exception):
    def __init__(self, retry_after: float | None) -> None:
        super().__init__("throttled")
        self.retry_after = retry_after


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, False),
        (400, False),
        (401, False),
        (404, False),
        (408, True),
        (429, True),
        (500, True),
        (501, False),
        (502, True),
        (503, True),
        (504, True),
        (505, False),
        (599, True),
    ],
)
def test_is_retryable_status(status: int, expected: bool) -> None:
    assert is_retryable_status(status) is expected


def test_requests_predicate() -> None:
    assert is_requests_transient(requests.exceptions.ConnectionError("reset"))
    assert is_requests_transient(requests.exceptions.ReadTimeout("slow"))
    assert is_requests_transient(requests.exceptions.ConnectTimeout("slow"))
    assert is_requests_transient(requests.exceptions.ChunkedEncodingError("cut"))
    assert not is_requests_transient(requests.exceptions.SSLError("bad cert"))
    assert not is_requests_transient(requests.exceptions.InvalidURL("x"))
    assert not is_requests_transient(requests.exceptions.TooManyRedirects("x"))
    assert not is_requests_transient(ValueError("x"))


class _HTTPFailure(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def _wrapped(reason: Exception) -> requests.ConnectionError:
    # What requests raises: its ConnectionError around urllib3's MaxRetryError around the last error.
    return requests.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/x", reason))  # type: ignore[arg-type]


def test_unreceived_only_when_the_request_cannot_have_arrived() -> None:
    refused = urllib3.exceptions.NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
    connect_timeout = urllib3.exceptions.ConnectTimeoutError(None, "connect timed out")
    assert is_unreceived(_wrapped(refused))
    assert is_unreceived(_wrapped(connect_timeout))
    assert is_unreceived(requests.ConnectTimeout())
    for status in (408, 425, 503):
        assert is_unreceived(_HTTPFailure(status)), status
    reset = urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError())
    assert not is_unreceived(_wrapped(reset))
    assert not is_unreceived(requests.ConnectionError("Connection aborted."))
    assert not is_unreceived(requests.ReadTimeout())
    assert not is_unreceived(requests.exceptions.ChunkedEncodingError())
    assert not is_unreceived(requests.exceptions.SSLError(connect_timeout))
    for status in (200, 400, 429, 500, 502, 504):
        assert not is_unreceived(_HTTPFailure(status)), status
    response = requests.Response()
    response.status_code = 503
    assert is_unreceived(requests.HTTPError(response=response))
    assert not is_unreceived(ValueError("no status"))


def test_aiohttp_predicate() -> None:
    assert is_aiohttp_transient(aiohttp.ServerDisconnectedError())
    assert is_aiohttp_transient(aiohttp.ClientPayloadError("cut"))
    assert is_aiohttp_transient(TimeoutError())
    assert is_aiohttp_transient(TimeoutError())
    assert is_aiohttp_transient(aiohttp.ClientOSError(104, "reset"))
    assert not is_aiohttp_transient(aiohttp.InvalidURL("x"))
    assert not is_aiohttp_transient(ValueError("x"))


def test_parse_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, now=now.timestamp()) == 30.0
    past = format_datetime(now - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(past, now=now.timestamp()) == 0.0


def test_retry_after_from_exception_sources() -> None:
    assert retry_after_from_exception(_Throttled(2)) == 2.0
    assert retry_after_from_exception(_Throttled(None)) is None
    response = requests.Response()
    response.headers["Retry-After"] = "7"
    assert retry_after_from_exception(requests.HTTPError(response=response)) == 7.0
    aio = aiohttp.ClientResponseError(None, (), status=429, headers={"Retry-After": "5"})  # type: ignore[arg-type]
    assert retry_after_from_exception(aio) == 5.0
    assert retry_after_from_exception(ValueError("x")) is None
    assert retry_after_from_exception(None) is None


def _state_after(exc: BaseException, attempt: int) -> tenacity.RetryCallState:
    state = tenacity.RetryCallState(retry_object=tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


def test_wait_honours_retry_after_capped() -> None:
    wait = wait_retry_after_or_backoff(initial=1, maximum=8, max_retry_after=10)
    assert wait(_state_after(_Throttled(4), 1)) == 4.0
    assert wait(_state_after(_Throttled(600), 1)) == 10.0


def test_wait_backoff_is_exponential_jittered_and_capped() -> None:
    wait = wait_retry_after_or_backoff(initial=1, maximum=8)
    for attempt, cap in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 8), (40, 8)]:
        samples = [wait(_state_after(ConnectionError("x"), attempt)) for _ in range(200)]
        assert all(cap / 2 <= s <= cap for s in samples), (attempt, min(samples), max(samples))
        assert len(set(samples)) > 1  # jitter
    with pytest.raises(ValueError, match="negative"):
        wait_retry_after_or_backoff(initial=-1)


def test_retrying_retries_matching_and_reraises(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("boom")
        return "ok"

    retry = retrying(
        lambda e: isinstance(e, ConnectionError),
        attempts=3,
        wait=tenacity.wait_none(),
        logger=logging.getLogger("t"),
        what="thing",
    )
    with caplog.at_level(logging.WARNING, logger="t"):
        assert retry(flaky) == "ok"
    assert len(calls) == 3
    assert [r.getMessage().startswith("thing failed (attempt") for r in caplog.records] == [True, True]

    def always() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError, match="down"):
        retrying(lambda e: True, attempts=2, wait=tenacity.wait_none())(always)

    other: list[int] = []

    def wrong() -> None:
        other.append(1)
        raise KeyError("no")

    with pytest.raises(KeyError):
        retrying(lambda e: isinstance(e, ConnectionError), attempts=5, wait=tenacity.wait_none())(wrong)
    assert len(other) == 1
    with pytest.raises(ValueError, match="attempts"):
        retrying(lambda e: True, attempts=0)


async def test_async_retrying() -> None:
    calls: list[int] = []

    async def flaky() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise aiohttp.ServerDisconnectedError()
        return 42

    retry = async_retrying(is_aiohttp_transient, attempts=2, wait=tenacity.wait_none())
    assert await retry(flaky) == 42
    assert len(calls) == 2
