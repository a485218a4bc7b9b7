"""ClarifyHook against the Clarify sandbox over real HTTP (127.0.0.1)."""

from __future__ import annotations

import base64
import copy
import itertools
import json
import logging
import socket
import threading
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest

import airflow_provider_clarify.hooks.clarify as clarify_module
from airflow_provider_clarify.exceptions import ClarifyRPCError
from airflow_provider_clarify.hooks.clarify import ClarifyHook
from airflow_provider_clarify.testing.clarify import ClarifySandbox
from airflow_provider_clarify.utils.frames import Frame, to_frame
from airflow_provider_clarify.utils.payload import insert_requests
from airflow_provider_clarify.utils.signals import HASH_ANNOTATION

if TYPE_CHECKING:
    from collections.abc import Iterator

T0 = datetime(2024, 3, 1, tzinfo=UTC)
MiB = 1024 * 1024


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[ClarifySandbox]:
    """A Clarify sandbox without server-side throttling; ``clarify_default`` uses Basic auth."""
    with ClarifySandbox(rate_limit=None) as server:
        monkeypatch.setenv("AIRFLOW_CONN_CLARIFY_DEFAULT", server.connection_json("basic"))
        yield server


def fast_hook(**kwargs: Any) -> ClarifyHook:
    """A hook without pacing and with tiny backoffs (for tests that are about something else)."""
    options: dict[str, Any] = {"requests_per_second": None, "retry_delay": 0.01, "max_retry_delay": 0.05}
    options.update(kwargs)
    return ClarifyHook(**options)


def small_frame(keys: tuple[str, ...] = ("a", "b"), n: int = 5) -> pd.DataFrame:
    index = pd.date_range(T0, periods=n, freq="min")
    return pd.DataFrame({k: np.arange(n, dtype=float) + i for i, k in enumerate(keys)}, index=index)


def stored(sandbox: ClarifySandbox, df: pd.DataFrame) -> bool:
    for key in df.columns:
        expected = {t.to_pydatetime(): float(v) for t, v in df[key].items() if not np.isnan(v)}
        if sandbox.points(key) != expected:
            return False
    return True


def inserts(sandbox: ClarifySandbox) -> list[Any]:
    return sandbox.rpc_calls("integration.insert")


# -- authentication -----------------------------------------------------------------------------------
@pytest.mark.parametrize("auth", ["basic", "oauth", "credentials"])
def test_insert_with_each_authentication(
    sandbox: ClarifySandbox, monkeypatch: pytest.MonkeyPatch, auth: str
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_CLARIFY_DEFAULT", sandbox.connection_json(auth))  # type: ignore[arg-type]
    hook = fast_hook()
    df = small_frame()
    result = hook.insert(df)
    assert set(result) == {"a", "b"}
    assert result["a"] == {"id": sandbox.signal("a")["id"], "created": True}
    assert stored(sandbox, df)
    assert hook.insert(df)["a"]["created"] is False
    headers = [r.headers["Authorization"].split()[0] for r in sandbox.rpc_calls()]
    assert set(headers) == {"Basic" if auth == "basic" else "Bearer"}
    assert sandbox.token_requests == (0 if auth == "basic" else 1)  # the token is cached
    assert all(r.headers["X-API-Version"] == "1.1" for r in sandbox.rpc_calls())


def test_credentials_file_as_json_string(sandbox: ClarifySandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = sandbox.connection("credentials")
    conn["extra"]["credentials"] = json.dumps(conn["extra"]["credentials"])
    monkeypatch.setenv("AIRFLOW_CONN_CLARIFY_DEFAULT", json.dumps(conn))
    hook = fast_hook()
    assert hook.settings.auth == "oauth"
    assert hook.settings.api_url == sandbox.url
    assert hook.test_connection()[0] is True


def before_post(hook: ClarifyHook, number: int, action: Any) -> None:
    """Run ``action`` just before the hook's ``number``-th HTTP request (on the thread that sends it)."""
    post_once = hook._post_once
    posts = itertools.count(1)

    def post(body: bytes) -> Any:
        if next(posts) == number:
            action()
        return post_once(body)

    hook._post_once = post  # type: ignore[method-assign]


def test_token_expiry_mid_run_gets_one_new_token(
    sandbox: ClarifySandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_CLARIFY_DEFAULT", sandbox.connection_json("oauth"))
    df = small_frame(("a",), n=3000)
    hook = fast_hook(max_request_bytes=16 * 1024)
    before_post(hook, 3, sandbox.expire_tokens)  # requests 1 and 2 are done; the token dies before request 3
    hook.insert(df)
    statuses = [r.status for r in sandbox.rpc_calls()]  # a 401 is answered before the method is read
    assert statuses.count(401) == 1
    assert statuses[2] == 401
    assert sandbox.token_requests == 2
    assert len([s for s in statuses if s == 200]) >= 4
    assert stored(sandbox, df)


def test_token_is_renewed_before_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    with ClarifySandbox(rate_limit=None, token_ttl=2.0) as server:
        monkeypatch.setenv("AIRFLOW_CONN_CLARIFY_DEFAULT", server.connection_json("oauth"))
        hook = ClarifyHook(requests_per_second=2.0, max_request_bytes=8 * 1024)
        df = small_frame(("a",), n=3000)
        hook.insert(df)
        assert len(server.rpc_calls()) >= 8  # paced at 2/s: the run outlives two 2 s tokens
        assert server.token_requests >= 3
        assert all(r.status == 200 for r in server.rpc_calls())  # renewed ahead of time: no 401
        assert stored(server, df)


def test_wrong_password_fails_at_once(sandbox: ClarifySandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = sandbox.connection("basic") | {"password": "wrong-password-123"}
    monkeypatch.setenv("AIRFLOW_CONN_CLARIFY_DEFAULT", json.dumps(conn))
    with pytest.raises(ClarifyRPCError) as err:
        fast_hook().insert(small_frame())
    assert err.value.code == 401
    assert len(sandbox.rpc_calls()) == 1


def test_wrong_client_secret_fails_at_once(sandbox: ClarifySandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = sandbox.connection("oauth") | {"password": "not-the-client-secret"}
    monkeypatch.setenv("AIRFLOW_CONN_CLARIFY_DEFAULT", json.dumps(conn))
    with pytest.raises(ClarifyRPCError) as err:
        fast_hook().insert(small_frame())
    assert err.value.code == 401
    assert "invalid_client" in str(err.value)
    assert sandbox.token_requests == 1
    assert sandbox.rpc_calls() == []


@pytest.mark.parametrize(
    ("conn", "message"),
    [
        ({"host": "http://api.clarify.io/v1/"}, r"field 'host': plain http is allowed only for loopback"),
        ({"login": "NOT-AN-ID"}, r"field 'login' must be a Clarify integration id"),
        ({"password": None}, r"field 'password' is empty"),
        ({"extra": {"timeout": "soon"}}, r"extra 'timeout' must be a number"),
        ({"extra": {"credentials": "{not json"}}, r"extra 'credentials' is not valid JSON"),
        ({"extra": {"credentials": {"apiUrl": "x"}}}, r"must be Clarify's credentials file"),
    ],
)
def test_bad_connections_are_rejected_before_any_request(
    sandbox: ClarifySandbox, monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any], message: str
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_CLARIFY_DEFAULT", json.dumps(sandbox.connection("basic") | conn))
    with pytest.raises(ValueError, match=message):
        fast_hook().insert(small_frame())
    assert sandbox.requests == []


def test_hook_init_does_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_CLARIFY_DEFAULT", raising=False)
    hook = ClarifyHook("does_not_exist")  # nothing is looked up yet
    assert hook.clarify_conn_id == "does_not_exist"
    ok, message = hook.test_connection()
    assert ok is False
    assert "does_not_exist" in message


def test_test_connection(sandbox: ClarifySandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    ok, message = fast_hook().test_connection()
    assert ok is True
    assert sandbox.integration_id in message
    assert sandbox.signals() == {}  # cheap and without side effects
    conn = sandbox.connection("basic") | {"password": "wrong-password-123"}
    monkeypatch.setenv("AIRFLOW_CONN_CLARIFY_DEFAULT", json.dumps(conn))
    ok, message = fast_hook().test_connection()
    assert ok is False
    assert "401" in message
    assert "wrong-password-123" not in message
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conn = sandbox.connection("basic") | {"host": f"http://127.0.0.1:{port}/v1/"}
    monkeypatch.setenv("AIRFLOW_CONN_CLARIFY_DEFAULT", json.dumps(conn))
    ok, message = fast_hook(retry_limit=1).test_connection()
    assert ok is False
    assert "ConnectionError" in message


def test_get_conn_is_one_session(sandbox: ClarifySandbox) -> None:
    hook = fast_hook()
    session = hook.get_conn()
    assert session is hook.get_conn()
    hook.insert(small_frame())
    hook.save_signals({"a": {"name": "A"}})
    assert hook.get_conn() is session
    assert session.headers["Content-Type"] == "application/json"


# -- big frames, budget, pacing, grouping -------------------------------------------------------------
def test_twenty_megabyte_frame_is_split_and_stored_exactly(sandbox: ClarifySandbox) -> None:
    rng = np.random.default_rng(11)
    n = 110_000
    jitter = rng.integers(0, 999_999, n)  # microsecond timestamps
    index = pd.DatetimeIndex(pd.Timestamp(T0) + pd.to_timedelta(np.arange(n) * 1_000_000 + jitter, unit="us"))
    df = pd.DataFrame({f"site-{i}.pm2_5": rng.normal(12, 4, n) for i in range(10)}, index=index)
    df.iloc[rng.random(n) < 0.01, 3] = np.nan
    hook = fast_hook()
    result = hook.insert(df)
    calls = inserts(sandbox)
    sizes = [r.body_bytes for r in calls]
    assert sum(sizes) > 20 * 1000 * 1000
    assert len(calls) >= 5
    assert all(size <= 4 * MiB for size in sizes)
    assert all(r.status == 200 for r in calls)
    assert set(result) == set(df.columns)
    for key in df.columns:  # values and timestamps exactly, to the microsecond
        expected = {t.to_pydatetime(): float(v) for t, v in df[key].items() if not np.isnan(v)}
        assert sandbox.points(key) == expected, key


def test_pacing_default_one_request_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    with ClarifySandbox() as server:  # the sandbox throttles at 1/s too, like Clarify
        monkeypatch.setenv("AIRFLOW_CONN_CLARIFY_DEFAULT", server.connection_json())
        hook = ClarifyHook(max_request_bytes=8 * 1024)
        assert hook.requests_per_second == 1.0
        df = small_frame(("a",), n=1000)
        hook.insert(df)
        arrivals = [r.received_at for r in server.rpc_calls("integration.insert")]
        assert len(arrivals) >= 4
        gaps = np.diff(arrivals)
        assert (gaps >= 0.95).all(), gaps
        queued = [r.info.get("queued", 0.0) for r in server.rpc_calls()]
        assert max(queued) < 0.1  # the server hardly had to throttle: the client kept the pace
        assert stored(server, df)


def test_sparse_series_go_in_their_own_requests_without_null_padding(sandbox: ClarifySandbox) -> None:
    index = pd.date_range(T0, periods=24 * 60, freq="min")
    dense = pd.Series(np.arange(len(index)) / 3, index=index)
    hourly = pd.Series(np.nan, index=index)
    hourly.iloc[::60] = np.arange(24)
    df = pd.DataFrame({"dense": dense, "hourly": hourly})
    fast_hook().insert(df)
    calls = inserts(sandbox)
    assert len(calls) == 2
    for call in calls:  # every cell sent is a value: no nulls at all
        assert call.info["points"] == call.info["times"] * call.info["series"]
    assert sorted(c.info["times"] for c in calls) == [24, 24 * 60]
    assert stored(sandbox, df)


# -- retries ------------------------------------------------------------------------------------------
FAULTS = {
    "http-503": lambda s: s.faults.fail_next(2, status=503, path="/v1/rpc"),
    "http-500": lambda s: s.faults.fail_next(1, status=500, path="/v1/rpc"),
    "http-502": lambda s: s.faults.fail_next(1, status=502, path="/v1/rpc"),
    "http-504": lambda s: s.faults.fail_next(1, status=504, path="/v1/rpc"),
    "http-429": lambda s: s.faults.throttle_next(1, retry_after=1, path="/v1/rpc"),
    "reset": lambda s: s.faults.reset_next(2, path="/v1/rpc"),
    "truncated": lambda s: s.faults.truncate_next(1, path="/v1/rpc"),
    "slow": lambda s: s.faults.slow_next(1, delay=2.0, path="/v1/rpc"),
    "rpc-32015": lambda s: s.rpc_error_next(2, code=-32015, message="Try again"),
    "rpc-32603": lambda s: s.rpc_error_next(1, code=-32603, message="Internal error"),
    "rpc-32000": lambda s: s.rpc_error_next(1, code=-32000, message="Server error"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_every_retryable_fault_recovers(sandbox: ClarifySandbox, fault: str) -> None:
    FAULTS[fault](sandbox)
    df = small_frame()
    hook = fast_hook(timeout=0.5)
    assert set(hook.insert(df)) == {"a", "b"}
    assert stored(sandbox, df)
    calls = sandbox.rpc_calls()
    assert len(calls) >= 2
    assert calls[-1].status == 200


def test_retry_after_is_honoured(sandbox: ClarifySandbox) -> None:
    sandbox.faults.throttle_next(1, retry_after=1, path="/v1/rpc")
    fast_hook().insert(small_frame())  # backoff would be 0.01 s; Retry-After says 1 s
    first, second = sandbox.rpc_calls()
    assert first.status == 429
    assert second.received_at - first.received_at >= 0.95


def test_retries_give_up_after_retry_limit(sandbox: ClarifySandbox) -> None:
    sandbox.faults.fail_next(10, status=503, path="/v1/rpc")
    with pytest.raises(ClarifyRPCError) as err:
        fast_hook(retry_limit=2).insert(small_frame())
    assert err.value.code == 503
    assert "nothing was stored" in str(err.value)
    assert len(sandbox.rpc_calls()) == 3


@pytest.mark.parametrize(
    ("inject", "code"),
    [
        (lambda s: s.rpc_error_next(1, code=-32602, message="Invalid params"), -32602),
        (lambda s: s.rpc_error_next(1, code=-32600, message="Invalid request"), -32600),
        (lambda s: s.rpc_error_next(1, code=-32601, message="Method not found"), -32601),
        (lambda s: s.rpc_error_next(1, code=-32003, message="Forbidden"), -32003),
        (lambda s: s.rpc_error_next(1, code=-32700, message="Parse error"), -32700),
        (lambda s: s.faults.fail_next(1, status=400, path="/v1/rpc"), 400),
        (lambda s: s.faults.fail_next(1, status=404, path="/v1/rpc"), 404),
        (lambda s: s.faults.fail_next(1, status=413, path="/v1/rpc"), 413),
    ],
)
def test_non_retryable_errors_fail_at_once(sandbox: ClarifySandbox, inject: Any, code: int) -> None:
    inject(sandbox)
    with pytest.raises(ClarifyRPCError) as err:
        fast_hook().insert(small_frame())
    assert err.value.code == code
    assert len(sandbox.rpc_calls()) == 1
    assert f"code {code}" in str(err.value)
    if code < 0:
        assert err.value.trace  # data.trace, for Clarify support
        assert err.value.trace in str(err.value)


def test_server_validation_error_carries_params_and_trace(sandbox: ClarifySandbox) -> None:
    params = {"integration": sandbox.integration_id, "data": {"times": ["yesterday"], "series": {}}}
    with pytest.raises(ClarifyRPCError) as err:
        fast_hook().rpc("integration.insert", params)
    assert err.value.code == -32602
    assert "data.times[0]" in err.value.params
    assert err.value.trace
    assert err.value.method == "integration.insert"
    assert len(sandbox.rpc_calls()) == 1
    with pytest.raises(ClarifyRPCError) as forbidden:
        fast_hook().insert(small_frame(), integration_id="abcdefghij0123456789")
    assert forbidden.value.code == -32003
    with pytest.raises(ClarifyRPCError) as unknown:
        fast_hook().rpc("integration.nope", {})
    assert unknown.value.code == -32601
    assert len(sandbox.rpc_calls()) == 3


def test_failure_part_way_says_exactly_what_was_stored(sandbox: ClarifySandbox) -> None:
    df = small_frame(("a",), n=3000)
    hook = fast_hook(max_request_bytes=16 * 1024)
    before_post(hook, 3, lambda: sandbox.rpc_error_next(1, code=-32602, message="Invalid params"))
    with pytest.raises(ClarifyRPCError) as err:
        hook.insert(df)
    text = str(err.value)
    calls = inserts(sandbox)
    assert len(calls) == 3  # requests built while request 3 was in flight were never sent
    first_two = sum(c.info["points"] for c in calls[:2])
    assert f"insert request 3 failed; 2 earlier request(s) were stored: {first_two} of 3000 values" in text
    assert "between 2024-03-01T00:00:00Z and" in text
    stored_times = sorted(sandbox.points("a"))
    assert len(stored_times) == first_two
    third_start = (stored_times[-1] + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    assert f"The failed request carried 1 series [a] from {third_start}" in text
    assert "idempotent" in text
    assert err.value.code == -32602
    assert not sender_threads()


# -- pipelined sending --------------------------------------------------------------------------------
def sender_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "clarify-insert-sender"]


def minute_frames(count: int, rows: int) -> list[Frame]:
    """``count`` consecutive frames of ``rows`` minutes with series ``a`` and ``b``."""
    frames = []
    for number in range(count):
        index = pd.date_range(T0 + timedelta(minutes=number * rows), periods=rows, freq="min")
        values = np.arange(rows, dtype=float) + number * rows
        frames.append(to_frame(pd.DataFrame({"a": values, "b": values / 2}, index=index)))
    return frames


def test_pipelined_insert_sends_every_request_once_in_order(sandbox: ClarifySandbox) -> None:
    frames = minute_frames(4, 700)
    hook = fast_hook(max_request_bytes=16 * 1024)
    sent: list[bytes] = []
    post_once = hook._post_once

    def record(body: bytes) -> Any:
        sent.append(body)
        return post_once(body)

    hook._post_once = record  # type: ignore[method-assign]
    summary = hook.insert_frames(iter(frames))
    expected = [
        request.body
        for frame in frames
        for request in insert_requests(frame, integration_id=sandbox.integration_id, max_bytes=16 * 1024)
    ]
    assert len(expected) == 8  # two per frame
    assert sent == expected  # the same bodies, byte for byte, in the same order, each once
    assert summary.requests == len(expected) == len(inserts(sandbox))
    assert summary.points == 4 * 700 * 2 == sum(c.info["points"] for c in inserts(sandbox))
    assert len(sandbox.points("a")) == 4 * 700
    assert not sender_threads()


def test_frame_iterator_error_after_some_requests_names_what_was_stored(sandbox: ClarifySandbox) -> None:
    def frames() -> Iterator[Frame]:
        yield from minute_frames(2, 700)
        raise RuntimeError("the report is truncated")

    with pytest.raises(RuntimeError, match="truncated") as err:
        fast_hook(max_request_bytes=16 * 1024).insert_frames(frames())
    calls = inserts(sandbox)
    assert len(calls) > 2
    assert all(c.status == 200 for c in calls)  # everything built before the error was sent and stored
    points = sum(c.info["points"] for c in calls)
    assert points == 2 * 700 * 2
    assert err.value.__notes__ == [
        f"Before this error {len(calls)} earlier request(s) were stored: {points} of {points} values read so "
        "far (from 2 frames) of 2 series between 2024-03-01T00:00:00Z and 2024-03-01T23:19:00Z."
    ]
    assert not sender_threads()


def test_requests_built_ahead_of_the_sender_are_bounded(
    sandbox: ClarifySandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[int] = []
    ahead: list[int] = []
    original = clarify_module.insert_requests

    def counting(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for request in original(*args, **kwargs):
            built.append(1)
            yield request

    monkeypatch.setattr(clarify_module, "insert_requests", counting)
    hook = fast_hook(max_request_bytes=16 * 1024, requests_per_second=20.0)
    posted = hook._post_once

    def post(body: bytes) -> Any:
        ahead.append(len(built) - len(ahead) - 1)  # built but not yet sent, besides this one
        return posted(body)

    hook._post_once = post  # type: ignore[method-assign]
    summary = hook.insert_frames(minute_frames(12, 700))
    assert summary.requests == len(built) == len(ahead) == 24
    assert max(ahead) <= clarify_module._MAX_WAITING + 1  # the waiting ones and the one being handed over
    assert max(ahead) >= 2  # the caller did build ahead while the sender was busy


def test_a_new_hook_can_be_deep_copied() -> None:
    # Airflow copies tasks, and with them a hook an operator already made: no lock may live on the hook.
    hook = fast_hook(max_request_bytes=16 * 1024)
    assert copy.deepcopy(hook).max_request_bytes == 16 * 1024


class Abandon(BaseException):
    """Like Airflow's task time-out: a BaseException raised in the task's thread."""


def test_base_exception_in_the_caller_abandons_the_waiting_request(sandbox: ClarifySandbox) -> None:
    hook = fast_hook(max_request_bytes=16 * 1024, requests_per_second=2.0)

    def frames() -> Iterator[Frame]:
        yield from minute_frames(1, 1500)  # several requests, paced at 2/s: the sender is still busy
        raise Abandon

    with pytest.raises(Abandon):
        hook.insert_frames(frames())
    assert not sender_threads()
    handed = len(
        list(
            insert_requests(
                minute_frames(1, 1500)[0], integration_id=sandbox.integration_id, max_bytes=16 * 1024
            )
        )
    )
    assert len(inserts(sandbox)) < handed  # the request waiting for its slot was dropped, not sent
    # The hook is usable again afterwards: pacing and retries are not left cancelled.
    assert hook.insert_frames(minute_frames(1, 10)).requests == 1


def test_sender_failure_stops_the_producer(sandbox: ClarifySandbox) -> None:
    pulled: list[int] = []

    def frames() -> Iterator[Frame]:
        for number, frame in enumerate(minute_frames(20, 700), start=1):
            pulled.append(number)
            yield frame

    sandbox.faults.fail_next(1, status=400, path="/v1/rpc")
    with pytest.raises(ClarifyRPCError, match="insert request 1 failed; nothing was stored"):
        fast_hook(max_request_bytes=16 * 1024).insert_frames(frames())
    assert [r.status for r in sandbox.rpc_calls()] == [400]  # the waiting requests were never sent
    assert sandbox.signals() == {}
    # Request 1 in flight, at most 4 waiting and 1 being handed over: 6 requests of 2 per frame.
    assert len(pulled) <= 3
    assert not sender_threads()


# -- bad input ----------------------------------------------------------------------------------------
BAD_INPUTS = {
    "bad key": {"times": [T0], "series": {"bad key": [1.0]}},
    "inf": {"times": [T0, T0 + timedelta(minutes=1)], "series": {"a": [1.0, float("inf")]}},
    "string value": {"times": [T0], "series": {"a": ["1.0"]}},
    "length": {"times": [T0, T0 + timedelta(minutes=1)], "series": {"a": [1.0]}},
    "bad time": {"times": ["not a time"], "series": {"a": [1.0]}},
    "number time": {"times": [1_700_000_000], "series": {"a": [1.0]}},
    "not a frame": [1, 2, 3],
    "dataframe without times": pd.DataFrame({"a": [1.0]}),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
@pytest.mark.parametrize("auth", ["basic", "oauth"])
def test_bad_input_is_rejected_before_any_request(
    sandbox: ClarifySandbox, monkeypatch: pytest.MonkeyPatch, name: str, auth: str
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_CLARIFY_DEFAULT", sandbox.connection_json(auth))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^data: "):
        fast_hook().insert(BAD_INPUTS[name])
    assert sandbox.requests == []  # not even a token request


def test_bad_arguments_are_rejected_before_any_request(sandbox: ClarifySandbox) -> None:
    with pytest.raises(ValueError, match="integration_id must be a Clarify integration id"):
        fast_hook().insert(small_frame(), integration_id="nope")
    with pytest.raises(ValueError, match="max_request_bytes"):
        fast_hook(max_request_bytes=9 * MiB).insert(small_frame())
    with pytest.raises(ValueError, match=r"signals: 'a' field 'sourceType'"):
        fast_hook().save_signals({"a": {"sourceType": "guess"}})
    with pytest.raises(ValueError, match="signals: series key 'a b'"):
        fast_hook().save_signals({"a b": {}})
    assert sandbox.requests == []


# -- saveSignals --------------------------------------------------------------------------------------
def test_save_signals_sends_full_views_and_skips_unchanged(sandbox: ClarifySandbox) -> None:
    hook = fast_hook()
    first = {"a": {"name": "A", "description": "first", "labels": {"site": "1"}, "engUnit": "µg/m³"}}
    result = hook.save_signals(first)
    assert result["a"]["created"] is True
    signal = sandbox.signal("a")
    assert signal["description"] == "first"
    assert signal["labels"] == {"site": ["1"]}
    assert HASH_ANNOTATION in signal["annotations"]
    # unchanged: nothing sent, also from a new hook in the same process
    assert fast_hook().save_signals(first) == {"a": {"skipped": True}}
    assert len(sandbox.rpc_calls("integration.saveSignals")) == 1
    # changed: the full view replaces every attribute (description and labels reset), annotations merge
    hook.save_signals({"a": {"name": "A2", "annotations": {"team": "air"}}, "b": {"name": "B"}})
    signal = sandbox.signal("a")
    assert signal["name"] == "A2"
    assert signal["description"] == ""
    assert signal["labels"] == {}
    assert signal["engUnit"] == ""
    assert signal["annotations"]["team"] == "air"
    assert sandbox.signal("b")["name"] == "B"
    calls = sandbox.rpc_calls("integration.saveSignals")
    assert len(calls) == 2
    assert calls[-1].info["signals"] == 2


def test_save_signals_resends_for_signals_that_an_insert_created(sandbox: ClarifySandbox) -> None:
    hook = fast_hook()
    hook.save_signals({"a": {"name": "A"}})
    hook.insert(small_frame(("a",)))  # already exists: not created
    assert hook.save_signals({"a": {"name": "A"}}) == {"a": {"skipped": True}}
    other = fast_hook()
    other.insert(small_frame(("c",)))  # created by this insert: empty metadata on the server
    assert other.save_signals({"c": {"name": "C"}})["c"]["updated"] is True
    assert sandbox.signal("c")["name"] == "C"


def test_save_signals_create_only(sandbox: ClarifySandbox) -> None:
    hook = fast_hook()
    hook.save_signals({"a": {"name": "A"}})
    result = hook.save_signals({"a": {"name": "changed"}, "n": {"name": "New"}}, create_only=True)
    assert result["a"]["created"] is False
    assert result["n"]["created"] is True
    assert sandbox.signal("a")["name"] == "A"
    assert sandbox.signal("n")["name"] == "New"


# -- secrets ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("auth", ["basic", "oauth", "credentials"])
def test_secrets_never_in_logs_or_errors(
    sandbox: ClarifySandbox,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    auth: str,
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_CLARIFY_DEFAULT", sandbox.connection_json(auth))  # type: ignore[arg-type]
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "requests", "tenacity"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.DEBUG)
    hook = fast_hook()
    messages: list[str] = []
    hook.insert(small_frame())
    hook.save_signals({"a": {"name": "A"}})
    sandbox.faults.fail_next(1, status=503, path="/v1/rpc")
    sandbox.rpc_error_next(1, code=-32015)
    hook.insert(small_frame())
    sandbox.expire_tokens()
    hook.insert(small_frame())
    for bad in (-32602, -32603):
        sandbox.rpc_error_next(6, code=bad)
        with pytest.raises(ClarifyRPCError) as err:
            fast_hook(retry_limit=1).insert(small_frame())
        messages.append(str(err.value))
    messages.append(hook.test_connection()[1])
    wrong = sandbox.connection("oauth" if auth != "basic" else "basic") | {"password": "wrong-secret-value-1"}
    monkeypatch.setenv("AIRFLOW_CONN_CLARIFY_DEFAULT", json.dumps(wrong))
    with pytest.raises(ClarifyRPCError) as err:
        fast_hook().insert(small_frame())
    messages.append(str(err.value))
    messages.append(fast_hook().test_connection()[1])
    secrets = [sandbox.password, sandbox.client_secret, "wrong-secret-value-1"]
    secrets.append(base64.b64encode(f"{sandbox.integration_id}:{sandbox.password}".encode()).decode())
    if hook._token:
        secrets.append(hook._token)
    out, err_out = capfd.readouterr()
    logged = caplog.text + "".join(r.getMessage() for r in caplog.records) + out + err_out
    assert "integration.insert" in out + caplog.text  # the logs were captured at all
    for secret in secrets:
        assert secret not in logged
        for message in messages:
            assert secret not in message
