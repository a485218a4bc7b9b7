"""The bad-input catalogue: wrong input to every hook, operator, sensor, transfer and connection is refused.

Every case is refused with a ``ValueError`` (or a subclass) whose message names the parameter -- and the
key and the position (index and time) where there is one -- **before any request**: the sandboxes of both
services record nothing, and no socket is even opened. Messages never carry a secret.

The second half lists inputs that look wrong but are accepted *by design* (SPEC §3.1, §6): naive times are
UTC, offsets are converted, digits below the microsecond are dropped, NaN means "no value", a repeated
instant is merged (last value wins), an empty frame sends nothing. Those tests check what reaches Clarify.
"""

from __future__ import annotations

import json
import math
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_clarify.hooks.clarify import ClarifyHook
from airflow_provider_clarify.hooks.clarity import ClarityHook
from airflow_provider_clarify.operators.clarify import ClarifyInsertOperator
from airflow_provider_clarify.operators.clarity import ClarityRequestReportOperator
from airflow_provider_clarify.sensors.clarity import ClarityReportSensor
from airflow_provider_clarify.testing.sandbox import Sandbox
from airflow_provider_clarify.transfers.clarity_recent_to_clarify import ClarityRecentToClarifyOperator
from airflow_provider_clarify.transfers.clarity_to_clarify import ClarityReportToClarifyOperator
from airflow_provider_clarify.transfers.clarity_to_object_storage import ClarityReportToObjectStorageOperator

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

TIMES = ["2024-01-01T00:00:00Z", "2024-01-01T00:01:00Z", "2024-01-01T00:02:00Z"]
WINDOW = {"start_time": "2024-01-01T00:00:00Z", "end_time": "2024-01-02T00:00:00Z"}
#: A password that must never show up in a message, whatever connection field is wrong.
BAD_CONN_SECRET = "catalogue-secret-9f8e7d"


def frame(**series: list[Any]) -> dict[str, Any]:
    """A Clarify data frame dict over :data:`TIMES`."""
    return {"times": list(TIMES), "series": series}


def minute_index(n: int = 3) -> pd.DatetimeIndex:
    return pd.date_range("2024-01-01", periods=n, freq="min", tz="UTC")


@dataclass
class Env:
    """What a case may use: the running sandboxes, a temporary folder and a way to define connections."""

    sandbox: Sandbox
    tmp_path: Path
    monkeypatch: pytest.MonkeyPatch

    def connection(self, conn_id: str, **fields: Any) -> str:
        """Define ``conn_id`` through its ``AIRFLOW_CONN_*`` variable; return the id."""
        self.monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))
        return conn_id


# -- cases -----------------------------------------------------------------------------------------------
# Each case: (id, what to call, substrings the message must contain: the parameter, key and position).
Case = tuple[str, "Callable[[Env], Any]", tuple[str, ...]]


def insert(data: Any, **hook: Any) -> Callable[[Env], Any]:
    return lambda env: ClarifyHook(**hook).insert(data)


def insert_op(**kwargs: Any) -> Callable[[Env], Any]:
    return lambda env: ClarifyInsertOperator(task_id="insert", **kwargs).execute(context={})


def request_op(**kwargs: Any) -> Callable[[Env], Any]:
    settings = {"task_id": "request", "output_frequency": "hour", "all_datasources": True, **WINDOW}
    return lambda env: ClarityRequestReportOperator(**{**settings, **kwargs}).execute(context={})


def request_hook(**kwargs: Any) -> Callable[[Env], Any]:
    settings = {"output_frequency": "hour", "datasource_ids": ["DABC1234"], **WINDOW}
    return lambda env: ClarityHook().request_report(**{**settings, **kwargs})


def to_clarify(**kwargs: Any) -> Callable[[Env], Any]:
    settings = {"task_id": "load", "report_id": "JB00000000", **kwargs}
    return lambda env: ClarityReportToClarifyOperator(**settings).execute(context={})


def recent(**kwargs: Any) -> Callable[[Env], Any]:
    settings = {"task_id": "sync", **kwargs}
    return lambda env: ClarityRecentToClarifyOperator(**settings).execute(context={})


def to_storage(**kwargs: Any) -> Callable[[Env], Any]:
    def call(env: Env) -> Any:
        settings = {
            "task_id": "archive",
            "report_id": "JB00000000",
            "destination": str(env.tmp_path),
            **kwargs,
        }
        return ClarityReportToObjectStorageOperator(**settings).execute(context={})

    return call


def parquet_with_inf(env: Env) -> Any:
    path = env.tmp_path / "values.parquet"
    values = [1.0, 2.0, 3.0, 4.0, 5.0, math.inf]
    times = pd.date_range("2024-01-01", periods=len(values), freq="min", tz="UTC")
    pq.write_table(pa.table({"time": pa.array(times), "site-1.pm2_5": values}), path)
    return ClarifyInsertOperator(task_id="insert", data=str(path)).execute(context={})


def csv_with_text(env: Env) -> Any:
    path = env.tmp_path / "values.csv"
    path.write_text("time,site-1.pm2_5\n2024-01-01T00:00:00Z,1.5\n2024-01-01T00:01:00Z,high\n")
    return ClarifyInsertOperator(task_id="insert", data=str(path)).execute(context={})


def clarify_conn(**fields: Any) -> Callable[[Env], Any]:
    def call(env: Env) -> Any:
        conn_id = env.connection("clarify_bad", conn_type="clarify", **fields)
        return ClarifyHook(conn_id).insert(frame(a=[1.0, 2.0, 3.0]))

    return call


def clarity_conn(**fields: Any) -> Callable[[Env], Any]:
    def call(env: Env) -> Any:
        conn_id = env.connection("clarity_bad", conn_type="clarity", **fields)
        return ClarityHook(conn_id).request_report(output_frequency="hour", all_datasources=True, **WINDOW)

    return call


def sandbox_clarify_conn(**changes: Any) -> Callable[[Env], Any]:
    """The sandbox's own Basic-auth connection with some fields changed."""

    def call(env: Env) -> Any:
        fields = {**env.sandbox.clarify.connection("basic"), **changes}
        conn_id = env.connection("clarify_bad", **fields)
        return ClarifyHook(conn_id).insert(frame(a=[1.0, 2.0, 3.0]))

    return call


def sandbox_clarity_conn(**changes: Any) -> Callable[[Env], Any]:
    def call(env: Env) -> Any:
        fields = {**env.sandbox.clarity.connection(), **changes}
        conn_id = env.connection("clarity_bad", **fields)
        return ClarityHook(conn_id).request_report(output_frequency="hour", all_datasources=True, **WINDOW)

    return call


LONG_KEY = "site-1." + "k" * 122  # 129 characters

INSERT_CASES: list[Case] = [
    (
        "key-with-space",
        insert(frame(**{"site 1.pm2_5": [1.0, 2.0, 3.0]})),
        ("data", "'site 1.pm2_5'", "1-128"),
    ),
    (
        "key-too-long",
        insert(frame(**{LONG_KEY: [1.0, 2.0, 3.0]})),
        ("data", LONG_KEY[:40], "1-128 characters"),
    ),
    (
        "key-not-a-string",
        insert(pd.DataFrame({7: [1.0, 2.0, 3.0]}, index=minute_index())),
        ("data", "series key 7", "must be a string"),
    ),
    (
        "key-twice",
        insert(pd.DataFrame([[1.0, 2.0]] * 3, columns=["a.b", "a.b"], index=minute_index())),
        ("data", "'a.b'", "more than once"),
    ),
    (
        "value-inf",
        insert(frame(**{"a.b": [1.0, math.inf, 3.0]})),
        ("data", "'a.b'", "position 1", "2024-01-01T00:01:00Z", "not finite"),
    ),
    (
        "value-minus-inf-in-dataframe",
        insert(pd.DataFrame({"a.b": [1.0, 2.0, -np.inf]}, index=minute_index())),
        ("data", "'a.b'", "position 2", "2024-01-01T00:02:00Z", "not finite"),
    ),
    (
        "value-string",
        insert(frame(**{"a.b": [1.0, "n/a", 3.0]})),
        ("data", "'a.b'", "position 1", "2024-01-01T00:01:00Z", "'n/a'", "not numeric"),
    ),
    (
        "value-numeric-string-in-dataframe",
        insert(pd.DataFrame({"a.b": ["1", "2", "3"]}, index=minute_index())),
        ("data", "'a.b'", "position 0", "2024-01-01T00:00:00Z", "not numeric"),
    ),
    (
        "value-boolean",
        insert(frame(**{"a.b": [1, 2, True]})),
        ("data", "'a.b'", "position 2", "2024-01-01T00:02:00Z", "True", "not numeric"),
    ),
    (
        "value-list",
        insert(frame(**{"a.b": [1.0, [2.0], 3.0]})),
        ("data", "'a.b'", "position 1", "not numeric"),
    ),
    (
        "lengths-differ",
        insert(frame(**{"a.b": [1.0, 2.0]})),
        ("data", "'a.b'", "2 values", "3 times"),
    ),
    (
        "time-unparseable",
        insert({"times": [TIMES[0], "2024-13-45T00:00:00Z", TIMES[2]], "series": {"a.b": [1, 2, 3]}}),
        ("data", "times position 1", "'2024-13-45T00:00:00Z'", "ISO 8601"),
    ),
    (
        "time-as-epoch-number",
        insert({"times": [1704067200, 1704067260, 1704067320], "series": {"a.b": [1, 2, 3]}}),
        ("data", "times position 0", "1704067200", "ambiguous"),
    ),
    (
        "time-missing",
        insert({"times": [TIMES[0], None, TIMES[2]], "series": {"a.b": [1, 2, 3]}}),
        ("data", "times position 1", "missing"),
    ),
    (
        "time-beyond-year-9999",
        insert(
            {
                "times": [
                    np.datetime64("2024-01-01"),
                    np.datetime64("12000-01-01"),
                    np.datetime64("2024-01-02"),
                ],
                "series": {"a.b": [1, 2, 3]},
            }
        ),
        ("data", "times position 1", "12000-01-01", "0001-9999"),
    ),
    (
        "frame-dict-unknown-field",
        insert({"times": TIMES, "series": {"a.b": [1, 2, 3]}, "units": {}}),
        ("data", "unknown field", "'units'"),
    ),
    ("data-of-wrong-type", insert([1.0, 2.0, 3.0]), ("data", "got list")),
    (
        "dataframe-without-times",
        insert(pd.DataFrame({"a.b": [1.0, 2.0, 3.0]})),
        ("data", "DatetimeIndex", "'time' column"),
    ),
    (
        "arrow-table-without-time",
        insert(pa.table({"a.b": [1.0, 2.0, 3.0]})),
        ("data", "'time' column", "a.b"),
    ),
    (
        "integration-id-invalid",
        lambda env: ClarifyHook().insert(frame(a=[1.0, 2.0, 3.0]), integration_id="NOT-AN-ID"),
        ("integration_id", "20 characters"),
    ),
    (
        "request-budget-over-8-mib",
        insert(frame(a=[1.0, 2.0, 3.0]), max_request_bytes=9 * 1024 * 1024),
        ("max_request_bytes", "8 MiB", str(9 * 1024 * 1024)),
    ),
    # ClarifyInsertOperator: metadata and files.
    (
        "signal-label-key-invalid",
        insert_op(data=frame(a=[1.0, 2.0, 3.0]), signals={"a": {"labels": {"bad key!": ["x"]}}}),
        ("signals", "'a'", "'labels'", "'bad key!'"),
    ),
    (
        "signal-unknown-field",
        insert_op(data=frame(a=[1.0, 2.0, 3.0]), signals={"a": {"unit": "°C"}}),
        ("signals", "'a'", "'unit'"),
    ),
    (
        "signal-name-too-long",
        insert_op(data=frame(a=[1.0, 2.0, 3.0]), signals={"a": {"name": "x" * 101}}),
        ("signals", "'a'", "'name'", "1 to 100 characters"),
    ),
    (
        "signal-key-invalid",
        insert_op(data=frame(a=[1.0, 2.0, 3.0]), signals={"a b": {"name": "A"}}),
        ("signals", "'a b'", "not a valid Clarify input key"),
    ),
    (
        "operator-value-string",
        insert_op(data=frame(**{"a.b": [1.0, 2.0, "x"]})),
        ("data", "'a.b'", "position 2", "2024-01-01T00:02:00Z", "not numeric"),
    ),
    (
        "file-of-unknown-format",
        insert_op(data="/tmp/clarify-catalogue/values.xlsx"),
        ("data", "'values.xlsx'", ".csv", ".parquet"),
    ),
    (
        "parquet-file-with-inf",
        parquet_with_inf,
        ("data", "values.parquet", "'site-1.pm2_5'", "position 5", "2024-01-01T00:05:00Z", "not finite"),
    ),
]

REPORT_CASES: list[Case] = [
    (
        "report-type-unknown",
        request_op(report="device-measurements"),
        ("report", "'device-measurements'", "datasource-measurements"),
    ),
    ("frequency-unknown", request_op(output_frequency="weekly"), ("output_frequency", "'weekly'", "minute")),
    (
        "start-equals-end",
        request_op(start_time="2024-01-02T00:00:00Z", end_time="2024-01-02T00:00:00Z"),
        ("start_time/end_time", "2024-01-02T00:00:00.000Z", "must be before"),
    ),
    (
        "start-after-end-with-offsets",
        request_op(start_time="2024-01-02T02:00:00+01:00", end_time="2024-01-01T23:00:00-01:00"),
        ("start_time/end_time", "(2024-01-02T01:00:00.000Z)", "(2024-01-02T00:00:00.000Z)"),
    ),
    ("start-unparseable", request_op(start_time="yesterday"), ("start_time", "'yesterday'", "ISO 8601")),
    (
        "ids-missing",
        request_op(all_datasources=False),
        ("datasource_ids", "'datasource-measurements'", "list of ids"),
    ),
    (
        "ids-not-a-list",
        request_op(all_datasources=False, datasource_ids="DABC1234"),
        ("datasource_ids", "list of ids", "got str"),
    ),
    (
        "id-empty-at-position",
        request_op(all_datasources=False, datasource_ids=["DABC1234", " "]),
        ("datasource_ids[1]",),
    ),
    ("id-not-a-string", request_hook(datasource_ids=[42]), ("datasource_ids[0]", "42")),
    (
        "ids-of-another-report-type",
        request_hook(node_ids=["A1234567"]),
        ("node_ids", "'datasource-measurements'", "datasource_ids"),
    ),
    (
        "node-report-with-all-datasources",
        request_hook(report="node-measurements", datasource_ids=None, all_datasources=True),
        ("all_datasources", "'node-measurements'"),
    ),
    (
        "all-datasources-and-ids",
        request_op(datasource_ids=["DABC1234"]),
        ("datasource_ids", "all_datasources"),
    ),
    (
        "label-style-not-canonical-spelling",
        request_op(metric_label_style="Canonical"),
        ("metric_label_style", "'Canonical'", "canonical"),
    ),
    ("file-format-unknown", request_op(file_format="xlsx"), ("file_format", "'xlsx'")),
    ("qc-flag-not-boolean", request_hook(qc_assessment="yes"), ("qc_assessment", "'yes'")),
    ("metric-select-empty", request_hook(metric_select="  "), ("metric_select",)),
    (
        "lookback-negative",
        request_op(start_time=None, end_time=None, lookback=timedelta(hours=-1)),
        ("lookback",),
    ),
    ("timeout-zero", request_op(wait_for_completion=True, timeout=0), ("timeout", "positive")),
    ("reuse-max-age-negative", request_op(reuse_max_age=-5), ("reuse_max_age", "positive")),
    (
        "sensor-report-id-empty",
        lambda env: ClarityReportSensor(task_id="wait", report_id="", poke_interval=1).execute(context={}),
        ("report_id", "non-empty"),
    ),
]

TRANSFER_CASES: list[Case] = [
    ("transfer-report-id-missing", to_clarify(report_id=None), ("report_id", "None")),
    (
        "transfer-metric-not-canonical",
        to_clarify(metrics=["pm2_5ConcMass1HourMean", "PM2.5"]),
        ("metrics[1]", "'PM2.5'", "canonical"),
    ),
    ("transfer-text-attribute", to_clarify(attributes=["value", "qcFlags"]), ("attributes", "qcFlags")),
    ("transfer-key-template-field", to_clarify(key_template="{id}.{sensor}"), ("key_template", "'sensor'")),
    (
        "transfer-key-template-invalid-keys",
        to_clarify(key_template="{id} {metric}"),
        ("key_template", "'{id} {metric}'", "invalid keys"),
    ),
    ("transfer-timestamp-unknown", to_clarify(timestamp="middle"), ("timestamp", "'middle'")),
    ("transfer-pacing-negative", to_clarify(requests_per_second=-1), ("requests_per_second", "-1")),
    ("transfer-batch-rows-zero", to_clarify(batch_rows=0), ("batch_rows", "0")),
    ("transfer-integration-id-invalid", to_clarify(integration_id="x"), ("integration_id", "20 characters")),
    (
        "recent-frequency-unknown",
        recent(all_datasources=True, output_frequency="weekly"),
        ("output_frequency", "'weekly'"),
    ),
    (
        "recent-ids-not-a-list",
        recent(datasource_ids="DABC1234"),
        ("datasource_ids", "list of ids", "got str"),
    ),
    ("recent-id-empty-at-position", recent(datasource_ids=["DABC1234", ""]), ("datasource_ids[1]",)),
    (
        "recent-format-unknown",
        recent(all_datasources=True, response_format="xml"),
        ("response_format", "'xml'"),
    ),
    (
        "recent-key-template-without-source",
        recent(all_datasources=True, response_format="json-long", key_template="{source_id}.{metric}"),
        ("key_template", "{source_id}", "json-long"),
    ),
    (
        "recent-overlap-negative",
        recent(all_datasources=True, recovery_overlap=timedelta(minutes=-5)),
        ("recovery_overlap",),
    ),
    ("archive-report-id-empty", to_storage(report_id=" "), ("report_id", "non-empty")),
    (
        "archive-destination-relative",
        to_storage(destination="clarity/out"),
        ("destination", "'clarity/out'", "relative"),
    ),
    ("archive-destination-empty", to_storage(destination=""), ("destination", "empty")),
    ("archive-destination-wrong-type", to_storage(destination=42), ("destination", "int")),
]

CONNECTION_CASES: list[Case] = [
    (
        "clarify-http-for-remote-host",
        sandbox_clarify_conn(host="http://api.clarify.example/v1/", password=BAD_CONN_SECRET),
        ("clarify_bad", "'host'", "plain http", "api.clarify.example"),
    ),
    (
        "clarify-credentials-in-host",
        sandbox_clarify_conn(host=f"https://user:{BAD_CONN_SECRET}@api.clarify.example/v1/"),
        ("clarify_bad", "'host'", "credentials"),
    ),
    ("clarify-password-missing", sandbox_clarify_conn(password=""), ("clarify_bad", "'password'", "empty")),
    (
        "clarify-login-not-an-integration-id",
        sandbox_clarify_conn(login="my-client-id", password=BAD_CONN_SECRET),
        ("clarify_bad", "'login'", "integration id"),
    ),
    (
        "clarify-timeout-not-a-number",
        sandbox_clarify_conn(extra={"timeout": "soon"}),
        ("clarify_bad", "'timeout'", "number"),
    ),
    (
        "clarify-credentials-file-without-client-id",
        clarify_conn(
            extra={
                "credentials": {
                    "apiUrl": "https://api.clarify.example/v1/",
                    "integration": "sandb0c1ar1f00000001",
                    "credentials": {"type": "client-credentials", "clientSecret": BAD_CONN_SECRET},
                }
            }
        ),
        ("clarify_bad", "'credentials'", "clientId"),
    ),
    (
        "clarify-credentials-not-json",
        clarify_conn(extra={"credentials": "{not json"}),
        ("clarify_bad", "'credentials'", "JSON"),
    ),
    (
        "clarity-http-for-remote-host",
        sandbox_clarity_conn(host="http://clarity-data-api.example", password=BAD_CONN_SECRET),
        ("clarity_bad", "'host'", "plain http", "clarity-data-api.example"),
    ),
    (
        "clarity-api-key-missing",
        sandbox_clarity_conn(password=None),
        ("clarity_bad", "'password'", "API key"),
    ),
    (
        "clarity-timeout-negative",
        sandbox_clarity_conn(extra={"timeout": -3}),
        ("clarity_bad", "'timeout'", "positive"),
    ),
    ("clarity-no-org", sandbox_clarity_conn(login=None), ("org", "clarity_bad", "default org")),
]

ALL_CASES = INSERT_CASES + REPORT_CASES + TRANSFER_CASES + CONNECTION_CASES

BOOLEAN_AFTER_FLOATS: Case = (
    "value-boolean-after-floats",
    insert(frame(**{"a.b": [1.0, 2.0, True]})),
    ("data", "'a.b'", "position 2", "True", "not numeric"),
)


# -- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared_sandbox() -> Iterator[Sandbox]:
    with Sandbox() as both:
        yield both


@pytest.fixture
def env(shared_sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    for name, value in shared_sandbox.env().items():
        monkeypatch.setenv(name, value)
    shared_sandbox.clarify.reset()
    shared_sandbox.clarity.reset()
    return Env(sandbox=shared_sandbox, tmp_path=tmp_path, monkeypatch=monkeypatch)


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every outgoing socket connection made while the test runs (to the sandboxes or anywhere else)."""
    made: list[Any] = []
    original = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            made.append(address)
        return original(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return made


def secrets_of(sandbox: Sandbox) -> list[str]:
    clarify, clarity = sandbox.clarify, sandbox.clarity
    return [clarify.password, clarify.client_secret, clarity.api_key, BAD_CONN_SECRET]


def check_refused(
    env: Env, connections: list[Any], call: Callable[[Env], Any], names: tuple[str, ...]
) -> str:
    with pytest.raises(ValueError, match=r"\S") as info:
        call(env)
    message = str(info.value)
    missing = [name for name in names if name not in message]
    assert not missing, f"the message does not name {missing}: {message}"
    assert [s for s in secrets_of(env.sandbox) if s in message] == [], message
    assert env.sandbox.clarify.requests == []
    assert env.sandbox.clarity.api.requests == []
    assert env.sandbox.clarity.store.requests == []
    assert connections == [], f"a connection was opened: {connections}"
    return message


# -- the catalogue -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("call", "names"), [pytest.param(c, n, id=i) for i, c, n in ALL_CASES])
def test_bad_input_is_refused_before_any_request(
    env: Env, connections: list[Any], call: Callable[[Env], Any], names: tuple[str, ...]
) -> None:
    check_refused(env, connections, call, names)


def test_a_boolean_after_floats_is_refused(env: Env, connections: list[Any]) -> None:
    _, call, names = BOOLEAN_AFTER_FLOATS
    check_refused(env, connections, call, names)


def test_a_csv_cell_that_is_not_a_number_is_refused_with_its_row(env: Env, connections: list[Any]) -> None:
    message = check_refused(
        env, connections, csv_with_text, ("data", "'values.csv'", "'site-1.pm2_5'", "high")
    )
    assert re.search(r"position 1\b|row 2\b|2024-01-01T00:01:00Z", message), message


def test_the_catalogue_covers_every_entry_point() -> None:
    assert len(ALL_CASES) >= 25
    assert len({case_id for case_id, _, _ in ALL_CASES}) == len(ALL_CASES)
    assert min(len(INSERT_CASES), len(REPORT_CASES)) >= 10
    assert min(len(TRANSFER_CASES), len(CONNECTION_CASES)) >= 5


def test_a_report_with_english_labels_is_refused_before_download_or_insert(env: Env) -> None:
    record = ClarityHook().request_report(
        output_frequency="hour", all_datasources=True, metric_label_style="english", **WINDOW
    )
    env.sandbox.clarity.set_ready(record["reportId"])
    env.sandbox.clarity.api.clear_requests()
    with pytest.raises(ValueError, match=r"^metric_label_style: .*'english'") as info:
        to_clarify(report_id=record["reportId"])(env)
    assert record["reportId"] in str(info.value)
    # Only the report record was read: nothing downloaded, nothing sent to Clarify.
    assert {(r.method, r.path.rsplit("/", 1)[0]) for r in env.sandbox.clarity.api.requests} == {
        ("GET", "/v2/report-request")
    }
    assert env.sandbox.clarity.store.requests == []
    assert env.sandbox.clarify.requests == []


# -- accepted by design ------------------------------------------------------------------------------------
def stored(env: Env, key: str) -> dict[str, float]:
    return {t.isoformat(): v for t, v in env.sandbox.clarify.points(key).items()}


def test_naive_times_are_utc_and_offsets_are_converted(env: Env) -> None:
    oslo = timezone(timedelta(hours=1))
    ClarifyHook(requests_per_second=None).insert(
        {
            "times": [
                datetime(2024, 1, 1, 0, 0),
                "2024-01-01T01:01:00+01:00",
                datetime(2024, 1, 1, 1, 2, tzinfo=oslo),
            ],
            "series": {"a.b": [1.0, 2.0, 3.0]},
        }
    )
    assert stored(env, "a.b") == {
        "2024-01-01T00:00:00+00:00": 1.0,
        "2024-01-01T00:01:00+00:00": 2.0,
        "2024-01-01T00:02:00+00:00": 3.0,
    }


def test_digits_below_the_microsecond_are_dropped(env: Env) -> None:
    ClarifyHook(requests_per_second=None).insert(
        {
            "times": ["2024-01-01T00:00:00.123456789Z", np.datetime64("2024-01-01T00:00:01.000000999")],
            "series": {"a": [1, 2]},
        }
    )
    assert stored(env, "a") == {"2024-01-01T00:00:00.123456+00:00": 1.0, "2024-01-01T00:00:01+00:00": 2.0}
    (call,) = env.sandbox.clarify.rpc_calls("integration.insert")
    assert call.info["times"] == 2


def test_nan_means_no_value_and_a_repeated_instant_keeps_the_last_value(env: Env) -> None:
    times = [TIMES[0], TIMES[1], "2024-01-01T01:01:00+01:00", TIMES[2]]  # the third repeats the second
    ClarifyHook(requests_per_second=None).insert(
        {"times": times, "series": {"a": [1.0, math.nan, 5.0, None]}}
    )
    assert stored(env, "a") == {"2024-01-01T00:00:00+00:00": 1.0, "2024-01-01T00:01:00+00:00": 5.0}


def test_an_empty_frame_sends_nothing(env: Env, connections: list[Any]) -> None:
    empty = pd.DataFrame({"a.b": pd.Series([], dtype=float)}, index=pd.DatetimeIndex([], tz=UTC))
    result = ClarifyInsertOperator(task_id="insert", data=empty).execute(context={})
    assert result == {"signals": {}, "created": [], "points": 0, "requests": 0}
    assert env.sandbox.clarify.requests == []
