"""The Clarify sandbox behaves as the documented API: real HTTP over 127.0.0.1 with ``requests``."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
import requests

from airflow_provider_clarify.testing.clarify import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_INTEGRATION_ID,
    DEFAULT_PASSWORD,
    ClarifySandbox,
    _timestamp_us,
    _utc_times_us,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

ID_RE = re.compile(r"[a-v0-9]{20}")
T0 = "2024-03-01T00:00:00Z"
T1 = "2024-03-01T00:01:00Z"


@pytest.fixture
def server() -> Iterator[ClarifySandbox]:
    with ClarifySandbox(rate_limit=None) as sandbox:
        yield sandbox


def post(
    sandbox: ClarifySandbox,
    body: Any,
    *,
    auth: Any = "basic",
    headers: dict[str, str] | None = None,
) -> requests.Response:
    """POST a body (dict/list serialised as JSON, bytes as is) to /v1/rpc with Basic auth by default."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if auth == "basic":
        auth = (sandbox.integration_id, sandbox.password)
    return requests.post(sandbox.url + "rpc", data=data, headers=all_headers, auth=auth, timeout=30)


def call(sandbox: ClarifySandbox, method: str, params: Any, **kwargs: Any) -> requests.Response:
    return post(sandbox, {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, **kwargs)


def insert(
    sandbox: ClarifySandbox, times: list[Any], series: dict[str, Any], **kwargs: Any
) -> dict[str, Any]:
    params = {"integration": sandbox.integration_id, "data": {"times": times, "series": series}}
    response = call(sandbox, "integration.insert", params, **kwargs)
    assert response.status_code == 200
    return response.json()


def save(sandbox: ClarifySandbox, views: dict[str, Any], **params: Any) -> dict[str, Any]:
    body = {"integration": sandbox.integration_id, "signalsByInput": views, **params}
    response = call(sandbox, "integration.saveSignals", body)
    assert response.status_code == 200
    return response.json()


def token(sandbox: ClarifySandbox, **overrides: str) -> requests.Response:
    form = {
        "grant_type": "client_credentials",
        "client_id": sandbox.client_id,
        "client_secret": sandbox.client_secret,
        "audience": sandbox.url,
        **overrides,
    }
    return requests.post(sandbox.url + "oauth/token", data=form, timeout=30)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


# -- authentication -------------------------------------------------------------------------------------
def test_basic_auth_with_integration_id_and_password_is_accepted(server: ClarifySandbox) -> None:
    result = insert(server, [T0], {"a": [1.0]})
    assert "error" not in result
    assert result["result"]["signalsByInput"]["a"]["created"] is True


@pytest.mark.parametrize(
    "auth",
    [
        (DEFAULT_INTEGRATION_ID, "wrong-password"),
        ("otherintegration0000", DEFAULT_PASSWORD),
        (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET),
        None,
    ],
    ids=["wrong-password", "wrong-user", "client-credentials-as-basic", "missing"],
)
def test_bad_or_missing_basic_auth_is_401_and_stores_nothing(server: ClarifySandbox, auth: Any) -> None:
    response = call(
        server,
        "integration.insert",
        {"integration": server.integration_id, "data": {"times": [T0], "series": {"a": [1.0]}}},
        auth=auth,
    )
    assert response.status_code == 401
    assert response.json()["message"]
    assert server.signals() == {}


def test_oauth_token_flow(server: ClarifySandbox) -> None:
    response = token(server)
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "invoke:integration"
    assert body["expires_in"] == 3600
    result = insert(server, [T0], {"a": [2.0]}, auth=None, headers=bearer(body["access_token"]))
    assert result["result"]["signalsByInput"]["a"]["created"] is True
    assert server.token_requests == 1


def test_oauth_audience_without_trailing_slash_is_accepted(server: ClarifySandbox) -> None:
    assert token(server, audience=server.url.rstrip("/")).status_code == 200


def test_oauth_wrong_secret_is_invalid_client(server: ClarifySandbox) -> None:
    response = token(server, client_secret="not-the-secret")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert "not-the-secret" not in response.text
    assert server.token_requests == 1


def test_oauth_audience_mismatch_is_rejected(server: ClarifySandbox) -> None:
    response = token(server, audience="https://api.clarify.io/v1/")
    assert response.status_code == 403
    assert response.json()["error"] == "access_denied"


def test_oauth_requires_form_encoding_and_client_credentials_grant(server: ClarifySandbox) -> None:
    as_json = requests.post(server.url + "oauth/token", json={"grant_type": "client_credentials"}, timeout=30)
    assert as_json.status_code == 400
    assert as_json.json()["error"] == "invalid_request"
    assert token(server, grant_type="password").json()["error"] == "unsupported_grant_type"


def test_unknown_bearer_token_is_401(server: ClarifySandbox) -> None:
    response = call(server, "integration.insert", {}, auth=None, headers=bearer("made-up"))
    assert response.status_code == 401


def test_token_expires_after_token_ttl() -> None:
    with ClarifySandbox(rate_limit=None, token_ttl=0.4) as sandbox:
        body = token(sandbox).json()
        assert body["expires_in"] == 0
        headers = bearer(body["access_token"])
        assert "result" in insert(sandbox, [T0], {"a": [1.0]}, auth=None, headers=headers)
        time.sleep(0.6)
        response = call(sandbox, "integration.insert", {}, auth=None, headers=headers)
        assert response.status_code == 401


def test_expire_tokens_invalidates_every_token(server: ClarifySandbox) -> None:
    headers = bearer(token(server).json()["access_token"])
    server.expire_tokens()
    assert call(server, "integration.insert", {}, auth=None, headers=headers).status_code == 401
    fresh = bearer(token(server).json()["access_token"])
    assert "result" in insert(server, [T0], {"a": [1.0]}, auth=None, headers=fresh)
    assert server.token_requests == 2


# -- integration.insert ---------------------------------------------------------------------------------
def test_insert_creates_signals_then_reports_them_as_existing(server: ClarifySandbox) -> None:
    first = insert(server, [T0], {"a": [1.0], "b": [2.0]})["result"]["signalsByInput"]
    assert set(first) == {"a", "b"}
    assert all(s["created"] is True and ID_RE.fullmatch(s["id"]) for s in first.values())
    assert first["a"]["id"] != first["b"]["id"]
    second = insert(server, [T1], {"a": [3.0]})["result"]["signalsByInput"]
    assert second == {"a": {"id": first["a"]["id"], "created": False}}
    signal = server.signal("a")
    assert signal["id"] == first["a"]["id"]
    assert signal["input"] == "a"
    assert signal["name"] == "a"
    assert signal["labels"] == {}


def test_signal_ids_are_deterministic_per_integration_and_key() -> None:
    ids = []
    for _ in range(2):
        with ClarifySandbox(rate_limit=None) as sandbox:
            ids.append(insert(sandbox, [T0], {"a": [1.0]})["result"]["signalsByInput"]["a"]["id"])
    assert ids[0] == ids[1]


def test_reinsert_overwrites_the_value_at_a_timestamp(server: ClarifySandbox) -> None:
    insert(server, [T0, T1], {"a": [1.0, 2.0]})
    insert(server, [T1], {"a": [5]})
    assert server.points("a") == {
        datetime(2024, 3, 1, 0, 0, tzinfo=UTC): 1.0,
        datetime(2024, 3, 1, 0, 1, tzinfo=UTC): 5.0,
    }


def test_read_back_is_exact_to_the_microsecond_and_in_utc(server: ClarifySandbox) -> None:
    times = ["2024-01-01T00:00:00.123456+02:00", "2024-01-01T00:00:00.5Z", "2023-12-31T18:30:00-05:30"]
    insert(server, times, {"a": [1.25, -2, 3e10]})
    assert server.points("a") == {
        datetime(2023, 12, 31, 22, 0, 0, 123456, tzinfo=UTC): 1.25,
        datetime(2024, 1, 1, 0, 0, 0, 500000, tzinfo=UTC): -2.0,
        datetime(2024, 1, 1, 0, 0, 0, tzinfo=UTC): 3e10,
    }


def test_null_is_no_value_and_does_not_delete_a_stored_value(server: ClarifySandbox) -> None:
    insert(server, [T0, T1], {"a": [1.0, None], "b": [None, None]})
    insert(server, [T0], {"a": [None]})
    assert server.points("a") == {datetime(2024, 3, 1, tzinfo=UTC): 1.0}
    assert server.points("b") == {}
    assert server.signal("b")["input"] == "b"


@pytest.mark.parametrize(
    ("times", "series", "path"),
    [
        (["2024-03-01T00:00:00"], {"a": [1]}, "data.times[0]"),
        ([T0, "2024-03-01T00:00:00.1234567Z"], {"a": [1, 2]}, "data.times[1]"),
        ([T0, "2024-03-01T01:00:00+01:00"], {"a": [1, 2]}, "data.times[1]"),
        (["2024-02-30T00:00:00Z"], {"a": [1]}, "data.times[0]"),
        (["yesterday"], {"a": [1]}, "data.times[0]"),
        ([1709251200], {"a": [1]}, "data.times[0]"),
        ([T0], {"bad key": [1]}, "data.series.bad key"),
        ([T0], {"a;b": [1]}, "data.series.a;b"),
        ([T0], {"k" * 129: [1]}, "data.series." + "k" * 129),
        ([T0, T1], {"a": [1, "2"]}, "data.series.a[1]"),
        ([T0, T1], {"a": [1, True]}, "data.series.a[1]"),
        ([T0, T1], {"a": [{"v": 1}, 1]}, "data.series.a[0]"),
        ([T0], {"a": 1}, "data.series.a"),
    ],
    ids=[
        "no-offset",
        "7-fraction-digits",
        "duplicate-instant",
        "no-such-date",
        "not-rfc3339",
        "epoch-number",
        "key-space",
        "key-semicolon",
        "key-too-long",
        "string-value",
        "bool-value",
        "object-value",
        "series-not-array",
    ],
)
def test_insert_validation_errors_name_the_param(
    server: ClarifySandbox, times: list[Any], series: dict[str, Any], path: str
) -> None:
    error = insert(server, times, {"ok": [1] * len(times), **series})["error"]
    assert error["code"] == -32602
    assert path in error["data"]["params"]
    assert error["data"]["trace"]
    assert server.signals() == {}  # all or nothing: the valid series "ok" was not stored either


def test_series_length_mismatch_uses_the_documented_message(server: ClarifySandbox) -> None:
    error = insert(server, [T0, T1], {"a": [1.0]})["error"]
    assert error["code"] == -32602
    assert error["data"]["params"] == {"data.series.a": ["not same length as times"]}


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_literals_are_rejected_naming_key_and_index(server: ClarifySandbox, literal: str) -> None:
    params = {"integration": server.integration_id, "data": {"times": [T0, T1], "series": {"x": [1.0, 0]}}}
    raw = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "integration.insert", "params": params})
    body = post(server, raw.replace("[1.0, 0]", f"[1.0, {literal}]").encode()).json()
    assert body["id"] == 7
    assert body["error"]["code"] == -32602
    assert body["error"]["data"]["params"]["data.series.x[1]"][0].startswith(f"{literal} is not")
    assert server.points("x") == {}


def test_number_beyond_float_range_is_rejected(server: ClarifySandbox) -> None:
    error = insert(server, [T0], {"a": [10**400]})["error"]
    assert error["data"]["params"] == {"data.series.a[0]": ["number out of range"]}


def test_invalid_integration_param_is_32602(server: ClarifySandbox) -> None:
    params = {"integration": "not-an-id", "data": {"times": [T0], "series": {"a": [1]}}}
    error = call(server, "integration.insert", params).json()["error"]
    assert error["code"] == -32602
    assert list(error["data"]["params"]) == ["integration"]
    missing = call(server, "integration.insert", {"data": params["data"]}).json()["error"]
    assert missing["data"]["params"] == {"integration": ["required"]}


def test_other_integration_is_forbidden(server: ClarifySandbox) -> None:
    params = {"integration": "abcdefghijklmnopqrst", "data": {"times": [T0], "series": {"a": [1]}}}
    error = call(server, "integration.insert", params).json()["error"]
    assert error["code"] == -32003
    assert server.signals() == {}


def test_unknown_params_and_data_fields_are_rejected(server: ClarifySandbox) -> None:
    data = {"times": [T0], "series": {"a": [1]}, "extra": 1}
    params = {"integration": server.integration_id, "data": data, "dryRun": True}
    assert call(server, "integration.insert", params).json()["error"]["data"]["params"] == {
        "dryRun": ["unknown parameter"]
    }
    del params["dryRun"]
    assert call(server, "integration.insert", params).json()["error"]["data"]["params"] == {
        "data.extra": ["unknown field"]
    }


def test_positional_params_are_accepted(server: ClarifySandbox) -> None:
    frame = {"times": [T0], "series": {"a": [4.0]}}
    body = call(server, "integration.insert", [server.integration_id, frame]).json()
    assert body["result"]["signalsByInput"]["a"]["created"] is True
    assert list(server.points("a").values()) == [4.0]


def test_insert_is_recorded_with_counts(server: ClarifySandbox) -> None:
    insert(server, [T0, T1], {"a": [1.0, None], "b": [2.0, 3.0]})
    (record,) = server.rpc_calls("integration.insert")
    assert record.info["method"] == "integration.insert"
    assert record.info["integration"] == server.integration_id
    assert (record.info["series"], record.info["times"], record.info["points"]) == (2, 2, 3)
    assert record.body_bytes == int(record.headers["Content-Length"])
    assert record.status == 200
    assert server.rpc_calls("integration.saveSignals") == []


def test_near_limit_body_of_8_mib_is_accepted(server: ClarifySandbox) -> None:
    n = 95_000
    times = [f"2024-01-01T00:00:{i // 1_000_000:02d}.{i % 1_000_000:06d}Z" for i in range(n)]
    series = {f"s{k}": [float(i) + 0.123456789 for i in range(n)] for k in range(3)}
    params = {"integration": server.integration_id, "data": {"times": times, "series": series}}
    data = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "integration.insert", "params": params}).encode()
    assert 7 * 1024 * 1024 < len(data) <= 8 * 1024 * 1024
    response = post(server, data)
    assert response.json()["result"]["signalsByInput"]["s2"]["created"] is True
    assert len(server.points("s2")) == n
    assert server.rpc_calls()[0].info["points"] == 3 * n


def _common_form(rng: random.Random, width: int) -> str:
    """A string in the fast path's form (``YYYY-MM-DDTHH:MM:SS[.f]Z``) with random, often invalid, fields."""
    fraction = "." + "".join(rng.choice("0123456789") for _ in range(width - 21)) if width > 20 else ""
    fields = [
        rng.choice(["0000", "0001", "1969", "2000", "2023", "2024", "2100", "9999"]),
        rng.choice(["00", "01", "02", "04", "12", "13"]),
        rng.choice(["00", "01", "28", "29", "30", "31", "32"]),
        rng.choice(["00", "23", "24"]),
        rng.choice(["00", "59", "60"]),
        rng.choice(["00", "59", "60", "99"]),
    ]
    return "{}-{}-{}T{}:{}:{}".format(*fields) + fraction + "Z"


def test_vectorised_time_check_accepts_exactly_what_the_per_item_parser_accepts() -> None:
    rng = random.Random(6)
    samples = [_common_form(rng, rng.choice([20, 22, 24, 27])) for _ in range(4000)]
    samples += [
        "2024-03-01T00:00:00z",
        "2024-03-01t00:00:00Z",
        "2024-03-01T00:00:00+00:00",
        "2024-03-01T00:00:0xZ",
    ]
    valid: list[str] = []
    for text in samples:
        fast = _utc_times_us([text])
        try:
            expected = _timestamp_us(text)
        except ValueError:
            assert fast is None, text
            continue
        if text.endswith("Z") and "T" in text:
            assert fast is not None, text  # the common form is taken by the fast path ...
            assert fast.tolist() == [expected], text  # ... with the same result
            valid.append(text)
    assert len(valid) > 100  # the sample has enough valid times to mean something
    by_width = {len(v): [v] for v in valid}
    for text in valid:
        by_width[len(text)].append(text)
    for texts in by_width.values():
        unique = sorted(set(texts), key=_timestamp_us)
        assert _utc_times_us(unique).tolist() == [_timestamp_us(t) for t in unique]  # type: ignore[union-attr]
        assert _utc_times_us([*unique, unique[0]]) is None  # a repeated instant is left to the slow check
    assert _utc_times_us(["2024-03-01T00:00:00Z", "2024-03-01T00:00:00.5Z"]) is None  # mixed widths
    assert _utc_times_us(["2024-03-01T00:00:00Z", 1]) is None
    assert _utc_times_us(["2024-03-01T00:00:00\u00e9"]) is None


def test_repeated_instant_in_a_large_insert_names_both_positions(server: ClarifySandbox) -> None:
    times = [f"2024-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z" for i in range(20_000)]
    times[15_000] = times[1234]
    error = insert(server, times, {"a": [1.0] * len(times)})["error"]
    assert error["data"]["params"] == {
        "data.times[15000]": ["duplicate timestamp (same instant as data.times[1234])"]
    }
    assert server.signals() == {}


@pytest.mark.parametrize(
    ("literal", "message"), [("1e400", "Infinity is not allowed"), ("-1e400", "-Infinity is not allowed")]
)
def test_literal_beyond_float_range_is_rejected_as_infinite(
    server: ClarifySandbox, literal: str, message: str
) -> None:
    params = {"integration": server.integration_id, "data": {"times": [T0, T1], "series": {"x": [1.0, 0]}}}
    raw = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "integration.insert", "params": params})
    body = post(server, raw.replace("[1.0, 0]", f"[1.0, {literal}]").encode()).json()
    assert body["error"]["data"]["params"] == {"data.series.x[1]": [message]}


def test_large_inserts_read_back_exactly_with_later_values_winning(server: ClarifySandbox) -> None:
    rng = random.Random(7)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    expected: dict[str, dict[datetime, float]] = {"a": {}, "b": {}}
    sent: list[int] = []
    for first, count, whole in ((0, 30_000, False), (20_000, 30_000, False), (25_000, 10, True)):
        moments = [start + timedelta(seconds=first + i, microseconds=i % 7 * 1000) for i in range(count)]
        times = [m.isoformat(timespec="microseconds").replace("+00:00", "Z") for m in moments]
        series: dict[str, list[Any]] = {}
        for key in expected:
            # floats and nulls (the vectorised check), or whole numbers (the per-value check)
            values: list[Any] = [
                None if rng.random() < 0.1 else (rng.randint(-5, 5) if whole else rng.uniform(-1e6, 1e6))
                for _ in moments
            ]
            series[key] = values
            expected[key].update({m: float(v) for m, v in zip(moments, values, strict=True) if v is not None})
        assert "result" in insert(server, times, series)
        sent.append(sum(v is not None for values in series.values() for v in values))
    for key, points in expected.items():
        assert server.points(key) == dict(sorted(points.items()))
    assert [call.info["points"] for call in server.rpc_calls("integration.insert")] == sent


def test_oversize_body_is_413_and_not_processed() -> None:
    with ClarifySandbox(rate_limit=None, max_body_bytes=2000) as sandbox:
        body = {"times": [T0], "series": {"a": [1.0]}}
        small = insert(sandbox, body["times"], body["series"])
        assert "result" in small
        response = call(sandbox, "integration.insert", {"x": "y" * 3000})
        assert response.status_code == 413
        assert response.json()["message"]
        record = sandbox.rpc_calls()[-1]
        assert record.status == 413
        assert "method" not in record.info  # never parsed


# -- JSON-RPC protocol ----------------------------------------------------------------------------------
def test_notification_is_processed_and_answered_204(server: ClarifySandbox) -> None:
    params = {"integration": server.integration_id, "data": {"times": [T0], "series": {"n": [9.0]}}}
    for request_id in ({}, {"id": None}):
        response = post(
            server, {"jsonrpc": "2.0", "method": "integration.insert", "params": params, **request_id}
        )
        assert response.status_code == 204
        assert response.content == b""
    assert list(server.points("n").values()) == [9.0]


def test_batch_requests_are_rejected(server: ClarifySandbox) -> None:
    request = {"jsonrpc": "2.0", "id": 1, "method": "integration.insert", "params": {}}
    body = post(server, [request]).json()
    assert body["error"]["code"] == -32600
    assert "batch" in body["error"]["message"]
    assert body["id"] is None


def test_invalid_json_is_parse_error(server: ClarifySandbox) -> None:
    body = post(server, b'{"jsonrpc": "2.0", "id": 1,').json()
    assert body["error"]["code"] == -32700
    assert body["error"]["data"]["trace"]


@pytest.mark.parametrize(
    "request_body",
    [
        {"id": 3, "method": "integration.insert", "params": {}},
        {"jsonrpc": "1.0", "id": 3, "method": "integration.insert", "params": {}},
        {"jsonrpc": "2.0", "id": 3, "params": {}},
        {"jsonrpc": "2.0", "id": 3, "method": "integration.insert", "params": "x"},
    ],
    ids=["no-jsonrpc", "wrong-jsonrpc", "no-method", "params-string"],
)
def test_malformed_request_objects_are_invalid_request(
    server: ClarifySandbox, request_body: dict[str, Any]
) -> None:
    body = post(server, request_body).json()
    assert body["error"]["code"] == -32600
    assert body["id"] == 3


def test_unknown_method_is_method_not_found(server: ClarifySandbox) -> None:
    body = call(server, "integration.delete", {}).json()
    assert body["error"]["code"] == -32601
    assert "integration.delete" in body["error"]["message"]


@pytest.mark.parametrize("spelling", ["integration.Insert", "INTEGRATION.INSERT", "integration.insert"])
def test_method_names_match_case_insensitively(server: ClarifySandbox, spelling: str) -> None:
    params = {"integration": server.integration_id, "data": {"times": [T0], "series": {"a": [1]}}}
    assert "result" in call(server, spelling, params).json()
    assert server.rpc_calls()[0].info["method"] == "integration.insert"
    assert len(server.rpc_calls("Integration.Insert")) == 1


def test_content_type_must_be_json(server: ClarifySandbox) -> None:
    response = post(server, {"jsonrpc": "2.0"}, headers={"Content-Type": "text/plain"})
    assert response.status_code == 415


def test_api_version_is_echoed_with_a_traceparent(server: ClarifySandbox) -> None:
    default = call(server, "integration.insert", {})
    assert default.headers["X-API-Version"] == "1.1"
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", default.headers["traceparent"])
    trace = default.json()["error"]["data"]["trace"]
    assert trace == default.headers["traceparent"].split("-")[1]
    for version in ("1.0", "1.1beta1", "1.1beta2", "1.1"):
        response = call(server, "integration.insert", {}, headers={"X-API-Version": version})
        assert response.headers["X-API-Version"] == version


def test_unknown_api_version_is_invalid_request(server: ClarifySandbox) -> None:
    response = call(server, "integration.insert", {}, headers={"X-API-Version": "2.0"})
    error = response.json()["error"]
    assert error["code"] == -32600
    assert "2.0" in error["message"]
    assert "X-API-Version" in error["message"]


@pytest.mark.parametrize(
    ("version", "good", "bad"),
    [
        ("1.0", "inputs", "signalsByInput"),
        ("1.1beta1", "inputs", "signalsByInput"),
        ("1.1beta2", "signalsByInput", "inputs"),
        ("1.1", "signalsByInput", "inputs"),
    ],
)
def test_save_signals_map_param_name_depends_on_version(
    server: ClarifySandbox, version: str, good: str, bad: str
) -> None:
    headers = {"X-API-Version": version}
    rejected = call(
        server,
        "integration.SaveSignals",
        {"integration": server.integration_id, bad: {"a": {}}},
        headers=headers,
    ).json()
    assert rejected["error"]["code"] == -32602
    assert bad in rejected["error"]["data"]["params"]
    accepted = call(
        server,
        "integration.SaveSignals",
        {"integration": server.integration_id, good: {"a": {}}},
        headers=headers,
    ).json()
    assert accepted["result"]["signalsByInput"]["a"]["created"] is True


# -- integration.saveSignals ----------------------------------------------------------------------------
def test_save_signals_replaces_attributes_and_merges_annotations(server: ClarifySandbox) -> None:
    full = {
        "name": "Temperature",
        "description": "outdoor",
        "labels": {"site": ["oslo"]},
        "annotations": {"app/one": "1"},
        "engUnit": "°C",
        "sourceType": "aggregation",
        "sampleInterval": "PT1M",
        "gapDetection": "PT2H",
    }
    first = save(server, {"t": full})["result"]["signalsByInput"]["t"]
    assert first["created"] is True
    assert first["updated"] is False
    assert ID_RE.fullmatch(first["id"])
    second = save(server, {"t": {"name": "Temp", "annotations": {"app/two": "2"}}})["result"][
        "signalsByInput"
    ]
    assert second["t"] == {"id": first["id"], "created": False, "updated": True}
    signal = server.signal("t")
    assert signal["name"] == "Temp"
    assert signal["description"] == ""
    assert signal["labels"] == {}
    assert signal["engUnit"] == ""
    assert signal["sourceType"] == "measurement"
    assert signal["sampleInterval"] is None
    assert signal["gapDetection"] is None
    assert signal["annotations"] == {"app/one": "1", "app/two": "2"}


def test_save_signals_updated_only_when_something_changed(server: ClarifySandbox) -> None:
    view = {"name": "N", "labels": {"a": ["1"]}, "type": "enum", "enumValues": {"0": "off", "1": "on"}}
    save(server, {"s": view})
    assert save(server, {"s": view})["result"]["signalsByInput"]["s"]["updated"] is False
    assert server.signal("s")["valueType"] == "enum"
    changed = {**view, "enumValues": {"0": "off", "1": "on", "2": "broken"}}
    assert save(server, {"s": changed})["result"]["signalsByInput"]["s"]["updated"] is True


def test_save_signals_create_only_skips_existing(server: ClarifySandbox) -> None:
    insert(server, [T0], {"old": [1.0]})
    result = save(server, {"old": {"name": "Old"}, "new": {"name": "New"}}, createOnly=True)
    summary = result["result"]["signalsByInput"]
    assert summary["old"]["created"] is False
    assert summary["old"]["updated"] is False
    assert summary["new"] == {"id": summary["new"]["id"], "created": True, "updated": False}
    assert server.signal("old")["name"] == "old"
    assert server.signal("new")["name"] == "New"


def test_insert_into_a_saved_signal_keeps_its_id(server: ClarifySandbox) -> None:
    saved = save(server, {"m": {"name": "M"}})["result"]["signalsByInput"]["m"]
    inserted = insert(server, [T0], {"m": [1.0]})["result"]["signalsByInput"]["m"]
    assert inserted == {"id": saved["id"], "created": False}


@pytest.mark.parametrize(
    ("view", "field"),
    [
        ({"colour": "red"}, "colour"),
        ({"name": ""}, "name"),
        ({"name": "n" * 101}, "name"),
        ({"name": None}, "name"),
        ({"description": "d" * 1001}, "description"),
        ({"engUnit": "u" * 256}, "engUnit"),
        ({"labels": {"k" * 41: ["v"]}}, "labels"),
        ({"labels": {"site": "oslo"}}, "labels"),
        ({"annotations": {"bad key": "v"}}, "annotations"),
        ({"annotations": {"k": 1}}, "annotations"),
        ({"valueType": "text"}, "valueType"),
        ({"type": "enum", "valueType": "numeric"}, "type"),
        ({"enumValues": {"10000": "x"}}, "enumValues"),
        ({"enumValues": {"1": ""}}, "enumValues"),
        ({"sourceType": "aggregate"}, "sourceType"),
        ({"sampleInterval": "P1M"}, "sampleInterval"),
        ({"gapDetection": "PT"}, "gapDetection"),
        ({"gapDetection": 30}, "gapDetection"),
    ],
)
def test_save_signals_validation(server: ClarifySandbox, view: dict[str, Any], field: str) -> None:
    response = call(
        server,
        "integration.saveSignals",
        {"integration": server.integration_id, "signalsByInput": {"ok": {}, "s": view}},
    )
    error = response.json()["error"]
    assert error["code"] == -32602
    assert list(error["data"]["params"]) == [f"signalsByInput.s.{field}"]
    assert server.signals() == {}


def test_save_signals_accepts_the_longest_valid_values(server: ClarifySandbox) -> None:
    view = {
        "name": "n" * 100,
        "description": "d" * 1000,
        "engUnit": "u" * 255,
        "labels": {"k" * 40: ["v"]},
        "annotations": {"company/app-x_1": "v"},
        "enumValues": {"9999": "e" * 128},
        "gapDetection": "P1DT2H3M4.5S",
        "sampleInterval": "P2W",
    }
    assert save(server, {"s": view})["result"]["signalsByInput"]["s"]["created"] is True


def test_save_signals_create_only_must_be_boolean(server: ClarifySandbox) -> None:
    params = {"integration": server.integration_id, "signalsByInput": {"a": {}}, "createOnly": "yes"}
    error = call(server, "integration.saveSignals", params).json()["error"]
    assert error["data"]["params"] == {"createOnly": ["must be a boolean"]}


# -- rate limiting --------------------------------------------------------------------------------------
def test_rate_limit_spaces_requests_per_integration_and_method() -> None:
    with ClarifySandbox(rate_limit=2.0) as sandbox:
        for i in range(5):
            assert "result" in insert(sandbox, [T0], {"a": [float(i)]})
        calls = sandbox.rpc_calls("integration.insert")
        # Slots are 0.5 s apart: the 5th request cannot be answered before 2 s after the 1st arrived.
        assert calls[-1].info["answered_at"] - calls[0].received_at >= 1.9
        assert all(c.info["queued"] > 0 for c in calls[1:])
        # A different method has its own slots.
        assert "result" in save(sandbox, {"a": {}})
        assert sandbox.rpc_calls("integration.saveSignals")[0].info["queued"] == 0


def _insert_concurrently(sandbox: ClarifySandbox, n: int) -> list[int]:
    statuses: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        params = {"integration": sandbox.integration_id, "data": {"times": [T0], "series": {f"k{i}": [1]}}}
        status = call(sandbox, "integration.insert", params).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(statuses)


def test_queue_timeout_answers_504_and_uses_no_slot() -> None:
    with ClarifySandbox(rate_limit=1.0, queue_timeout=0.5) as sandbox:
        assert _insert_concurrently(sandbox, 3) == [200, 504, 504]
        timed_out = [r for r in sandbox.rpc_calls() if r.status == 504]
        assert all(r.info["timed_out"] for r in timed_out)
        assert len(sandbox.signals()) == 1
        # ~0.5 s after the first request its successor's slot is 0.5 s away: within the queue time-out,
        # which would not be the case had the timed-out requests booked slots.
        assert "result" in insert(sandbox, [T0], {"later": [1]})


def test_total_timeout_answers_504() -> None:
    with ClarifySandbox(rate_limit=1.0, queue_timeout=10.0, total_timeout=1.5) as sandbox:
        assert _insert_concurrently(sandbox, 3) == [200, 200, 504]


# -- faults ---------------------------------------------------------------------------------------------
def test_fail_next_is_an_http_level_failure(server: ClarifySandbox) -> None:
    server.faults.fail_next(1, status=503)
    response = call(server, "integration.insert", {})
    assert response.status_code == 503
    body = response.json()
    assert body["code"] == 503
    assert "jsonrpc" not in body
    assert "result" in insert(server, [T0], {"a": [1]})


def test_throttle_next_is_429_with_retry_after(server: ClarifySandbox) -> None:
    server.faults.throttle_next(1, retry_after=2)
    response = call(server, "integration.insert", {})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"


def test_reset_next_drops_the_connection(server: ClarifySandbox) -> None:
    server.faults.reset_next(1, path="/v1/rpc")
    with pytest.raises(requests.ConnectionError):
        insert(server, [T0], {"a": [1]})
    assert server.signals() == {}
    assert "result" in insert(server, [T0], {"a": [1]})


def test_rpc_error_next_answers_200_with_the_error_and_no_side_effects(server: ClarifySandbox) -> None:
    server.rpc_error_next(2, code=-32015, message="Try again")
    for _ in range(2):
        body = insert(server, [T0], {"a": [1]})
        assert body["error"]["code"] == -32015
        assert body["error"]["message"] == "Try again"
        assert body["error"]["data"]["trace"]
    assert server.signals() == {}
    assert server.rpc_calls()[0].fault == "rpc_error"
    assert "result" in insert(server, [T0], {"a": [1]})


def test_reset_forgets_everything(server: ClarifySandbox) -> None:
    insert(server, [T0], {"a": [1]})
    token(server)
    server.rpc_error_next(1)
    server.faults.fail_next(1)
    server.reset()
    assert server.signals() == {}
    assert server.points("a") == {}
    assert server.requests == []
    assert server.token_requests == 0
    assert server.faults.pending == 0
    assert "result" in insert(server, [T0], {"a": [1]})
    with pytest.raises(KeyError):
        server.signal("missing")


def test_connection_dicts(server: ClarifySandbox) -> None:
    basic = server.connection()
    assert basic == {
        "conn_type": "clarify",
        "host": server.url,
        "login": server.integration_id,
        "password": server.password,
    }
    assert server.url == f"http://127.0.0.1:{server.port}/v1/"
    assert server.connection("oauth")["extra"] == {"client_id": server.client_id}
    credentials = json.loads(server.connection_json("credentials"))["extra"]["credentials"]
    assert credentials["apiUrl"] == server.url
    assert credentials["credentials"]["clientSecret"] == server.client_secret
    with pytest.raises(ValueError, match="auth"):
        server.connection("token")  # type: ignore[arg-type]


def test_constructor_rejects_a_malformed_integration_id() -> None:
    with pytest.raises(ValueError, match="integration_id"):
        ClarifySandbox(integration_id="UPPERCASE-IS-INVALID")
