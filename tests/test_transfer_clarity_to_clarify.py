"""ClarityReportToClarifyOperator against both sandboxes over real HTTP.

Expected values are computed here, independently of the parser under test, from the rows the Clarity
sandbox generated (``ClaritySandbox.report_table``: every cell as the CSV text) with plain Python.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from airflow.providers.common.compat.sdk import AirflowException

from airflow_provider_clarify.exceptions import ClarifyRPCError, ClarityReportFailedError
from airflow_provider_clarify.hooks import clarify as clarify_module
from airflow_provider_clarify.hooks.clarify import ClarifyHook
from airflow_provider_clarify.hooks.clarity import ClarityHook
from airflow_provider_clarify.testing.clarify import ClarifySandbox
from airflow_provider_clarify.testing.clarity import ClaritySandbox
from airflow_provider_clarify.transfers.clarity_to_clarify import ClarityReportToClarifyOperator
from airflow_provider_clarify.utils.frames import Frame

if TYPE_CHECKING:
    from collections.abc import Iterator

T0 = datetime(2024, 3, 1, tzinfo=UTC)
ID_PARAMS = {
    "datasource-measurements": "datasource_ids",
    "node-measurements": "node_ids",
    "reference-site-measurements": "ref_site_ids",
}
WINDOWS = {"minute": timedelta(hours=3), "hour": timedelta(days=3), "day": timedelta(days=12)}
Points = dict[str, dict[datetime, float]]


@pytest.fixture
def clarify(monkeypatch: pytest.MonkeyPatch) -> Iterator[ClarifySandbox]:
    with ClarifySandbox(rate_limit=None) as server:
        monkeypatch.setenv("AIRFLOW_CONN_CLARIFY_DEFAULT", server.connection_json())
        yield server


@pytest.fixture
def clarity(monkeypatch: pytest.MonkeyPatch) -> Iterator[ClaritySandbox]:
    with ClaritySandbox(report_delay=0.0) as server:
        monkeypatch.setenv("AIRFLOW_CONN_CLARITY_DEFAULT", server.connection_json())
        yield server


def request(
    clarity: ClaritySandbox,
    *,
    report: str = "datasource-measurements",
    frequency: str = "hour",
    file_format: str = "csv",
    window: timedelta | None = None,
    start: datetime = T0,
    **options: Any,
) -> str:
    """Request a report from the sandbox (with qcAssessment columns) and return its id."""
    ids = {
        "datasource-measurements": clarity.datasource_ids,
        "node-measurements": clarity.node_ids,
        "reference-site-measurements": clarity.ref_site_ids,
    }[report]
    options.setdefault("qc_assessment", True)
    record = ClarityHook().request_report(
        report=report,
        output_frequency=frequency,
        start_time=start,
        end_time=start + (window or WINDOWS[frequency]),
        file_format=file_format,
        **{ID_PARAMS[report]: ids},
        **options,
    )
    return str(record["reportId"])


def transfer(report_id: str, **options: Any) -> dict[str, int]:
    operator = ClarityReportToClarifyOperator(
        task_id="load", report_id=report_id, requests_per_second=None, **options
    )
    return operator.execute(context={})  # type: ignore[arg-type]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def expected_points(
    clarity: ClaritySandbox,
    report_id: str,
    *,
    attributes: tuple[str, ...] = ("value",),
    include_invalid: bool = False,
    timestamp: str = "start",
    template: str | None = None,
) -> Points:
    """What Clarify must hold after the transfer, from the generated rows (plain Python, no parser)."""
    table = clarity.report_table(report_id)
    columns = table.column_names
    id_column = columns[0]
    time_column = "time" if "time" in columns else f"{timestamp}OfPeriod"
    metrics = sorted({c.rsplit(".", 1)[0] for c in columns if c.endswith(".value")})
    if template is None:
        template = "{id}.{metric}.{attribute}" if len(attributes) > 1 else "{id}.{metric}"
    out: Points = defaultdict(dict)
    for row in table.to_pylist():
        for metric in metrics:
            if row.get(f"{metric}.qcAssessment") == "invalid" and not include_invalid:
                continue
            for attribute in attributes:
                cell = row[f"{metric}.{attribute}"]
                if cell is None:  # empty cell: no value, not zero
                    continue
                key = template.format(
                    id=row[id_column], metric=metric, attribute=attribute, source_id=row["sourceId"]
                )
                out[key][utc(row[time_column])] = float(cell)
    return dict(out)


def invalid_values(clarity: ClaritySandbox, report_id: str) -> int:
    table = clarity.report_table(report_id)
    count = 0
    for row in table.to_pylist():
        for column, cell in row.items():
            if column.endswith(".qcAssessment") and cell == "invalid":
                count += row[column.replace(".qcAssessment", ".value")] is not None
    return count


def stored(clarify: ClarifySandbox) -> Points:
    return {key: clarify.points(key) for key in clarify.signals()}


def inserts(clarify: ClarifySandbox) -> list[Any]:
    return clarify.rpc_calls("integration.insert")


def assert_result(result: dict[str, int], expected: Points, clarify: ClarifySandbox, rows: int) -> None:
    assert result == {
        "signals": len(expected),
        "created": len(expected),
        "points": sum(map(len, expected.values())),
        "rows": rows,
        "requests": len(inserts(clarify)),
    }
    json.dumps(result)


# -- shape -------------------------------------------------------------------------------------------------
def test_operator_shape() -> None:
    op = ClarityReportToClarifyOperator(task_id="t", report_id="JB00000001")
    assert tuple(op.template_fields) == ("report_id", "metrics", "key_template", "integration_id", "org")
    assert all(hasattr(op, name) for name in op.template_fields)
    assert (op.clarity_conn_id, op.clarify_conn_id) == ("clarity_default", "clarify_default")
    assert (op.attributes, op.include_invalid, op.save_metadata, op.timestamp) == (
        ("value",),
        False,
        True,
        "start",
    )
    with pytest.raises(TypeError):
        ClarityReportToClarifyOperator("t", "JB00000001")  # type: ignore[misc] - keyword-only


# -- exact data --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("report", list(ID_PARAMS))
@pytest.mark.parametrize("file_format", ["csv", "parquet"])
@pytest.mark.parametrize("frequency", ["minute", "hour", "day"])
def test_report_arrives_exactly(
    clarity: ClaritySandbox, clarify: ClarifySandbox, report: str, file_format: str, frequency: str
) -> None:
    report_id = request(clarity, report=report, frequency=frequency, file_format=file_format)
    suffix = ".parquet" if file_format == "parquet" else ".csv.gz"
    assert clarity.report_files(report_id)[0].name.endswith(suffix)
    expected = expected_points(clarity, report_id)
    prefix = {"datasource-measurements": "D", "node-measurements": "A", "reference-site-measurements": "R"}
    assert expected
    assert all(key.startswith(prefix[report]) for key in expected)
    if report != "reference-site-measurements":  # reference sites are never flagged in the sandbox
        assert invalid_values(clarity, report_id) > 0  # so the QC rule is exercised

    result = transfer(report_id)

    assert stored(clarify) == expected
    assert_result(result, expected, clarify, clarity.report_table(report_id).num_rows)


def test_include_invalid_keeps_invalid_values(clarity: ClaritySandbox, clarify: ClarifySandbox) -> None:
    report_id = request(clarity, report="node-measurements", frequency="minute")
    expected = expected_points(clarity, report_id, include_invalid=True)
    result = transfer(report_id, include_invalid=True)
    assert stored(clarify) == expected
    dropped = sum(map(len, expected_points(clarity, report_id).values()))
    assert result["points"] - dropped == invalid_values(clarity, report_id) > 0


def test_timestamp_end_uses_the_end_of_the_period(clarity: ClaritySandbox, clarify: ClarifySandbox) -> None:
    report_id = request(clarity, frequency="hour", window=timedelta(days=1))
    expected = expected_points(clarity, report_id, timestamp="end")
    transfer(report_id, timestamp="end")
    assert stored(clarify) == expected
    first = min(min(points) for points in expected.values())
    assert first == T0 + timedelta(hours=1)


def test_raw_and_value_attributes_and_a_key_template(
    clarity: ClaritySandbox, clarify: ClarifySandbox
) -> None:
    report_id = request(clarity, frequency="hour", window=timedelta(days=1), file_format="parquet")
    expected = expected_points(clarity, report_id, attributes=("raw", "value"))
    result = transfer(report_id, attributes=("raw", "value"))
    assert stored(clarify) == expected
    assert any(key.endswith(".raw") for key in expected)
    assert any(key.endswith(".value") for key in expected)
    assert result["signals"] == len(expected)

    clarify.reset()
    metric = "pm2_5ConcMass1HourMean"
    template = "clarity/{source_id}/{metric}"
    full = expected_points(clarity, report_id, template=template)
    transfer(report_id, metrics=[metric], key_template=template)
    only = {key: points for key, points in full.items() if key.endswith("/" + metric)}
    assert only
    assert stored(clarify) == only


# -- files and urls ----------------------------------------------------------------------------------------
def test_report_split_over_files_with_urls_expiring_between_them(
    monkeypatch: pytest.MonkeyPatch, clarify: ClarifySandbox
) -> None:
    with ClaritySandbox(report_delay=0.0, files_per_report=3) as clarity:
        monkeypatch.setenv("AIRFLOW_CONN_CLARITY_DEFAULT", clarity.connection_json())
        report_id = request(clarity, frequency="minute", window=timedelta(hours=2))
        assert len(clarity.report_files(report_id)) == 3
        original = ClarityHook.open_report_files

        def expire_after_each_file(self: ClarityHook, *args: Any, **kwargs: Any) -> Iterator[Any]:
            for report_file in original(self, *args, **kwargs):
                yield report_file
                clarity.expire_urls_now()  # the next file's url is refused with HTTP 403

        monkeypatch.setattr(ClarityHook, "open_report_files", expire_after_each_file)
        expected = expected_points(clarity, report_id)
        result = transfer(report_id)

        assert stored(clarify) == expected
        assert_result(result, expected, clarify, clarity.report_table(report_id).num_rows)
        downloads = [r.status for r in clarity.store.requests]
        assert downloads.count(403) == 2
        assert downloads.count(200) == 3


def test_zero_row_report(clarity: ClaritySandbox, clarify: ClarifySandbox) -> None:
    # No hour starts inside [00:10, 00:50): the report has a header and no rows.
    report_id = request(
        clarity, frequency="hour", start=T0 + timedelta(minutes=10), window=timedelta(minutes=40)
    )
    assert clarity.report_table(report_id).num_rows == 0
    result = transfer(report_id)
    assert result == {"signals": 0, "created": 0, "points": 0, "rows": 0, "requests": 0}
    assert clarify.rpc_calls() == []


def test_running_twice_stores_the_same_points_once(clarity: ClaritySandbox, clarify: ClarifySandbox) -> None:
    report_id = request(clarity, frequency="minute", file_format="parquet")
    expected = expected_points(clarity, report_id)
    first = transfer(report_id)
    after_first = stored(clarify)
    saves = len(clarify.rpc_calls("integration.saveSignals"))
    second = transfer(report_id)
    assert stored(clarify) == after_first == expected
    assert second == {**first, "created": 0}
    assert first["created"] == len(expected)
    assert len(clarity.reports) == 1  # only the report this test requested: none requested by the transfer
    assert len(clarify.rpc_calls("integration.saveSignals")) == saves  # unchanged metadata is not re-sent


# -- metadata ----------------------------------------------------------------------------------------------
def test_metadata_of_the_signals(clarity: ClaritySandbox, clarify: ClarifySandbox) -> None:
    report_id = request(clarity, frequency="hour", window=timedelta(days=1))
    transfer(report_id)
    datasource = clarity.fleet()[0]
    signal = clarify.signal(f"{datasource.datasource_id}.pm2_5ConcMass1HourMean")
    assert signal["name"] == f"PM2.5 mass concentration, 1-hour mean — {datasource.datasource_id}"
    assert signal["engUnit"] == "µg/m³"
    assert signal["sampleInterval"] == "PT1H"
    assert signal["sourceType"] == "aggregation"
    assert signal["labels"] == {
        "org": [clarity.org],
        "datasource": [datasource.datasource_id],
        "source": [datasource.source_id],
        "sourceType": [datasource.source_type],
        "metric": ["pm2_5ConcMass1HourMean"],
        "frequency": ["hour"],
    }
    aqi = clarify.signal(f"{datasource.datasource_id}.pm2_5ConcMassNowcastUsEpaAqi")
    assert aqi["name"] == f"PM2.5 mass concentration, NowCast, US EPA AQI — {datasource.datasource_id}"
    assert aqi["engUnit"] == ""
    assert all(not s["name"].startswith(s["input"]) for s in clarify.signals().values())


def test_metadata_of_minute_node_signals(clarity: ClaritySandbox, clarify: ClarifySandbox) -> None:
    report_id = request(clarity, report="node-measurements", frequency="minute", window=timedelta(hours=1))
    transfer(report_id, org=clarity.org)
    node = clarity.node_ids[0]
    signal = clarify.signal(f"{node}.temperatureInternalIndividual")
    assert signal["name"] == f"Temperature (internal) — {node}"
    assert signal["engUnit"] == "°C"
    assert signal["sampleInterval"] is None  # irregular readings
    assert signal["sourceType"] == "measurement"
    assert signal["labels"]["frequency"] == ["minute"]
    assert "datasource" not in signal["labels"]
    assert signal["labels"]["source"] == [node]


def test_save_metadata_false_saves_nothing(clarity: ClaritySandbox, clarify: ClarifySandbox) -> None:
    report_id = request(clarity, frequency="day", window=timedelta(days=3))
    transfer(report_id, save_metadata=False)
    assert clarify.rpc_calls("integration.saveSignals") == []
    assert all(s["name"] == s["input"] for s in clarify.signals().values())


# -- requests ----------------------------------------------------------------------------------------------
@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[str, ...], int]]:
    """(keys, body size) of every insert request the hook sends, in order."""
    requests: list[tuple[tuple[str, ...], int]] = []
    original = clarify_module.insert_requests

    def record(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for item in original(*args, **kwargs):
            requests.append((item.keys, len(item.body)))
            yield item

    monkeypatch.setattr(clarify_module, "insert_requests", record)
    return requests


def test_minute_report_requests_fill_the_budget(
    clarity: ClaritySandbox, clarify: ClarifySandbox, sent: list[tuple[tuple[str, ...], int]]
) -> None:
    budget = 8 * 1024
    report_id = request(clarity, frequency="minute", window=timedelta(days=1))
    expected = expected_points(clarity, report_id)
    # Small batches: the parser yields ~80-row frames per source, each far below one request.
    result = transfer(report_id, max_request_bytes=budget, batch_rows=500)

    assert stored(clarify) == expected
    assert [size for _, size in sent] == [r.body_bytes for r in inserts(clarify)]
    per_group: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for keys, size in sent:
        assert len({key.split(".")[0] for key in keys}) == 1  # sources with their own times never mix
        per_group[tuple(sorted(keys))].append(size)
    assert {keys[0].split(".")[0] for keys in per_group} == set(clarity.datasource_ids)
    for keys, sizes in per_group.items():
        # Every request of a series group (a source's series with the same reading times) is nearly
        # full, except its last one.
        assert all(size >= 0.5 * budget for size in sizes[:-1]), (keys, sizes)
    assert sum(len(sizes) > 1 for sizes in per_group.values()) >= len(clarity.datasource_ids)
    total = sum(size for _, size in sent)
    assert result["requests"] <= total // budget + len(per_group)


def test_hour_report_sources_share_requests(
    clarity: ClaritySandbox, clarify: ClarifySandbox, sent: list[tuple[tuple[str, ...], int]]
) -> None:
    report_id = request(clarity, frequency="hour", window=timedelta(days=2))
    expected = expected_points(clarity, report_id)
    result = transfer(report_id, batch_rows=100)  # one source per parser frame
    assert stored(clarify) == expected
    # Every source has the same hours, so their series travel together instead of one request per source
    # (a series with more than 10 % of the hours missing goes separately: the grouping rule of payload).
    assert result["requests"] == len(sent) < len(clarity.datasource_ids)
    assert {key.split(".")[0] for key in sent[0][0]} == set(clarity.datasource_ids)


# -- errors ------------------------------------------------------------------------------------------------
def test_english_labels_fail_clearly_before_downloading(
    clarity: ClaritySandbox, clarify: ClarifySandbox
) -> None:
    report_id = request(clarity, metric_label_style="english")
    with pytest.raises(ValueError, match="metric_label_style") as err:
        transfer(report_id)
    assert "canonical" in str(err.value)
    assert clarity.store.requests == []
    assert clarify.rpc_calls() == []


def test_failed_report_raises_with_clarity_message(clarity: ClaritySandbox, clarify: ClarifySandbox) -> None:
    clarity.fail_next_reports(1, message="Report generation failed: out of cheese")
    report_id = request(clarity)
    with pytest.raises(ClarityReportFailedError, match="out of cheese"):
        transfer(report_id)
    assert clarify.rpc_calls() == []


def test_unfinished_report_raises(monkeypatch: pytest.MonkeyPatch, clarify: ClarifySandbox) -> None:
    with ClaritySandbox(report_delay=3600.0) as clarity:
        monkeypatch.setenv("AIRFLOW_CONN_CLARITY_DEFAULT", clarity.connection_json())
        report_id = request(clarity)
        with pytest.raises(AirflowException, match=r"'in-progress'.*ClarityReportSensor"):
            transfer(report_id)
    assert clarify.rpc_calls() == []


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"report_id": ""}, "report_id"),
        ({"report_id": {"status": "succeeded"}}, "report_id"),
        ({"metrics": ["PM 2.5 mass concentration"]}, "metrics"),
        ({"attributes": ("status",)}, "attributes"),
        ({"attributes": ("raw", "value"), "key_template": "{id}.{metric}"}, "key_template"),
        ({"key_template": "{id} {metric}"}, "key_template"),
        ({"key_template": "{device}.{metric}"}, "key_template"),
        ({"timestamp": "middle"}, "timestamp"),
        ({"batch_rows": 0}, "batch_rows"),
        ({"max_request_bytes": 9 * 1024 * 1024}, "max_request_bytes"),
        ({"requests_per_second": -1}, "requests_per_second"),
        ({"org": " "}, "org"),
        ({"integration_id": "not-an-integration"}, "integration_id"),
    ],
)
def test_bad_options_fail_before_any_request(
    clarity: ClaritySandbox, clarify: ClarifySandbox, options: dict[str, Any], param: str
) -> None:
    options = {"report_id": "JB00000001", **options}
    with pytest.raises(ValueError, match=param):
        ClarityReportToClarifyOperator(task_id="t", **options).execute(context={})  # type: ignore[arg-type]
    assert clarity.api.requests == []
    assert clarify.requests == []


def test_report_id_from_the_sensor_summary(clarity: ClaritySandbox, clarify: ClarifySandbox) -> None:
    report_id = request(clarity, frequency="day", window=timedelta(days=2))
    summary = {"report_id": report_id, "status": "succeeded", "report": "datasource-measurements"}
    result = transfer(summary)  # type: ignore[arg-type]
    assert stored(clarify) == expected_points(clarity, report_id)
    assert result["rows"] == clarity.report_table(report_id).num_rows


def test_no_signed_url_or_secret_in_logs(
    clarity: ClaritySandbox, clarify: ClarifySandbox, capfd: pytest.CaptureFixture[str]
) -> None:
    report_id = request(clarity, frequency="hour", window=timedelta(days=1))
    capfd.readouterr()
    transfer(report_id)
    out, err = capfd.readouterr()
    text = out + err
    assert f"{report_id}.csv.gz" in text  # files are named in the progress log ...
    assert "Reading file 1 of report" in text
    for secret in ("X-Amz-Signature", "X-Amz-Credential", clarity.api_key, clarify.password):
        assert secret not in text  # ... never with their signature, and no credential at all


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_corrupt_file_is_named_in_the_error(
    clarity: ClaritySandbox, clarify: ClarifySandbox, file_format: str
) -> None:
    report_id = request(clarity, frequency="minute", file_format=file_format)
    path = clarity.report_files(report_id)[0]
    data = bytearray(path.read_bytes())
    # Same size, so the download itself is complete: deflate data in the middle of the gzip file, the
    # footer (metadata) at the end of the Parquet file.
    at = len(data) - 72 if file_format == "parquet" else len(data) // 2
    data[at : at + 64] = bytes(range(64))
    path.write_bytes(bytes(data))
    with pytest.raises(AirflowException, match="is corrupt or truncated") as err:
        transfer(report_id)
    assert f"report file {path.name} (" in str(err.value)
    assert f"of report {report_id}" in str(err.value)


# -- ClarifyHook.insert_frames -----------------------------------------------------------------------------
def minute_frame(key: str, start: int, count: int) -> Frame:
    times = np.array([int((T0 - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1e6)], dtype=np.int64)
    times = times[0] + (start + np.arange(count, dtype=np.int64)) * 60_000_000
    return Frame(times=times, series={key: np.arange(count, dtype=np.float64) + 0.25})


def test_insert_frames_failure_says_what_all_frames_stored(clarify: ClarifySandbox) -> None:
    hook = ClarifyHook(requests_per_second=None, max_request_bytes=8 * 1024, retry_limit=0)
    frames = [minute_frame("a", 0, 400), minute_frame("b", 0, 400), minute_frame("c", 0, 400)]

    def stream() -> Iterator[Frame]:
        for number, item in enumerate(frames):
            if number == 2:  # the third frame's first request will be refused
                # The hook sends from its own thread while it pulls the next frame: wait until the four
                # requests of the first two frames are in, so the error is for the third frame's first.
                deadline = time.monotonic() + 30
                while len(inserts(clarify)) < 4 and time.monotonic() < deadline:
                    time.sleep(0.01)
                clarify.rpc_error_next(1, code=-32602, message="Invalid params")
            yield item

    with pytest.raises(ClarifyRPCError) as err:
        hook.insert_frames(stream())
    calls = inserts(clarify)
    done = calls[:-1]
    values = sum(c.info["points"] for c in done)
    assert values == len(clarify.points("a")) + len(clarify.points("b")) == 800
    text = str(err.value)
    assert (
        f"insert request {len(calls)} failed; {len(done)} earlier request(s) were stored: {values} of 1200 "
        "values read so far (from 3 frames) of 2 series between 2024-03-01T00:00:00Z and 2024-03-01T06:39:00Z"
    ) in text
    assert "The failed request carried 1 series [c] from 2024-03-01T00:00:00Z" in text


def test_insert_frames_notes_progress_when_the_input_fails(clarify: ClarifySandbox) -> None:
    hook = ClarifyHook(requests_per_second=None)

    def stream() -> Iterator[Frame]:
        yield minute_frame("a", 0, 10)
        raise ValueError("report file row 7: 'time' is empty")

    with pytest.raises(ValueError, match="row 7") as err:
        hook.insert_frames(stream())
    assert err.value.__notes__ == [
        "Before this error 1 earlier request(s) were stored: 10 of 10 values of 1 series between "
        "2024-03-01T00:00:00Z and 2024-03-01T00:09:00Z."
    ]
    assert len(clarify.points("a")) == 10


def test_insert_frames_sums_over_frames(clarify: ClarifySandbox) -> None:
    hook = ClarifyHook(requests_per_second=None)
    first, second = minute_frame("a", 0, 5), minute_frame("a", 5, 5)
    summary = hook.insert_frames(iter([first, second, minute_frame("b", 0, 3)]))
    assert (summary.requests, summary.points, sorted(summary.signals)) == (3, 13, ["a", "b"])
    assert all(entry["created"] for entry in summary.signals.values())
    assert len(clarify.points("a")) == 10
