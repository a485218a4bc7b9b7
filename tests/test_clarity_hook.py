"""ClarityHook over real HTTP against the Clarity sandbox (mocks only for narrow cases)."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import logging
from typing import TYPE_CHECKING, Any

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import requests
import requests_mock as requests_mock_module
from airflow.providers.common.compat.sdk import AirflowException

from airflow_provider_clarify.exceptions import (
    ClarityAPIError,
    ClarityQuotaExceededError,
    ClarityReportFailedError,
    ClarityReportRequestUncertainError,
)
from airflow_provider_clarify.hooks.clarity import (
    DEFAULT_HOST,
    MAX_RESUMES,
    ClarityHook,
    settings_from_connection,
)

if TYPE_CHECKING:
    from pathlib import Path

    from airflow_provider_clarify.testing.clarity import ClaritySandbox

WINDOW = {"start_time": "2024-01-01T00:00:00Z", "end_time": "2024-01-02T00:00:00Z"}


@pytest.fixture
def sandbox(clarity_sandbox: ClaritySandbox) -> ClaritySandbox:
    clarity_sandbox.report_delay = 0.2
    return clarity_sandbox


@pytest.fixture
def hook() -> ClarityHook:
    return ClarityHook(retry_backoff=0.01)


def ready_report(sandbox: ClaritySandbox, hook: ClarityHook, **params: object) -> str:
    defaults = {"output_frequency": "hour", "all_datasources": True, **WINDOW}
    record = hook.request_report(**{**defaults, **params})  # type: ignore[arg-type]
    sandbox.set_ready(record["reportId"])
    return str(record["reportId"])


def api_paths(sandbox: ClaritySandbox) -> list[tuple[str, str, int | None]]:
    return [(r.method, r.path, r.status) for r in sandbox.api.requests]


# -- connection ------------------------------------------------------------------------------------------
def test_settings_defaults_and_org_precedence() -> None:
    settings = settings_from_connection("c", host=None, login="loginOrg", password="k" * 20, extra={})
    assert (settings.base_url, settings.org, settings.timeout) == (DEFAULT_HOST, "loginOrg", 30.0)
    settings = settings_from_connection(
        "c",
        host="clarity-data-api.clarity.io",
        login="loginOrg",
        password="k" * 20,
        extra={"org": "x", "timeout": "7"},
    )
    assert (settings.base_url, settings.org, settings.timeout) == (DEFAULT_HOST, "x", 7.0)
    assert "k" * 20 not in repr(settings)


@pytest.mark.parametrize(
    ("host", "password", "extra", "match"),
    [
        ("http://clarity.example.com", "key", {}, "connection 'c' field 'host': plain http"),
        (None, None, {}, "connection 'c' field 'password': the Clarity API key is missing"),
        (None, "key", {"timeout": "soon"}, "connection 'c' extra 'timeout'"),
        (None, "key", {"timeout": 0}, "connection 'c' extra 'timeout'"),
    ],
)
def test_bad_connections_name_the_field(
    host: str | None, password: str | None, extra: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        settings_from_connection("c", host=host, login=None, password=password, extra=extra)


# -- requesting ------------------------------------------------------------------------------------------
def test_request_report_sends_the_validated_body_with_the_key(
    sandbox: ClaritySandbox, hook: ClarityHook
) -> None:
    record = hook.request_report(
        output_frequency="hour",
        start_time="2024-01-01T01:00:00+01:00",
        end_time="2024-01-02",
        datasource_ids=sandbox.datasource_ids[:2],
        qc_assessment=True,
    )
    assert record["reportStatus"] == "in-progress"
    (stored,) = sandbox.reports
    assert stored["reportId"] == record["reportId"]
    query = stored["query"]
    assert (query["startTime"], query["endTime"]) == ("2024-01-01T00:00:00.000Z", "2024-01-02T00:00:00.000Z")
    assert (query["format"], query["qcAssessment"], query["org"]) == ("csv-wide", True, sandbox.org)
    assert query["datasourceIds"] == sandbox.datasource_ids[:2]
    (post,) = sandbox.api.requests
    assert post.headers["x-api-key"] == sandbox.api_key


def test_bad_request_fails_before_any_http(sandbox: ClaritySandbox, hook: ClarityHook) -> None:
    with pytest.raises(ValueError, match=r"^node_ids: report 'node-measurements' needs a list of ids"):
        hook.request_report(report="node-measurements", output_frequency="hour", **WINDOW)
    with pytest.raises(ValueError, match=r"^output_frequency"):
        hook.request_report(output_frequency="weekly", all_datasources=True, **WINDOW)
    assert sandbox.api.requests == []


def test_report_life_cycle_on_the_documented_path(sandbox: ClaritySandbox, hook: ClarityHook) -> None:
    sandbox.report_delay = 30
    report_id = hook.request_report(output_frequency="day", all_datasources=True, **WINDOW)["reportId"]
    assert hook.get_report(report_id)["reportStatus"] == "in-progress"
    sandbox.set_ready(report_id)
    record = hook.get_report(report_id)
    assert record["reportStatus"] == "succeeded"
    assert len(record["urls"]) == 1
    assert record["urlsExpireAt"].endswith("Z")
    assert [p for _, p, _ in api_paths(sandbox)][1:] == [f"/v2/report-request/{report_id}"] * 2


def test_poll_falls_back_to_the_plural_path_on_404(sandbox: ClaritySandbox, hook: ClarityHook) -> None:
    report_id = ready_report(sandbox, hook)
    sandbox.api.faults.fail_next(1, status=404, path="/v2/report-request/")
    assert hook.get_report(report_id)["reportStatus"] == "succeeded"
    assert api_paths(sandbox)[-2:] == [
        ("GET", f"/v2/report-request/{report_id}", 404),
        ("GET", f"/v2/report-requests/{report_id}", 200),
    ]


def test_unknown_report_is_a_404_error(sandbox: ClaritySandbox, hook: ClarityHook) -> None:
    with pytest.raises(ClarityAPIError) as info:
        hook.get_report("JBNOSUCH01")
    assert info.value.status == 404
    assert "Report not found" in str(info.value)


def test_quota_429_fails_at_once_with_the_quota_message(sandbox: ClaritySandbox, hook: ClarityHook) -> None:
    sandbox.quota_per_day = 1
    hook.request_report(output_frequency="hour", all_datasources=True, **WINDOW)
    with pytest.raises(ClarityQuotaExceededError) as info:
        hook.request_report(output_frequency="day", all_datasources=True, **WINDOW)
    assert info.value.status == 429
    assert "about 30 historical reports per organization per day" in str(info.value)
    assert sandbox.org in str(info.value)
    assert [status for method, _, status in api_paths(sandbox) if method == "POST"] == [202, 429]
    assert len(sandbox.reports) == 1


def test_429_with_retry_after_on_a_report_request_is_not_retried(
    sandbox: ClaritySandbox, hook: ClarityHook
) -> None:
    sandbox.api.faults.throttle_next(1, retry_after=1, path="/v2/report-requests")
    with pytest.raises(ClarityQuotaExceededError, match="per organization per day"):
        hook.request_report(output_frequency="hour", all_datasources=True, **WINDOW)
    assert len(sandbox.api.requests) == 1
    assert sandbox.reports == []


def test_report_requests_are_retried_only_when_they_cannot_have_arrived(
    sandbox: ClaritySandbox, hook: ClarityHook
) -> None:
    # 503 says "not acted on": retried, and exactly one report is made.
    sandbox.api.faults.fail_next(2, status=503, path="/v2/report-requests")
    record = hook.request_report(output_frequency="hour", all_datasources=True, **WINDOW)
    assert [r.fault for r in sandbox.api.requests] == ["status", "status", None]
    assert [r["reportId"] for r in sandbox.reports] == [record["reportId"]]


@pytest.mark.parametrize(
    ("fault", "cause"),
    [
        (lambda plan: plan.fail_next(1, status=502, path="/v2/report-requests"), "HTTP 502"),
        (lambda plan: plan.fail_next(1, status=500, path="/v2/report-requests"), "HTTP 500"),
        (lambda plan: plan.reset_next(1, path="/v2/report-requests"), "ConnectionError"),
        (lambda plan: plan.truncate_next(1, path="/v2/report-requests"), "ChunkedEncodingError"),
        (lambda plan: plan.slow_next(1, delay=2, path="/v2/report-requests"), "ReadTimeout"),
    ],
    ids=["502", "500", "reset", "answer-cut-short", "read-time-out"],
)
def test_a_report_request_that_may_have_arrived_is_never_sent_twice(
    sandbox: ClaritySandbox, hook: ClarityHook, fault: Any, cause: str
) -> None:
    fault(sandbox.api.faults)
    hook.settings = dataclasses.replace(hook.settings, timeout=1.0)
    with pytest.raises(ClarityReportRequestUncertainError) as info:
        hook.request_report(output_frequency="hour", all_datasources=True, **WINDOW)
    assert len(sandbox.api.requests) == 1
    message = str(info.value)
    assert cause in message
    assert "may have created a report" in message
    assert "not sent again" in message
    assert hook.settings.api_key not in message


def test_a_report_request_answer_without_report_id_is_uncertain(
    sandbox: ClaritySandbox, hook: ClarityHook
) -> None:
    sandbox.api.faults.fail_next(1, status=200, path="/v2/report-requests", body={"status": "ok"})
    with pytest.raises(ClarityReportRequestUncertainError, match="has no reportId"):
        hook.request_report(output_frequency="hour", all_datasources=True, **WINDOW)
    assert len(sandbox.api.requests) == 1


def test_a_refused_connection_is_retried_and_fails_as_a_connection_error(
    sandbox: ClaritySandbox, unused_tcp_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    hook = ClarityHook(retry_backoff=0.01, retry_attempts=3)
    hook.settings = dataclasses.replace(hook.settings, base_url=f"http://127.0.0.1:{unused_tcp_port}")
    with caplog.at_level(logging.WARNING), pytest.raises(requests.ConnectionError) as info:
        hook.request_report(output_frequency="hour", all_datasources=True, **WINDOW)
    assert type(info.value) is requests.ConnectionError  # certainly not received: no "may have created"
    retries = [r for r in caplog.records if "/v2/report-requests" in r.getMessage()]
    assert len(retries) == 2, [r.getMessage() for r in caplog.records]


def test_5xx_and_resets_are_retried_on_reads(sandbox: ClaritySandbox, hook: ClarityHook) -> None:
    record = hook.request_report(output_frequency="hour", all_datasources=True, **WINDOW)
    sandbox.api.faults.fail_next(1, status=502)
    sandbox.api.faults.reset_next(1)
    sandbox.api.faults.fail_next(2, status=503)
    sandbox.api.faults.slow_next(1, delay=3)
    slow_hook = ClarityHook(retry_backoff=0.01, retry_attempts=6)
    slow_hook.settings = dataclasses.replace(slow_hook.settings, timeout=1.0)
    assert slow_hook.get_report(record["reportId"])["reportId"] == record["reportId"]
    assert [r.fault for r in sandbox.api.requests][1:] == [
        "status",
        "reset",
        "status",
        "status",
        "slow",
        None,
    ]


def test_client_errors_are_not_retried_and_hide_the_key(sandbox: ClaritySandbox, hook: ClarityHook) -> None:
    sandbox.api_key = "another-key-0123456789"
    with pytest.raises(ClarityAPIError) as info:
        hook.request_report(output_frequency="hour", all_datasources=True, **WINDOW)
    assert info.value.status == 401
    assert "Unauthorized user" in str(info.value)
    assert hook.settings.api_key not in str(info.value)
    assert len(sandbox.api.requests) == 1


# -- files -----------------------------------------------------------------------------------------------
def test_files_stream_exactly_as_stored_even_with_content_encoding_gzip(
    sandbox: ClaritySandbox, hook: ClarityHook
) -> None:
    assert sandbox.gzip_content_encoding
    report_id = ready_report(sandbox, hook)
    (expected,) = sandbox.report_files(report_id)
    (report_file,) = list_files(hook, report_id)
    assert (report_file.name, report_file.kind, report_file.content_encoding) == (
        expected.name,
        "gzip",
        "gzip",
    )
    assert report_file.data == expected.read_bytes()
    assert report_file.data[:2] == b"\x1f\x8b"
    table = pa_csv.read_csv(io.BytesIO(gzip.decompress(report_file.data)))
    assert table.num_rows == sandbox.report_table(report_id).num_rows > 0
    assert not any("x-api-key" in {k.lower() for k in r.headers} for r in sandbox.store.requests)


def test_parquet_and_uncompressed_kinds_are_detected_by_magic_bytes(
    sandbox: ClaritySandbox, hook: ClarityHook
) -> None:
    report_id = ready_report(sandbox, hook, file_format="parquet")
    (report_file,) = list_files(hook, report_id)
    (expected,) = sandbox.report_files(report_id)
    assert report_file.kind == "parquet"
    assert report_file.data == expected.read_bytes()
    assert pq.read_table(io.BytesIO(report_file.data)).num_rows == sandbox.report_table(report_id).num_rows


def test_multi_file_reports_yield_every_file_in_order(sandbox: ClaritySandbox, hook: ClarityHook) -> None:
    sandbox.files_per_report = 3
    report_id = ready_report(sandbox, hook, output_frequency="minute")
    expected = sandbox.report_files(report_id)
    files = list_files(hook, report_id)
    assert [f.name for f in files] == [p.name for p in expected]
    assert [f.data for f in files] == [p.read_bytes() for p in expected]
    rows = sum(pa_csv.read_csv(io.BytesIO(gzip.decompress(f.data))).num_rows for f in files)
    assert rows == sandbox.report_table(report_id).num_rows


def test_expired_urls_are_refreshed_and_the_file_reopened(sandbox: ClaritySandbox, hook: ClarityHook) -> None:
    sandbox.files_per_report = 2
    report_id = ready_report(sandbox, hook)
    expected = sandbox.report_files(report_id)
    data = []
    for report_file in hook.open_report_files(report_id):
        data.append(report_file.stream.read())
        sandbox.expire_urls_now()  # the urls read so far no longer work
    assert data == [p.read_bytes() for p in expected]
    assert [(r.info.get("file"), r.status) for r in sandbox.store.requests] == [
        (expected[0].name, 200),
        (expected[1].name, 403),
        (expected[1].name, 200),
    ]
    assert [p for _, p, _ in api_paths(sandbox)].count(f"/v2/report-request/{report_id}") == 2


def test_a_download_that_breaks_off_resumes_where_it_stopped(
    sandbox: ClaritySandbox, hook: ClarityHook
) -> None:
    report_id = ready_report(sandbox, hook, output_frequency="minute")
    (expected,) = sandbox.report_files(report_id)
    sandbox.store.faults.truncate_next(2)  # the first opening and the first resume break off half-way
    (report_file,) = list_files(hook, report_id)
    assert report_file.data == expected.read_bytes()
    sent = [(r.headers.get("Range"), r.fault) for r in sandbox.store.requests]
    half = expected.stat().st_size // 2
    assert sent == [(None, "truncate"), (f"bytes={half}-", "truncate"), (f"bytes={half}-", None)]


def test_a_download_that_keeps_breaking_off_fails_naming_the_file(
    sandbox: ClaritySandbox, hook: ClarityHook
) -> None:
    report_id = ready_report(sandbox, hook)
    (expected,) = sandbox.report_files(report_id)
    sandbox.store.faults.truncate_next(MAX_RESUMES + 1)
    with pytest.raises(
        AirflowException, match=rf"{expected.name} broke off at byte \d+ of {expected.stat().st_size}"
    ):
        list_files(hook, report_id)
    assert len(sandbox.store.requests) == MAX_RESUMES + 1


def test_urls_about_to_expire_are_renewed_before_use(sandbox: ClaritySandbox, hook: ClarityHook) -> None:
    sandbox.url_ttl = 5  # inside the hook's 30 s safety margin
    report_id = ready_report(sandbox, hook)
    (report_file,) = list_files(hook, report_id)
    assert report_file.data == sandbox.report_files(report_id)[0].read_bytes()
    assert [r.status for r in sandbox.store.requests] == [200]
    assert [p for _, p, _ in api_paths(sandbox)].count(f"/v2/report-request/{report_id}") == 2


def test_refreshing_gives_up_after_two_tries(sandbox: ClaritySandbox, hook: ClarityHook) -> None:
    report_id = ready_report(sandbox, hook)
    sandbox.store.faults.fail_next(3, status=403)
    with pytest.raises(ClarityAPIError) as info:
        list_files(hook, report_id)
    assert info.value.status == 403
    assert "X-Amz-Signature" not in str(info.value)
    assert len(sandbox.store.requests) == 3


def test_transient_download_errors_are_retried(sandbox: ClaritySandbox, hook: ClarityHook) -> None:
    report_id = ready_report(sandbox, hook)
    sandbox.store.faults.fail_next(1, status=503)
    sandbox.store.faults.reset_next(1)
    (report_file,) = list_files(hook, report_id)
    assert report_file.data == sandbox.report_files(report_id)[0].read_bytes()
    assert [r.fault for r in sandbox.store.requests] == ["status", "reset", None]


def test_files_of_unfinished_or_failed_reports_are_refused(
    sandbox: ClaritySandbox, hook: ClarityHook
) -> None:
    sandbox.report_delay = 30
    running = hook.request_report(output_frequency="hour", all_datasources=True, **WINDOW)["reportId"]
    with pytest.raises(Exception, match="has no files to download: Processing"):
        list_files(hook, running)
    sandbox.fail_next_reports(1, message="Report generation failed: disk full")
    failed = ready_report(sandbox, hook)
    with pytest.raises(ClarityReportFailedError, match="disk full"):
        list_files(hook, failed)
    assert sandbox.store.requests == []


def test_download_report_writes_identical_files(
    sandbox: ClaritySandbox, hook: ClarityHook, tmp_path: Path
) -> None:
    sandbox.files_per_report = 2
    report_id = ready_report(sandbox, hook)
    written = hook.download_report(report_id, tmp_path / "out")
    expected = sandbox.report_files(report_id)
    assert [p.name for p in written] == [p.name for p in expected]
    assert [p.read_bytes() for p in written] == [p.read_bytes() for p in expected]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in expected)


# -- secrets ---------------------------------------------------------------------------------------------
def test_no_secret_in_logs_or_errors(
    sandbox: ClaritySandbox,
    hook: ClarityHook,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from airflow.providers.common.compat.sdk import redact

    caplog.set_level(logging.DEBUG)
    report_id = ready_report(sandbox, hook)
    signature = _query(sandbox.report(report_id)["urls"][0])["X-Amz-Signature"]
    sandbox.store.faults.fail_next(1, status=503)
    list_files(hook, report_id)
    # The hook's own lines (structlog, printed) and the retry warnings (stdlib logging).
    captured = capsys.readouterr()
    ours = (
        captured.out + captured.err + "\n".join(r.getMessage() for r in caplog.records if "clarify" in r.name)
    )
    assert "Streaming file 0" in ours
    assert "retrying in" in ours
    assert sandbox.api_key not in ours
    assert "X-Amz" not in ours
    # urllib3's DEBUG lines carry the signed URL (proof the check can fail); the masker hides the secrets.
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert signature in everything
    redacted = str(redact(everything))
    assert signature not in redacted
    assert ".csv.gz?*** HTTP" in redacted
    assert sandbox.api_key not in str(redact(f"key {sandbox.api_key}"))  # the key is registered too


def _query(url: str) -> dict[str, str]:
    from urllib.parse import parse_qsl, urlsplit

    return dict(parse_qsl(urlsplit(url).query))


# -- narrow paths with mocks ---------------------------------------------------------------------------
@pytest.fixture
def mocked_conn(monkeypatch: pytest.MonkeyPatch) -> str:
    conn = {
        "conn_type": "clarity",
        "host": "https://clarity.test",
        "password": "mock-key-123456",
        "login": "o1",
    }
    monkeypatch.setenv("AIRFLOW_CONN_CLARITY_MOCK", json.dumps(conn))
    return "clarity_mock"


def test_redirects_from_the_api_are_not_followed(mocked_conn: str) -> None:
    with requests_mock_module.Mocker() as mock:
        mock.get(
            "https://clarity.test/v2/report-request/JB1",
            status_code=302,
            headers={"Location": "https://elsewhere.test/steal"},
        )
        elsewhere = mock.get("https://elsewhere.test/steal", json={})
        with pytest.raises(ClarityAPIError) as info:
            ClarityHook(mocked_conn).get_report("JB1")
    assert info.value.status == 302
    assert not elsewhere.called


def test_test_connection_reads_datasources_and_never_raises(mocked_conn: str) -> None:
    with requests_mock_module.Mocker() as mock:
        route = mock.get("https://clarity.test/v2/datasources", json={"datasources": [{}, {}, {}]})
        assert ClarityHook(mocked_conn).test_connection() == (
            True,
            "Connected to Clarity at https://clarity.test; org 'o1' has 3 datasource(s)",
        )
        assert route.last_request.qs == {"org": ["o1"]}
        assert route.last_request.headers["x-api-key"] == "mock-key-123456"
        mock.get(
            "https://clarity.test/v2/datasources", status_code=401, json={"message": ["Unauthorized user"]}
        )
        ok, message = ClarityHook(mocked_conn).test_connection()
        assert mock.call_count == 2  # one attempt each, no retries
    assert not ok
    assert "HTTP 401" in message
    assert "Unauthorized user" in message
    assert "mock-key-123456" not in message
    ok, message = ClarityHook("no_such_connection").test_connection()
    assert not ok
    assert "no_such_connection" in message


class _File:
    def __init__(self, name: str, kind: str, content_encoding: str | None, data: bytes) -> None:
        self.name, self.kind, self.content_encoding, self.data = name, kind, content_encoding, data


def list_files(hook: ClarityHook, report_id: str) -> list[_File]:
    return [
        _File(f.name, f.kind, f.content_encoding, f.stream.read()) for f in hook.open_report_files(report_id)
    ]
