"""Pure report logic: validation, request body, identity hash, window, record classification, stored refs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pendulum
import pytest

from airflow_provider_clarify.utils.report_store import ReportRef, parse_ref, variable_key
from airflow_provider_clarify.utils.reports import (
    build_report_request,
    detect_file_kind,
    format_time,
    report_identity,
    report_outcome,
    report_summary,
    resolve_window,
    to_utc,
)

BASE = {
    "org": "myorgVD43",
    "report": "datasource-measurements",
    "output_frequency": "hour",
    "start": "2024-01-01T00:00:00Z",
    "end": "2024-01-02T00:00:00Z",
    "datasource_ids": ["DZJSI2879"],
}


def body(**changes: object) -> dict[str, object]:
    return build_report_request(**{**BASE, **changes})  # type: ignore[arg-type]


# -- times ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-01T00:00:00Z", "2024-01-01T00:00:00.000Z"),
        ("2024-01-01", "2024-01-01T00:00:00.000Z"),
        ("2024-01-01 02:30:00+02:00", "2024-01-01T00:30:00.000Z"),
        ("2024-07-30T22:25:56.579912Z", "2024-07-30T22:25:56.579Z"),
        (datetime(2024, 1, 1, 12, 0, 0, 123456), "2024-01-01T12:00:00.123Z"),  # naive = UTC
        (datetime(2024, 1, 1, 12, tzinfo=timezone(timedelta(hours=-5))), "2024-01-01T17:00:00.000Z"),
        (pendulum.datetime(2024, 3, 10, 8, tz="Europe/Oslo"), "2024-03-10T07:00:00.000Z"),
    ],
)
def test_times_are_sent_as_utc_with_milliseconds_and_z(value: object, expected: str) -> None:
    assert format_time(to_utc(value, param="start_time")) == expected  # type: ignore[arg-type]


def test_pendulum_and_plain_datetimes_give_identical_bodies() -> None:
    plain = body(start=datetime(2024, 1, 1, tzinfo=UTC), end=datetime(2024, 1, 2, tzinfo=UTC))
    pend = body(start=pendulum.datetime(2024, 1, 1), end=pendulum.datetime(2024, 1, 2))
    assert plain == pend
    assert pend["startTime"] == "2024-01-01T00:00:00.000Z"
    assert pend["endTime"] == "2024-01-02T00:00:00.000Z"


@pytest.mark.parametrize("value", ["yesterday", "2024-13-01", 1704067200, None])
def test_bad_times_name_the_parameter(value: object) -> None:
    with pytest.raises(ValueError, match=r"^start_time"):
        to_utc(value, param="start_time")  # type: ignore[arg-type]


# -- window --------------------------------------------------------------------------------------------
def test_window_is_the_data_interval_when_not_empty() -> None:
    start, end = resolve_window(
        None,
        None,
        interval_start=pendulum.datetime(2024, 5, 1),
        interval_end=pendulum.datetime(2024, 5, 2),
        lookback=timedelta(hours=3),
    )
    assert (format_time(start), format_time(end)) == ("2024-05-01T00:00:00.000Z", "2024-05-02T00:00:00.000Z")


def test_empty_data_interval_uses_lookback_before_its_end() -> None:
    logical = pendulum.datetime(2024, 5, 2, 6)
    start, end = resolve_window(
        None, None, interval_start=logical, interval_end=logical, lookback=timedelta(hours=6)
    )
    assert (format_time(start), format_time(end)) == ("2024-05-02T00:00:00.000Z", "2024-05-02T06:00:00.000Z")


def test_explicit_times_win_and_only_end_uses_lookback() -> None:
    interval = {
        "interval_start": pendulum.datetime(2024, 5, 1),
        "interval_end": pendulum.datetime(2024, 5, 2),
    }
    start, end = resolve_window(
        "2024-04-01T00:00:00Z", "2024-04-03T00:00:00Z", lookback=timedelta(days=1), **interval
    )
    assert (start.day, end.day) == (1, 3)
    start, end = resolve_window(None, "2024-04-03T00:00:00Z", lookback=timedelta(days=2), **interval)
    assert format_time(start) == "2024-04-01T00:00:00.000Z"
    start, end = resolve_window("2024-04-30T00:00:00Z", None, lookback=timedelta(days=2), **interval)
    assert (format_time(start), format_time(end)) == ("2024-04-30T00:00:00.000Z", "2024-05-02T00:00:00.000Z")


@pytest.mark.parametrize(
    ("start", "end", "lookback", "match"),
    [
        ("2024-01-02", "2024-01-01", timedelta(days=1), r"start_time/end_time: the start \(2024-01-02"),
        ("2024-01-01", "2024-01-01", timedelta(days=1), "must be before the end"),
        (None, None, timedelta(0), "^lookback"),
    ],
)
def test_window_errors(start: str | None, end: str | None, lookback: timedelta, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resolve_window(
            start, end, interval_start=None, interval_end=pendulum.datetime(2024, 1, 5), lookback=lookback
        )


def test_window_without_any_date_is_an_error() -> None:
    with pytest.raises(ValueError, match="no data interval"):
        resolve_window(None, None, interval_start=None, interval_end=None, lookback=timedelta(days=1))


# -- body ----------------------------------------------------------------------------------------------
def test_body_has_every_field_and_always_a_file_format() -> None:
    assert body() == {
        "org": "myorgVD43",
        "report": "datasource-measurements",
        "outputFrequency": "hour",
        "startTime": "2024-01-01T00:00:00.000Z",
        "endTime": "2024-01-02T00:00:00.000Z",
        "metricLabelStyle": "canonical",
        "fileFormat": "csv",
        "qcAssessment": False,
        "qcFlags": False,
        "datasourceIds": ["DZJSI2879"],
    }
    assert body(file_format="parquet-wide")["fileFormat"] == "parquet"


def test_body_for_each_report_type_takes_its_own_id_list() -> None:
    nodes = body(
        report="node-measurements", datasource_ids=None, node_ids=("AQQCNWJ6", "A3TM3GGL", "AQQCNWJ6")
    )
    assert nodes["nodeIds"] == ["AQQCNWJ6", "A3TM3GGL"]
    assert "datasourceIds" not in nodes
    sites = body(report="reference-site-measurements", datasource_ids=None, ref_site_ids=["RCR7X5QP"])
    assert sites["refSiteIds"] == ["RCR7X5QP"]
    everything = body(datasource_ids=None, all_datasources=True, metric_select="only pm2_5*", qc_flags=True)
    assert everything["allDatasources"] is True
    assert "datasourceIds" not in everything
    assert (everything["metricSelect"], everything["qcFlags"]) == ("only pm2_5*", True)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"report": "datasource"}, "^report: 'datasource' is not one of"),
        ({"output_frequency": "hourly"}, "^output_frequency: 'hourly'"),
        ({"metric_label_style": "fancy"}, "^metric_label_style"),
        ({"file_format": "xlsx"}, "^file_format"),
        ({"org": ""}, "^org"),
        ({"datasource_ids": None}, r"^datasource_ids: .*needs a list of ids \(or all_datasources=True\)"),
        ({"datasource_ids": "DZJSI2879"}, "^datasource_ids: expected a list of ids"),
        ({"datasource_ids": ["DZJSI2879", ""]}, r"^datasource_ids\[1\]"),
        (
            {"datasource_ids": ["DZJSI2879", 7]},
            r"^datasource_ids\[1\]: expected a non-empty id string, got 7",
        ),
        ({"datasource_ids": []}, "^datasource_ids: the list of ids is empty"),
        ({"all_datasources": True}, "either datasource_ids or all_datasources"),
        ({"node_ids": ["AQQCNWJ6"]}, "^node_ids: not used by report 'datasource-measurements'"),
        ({"report": "node-measurements"}, "^datasource_ids: not used by report 'node-measurements'"),
        (
            {
                "report": "node-measurements",
                "datasource_ids": None,
                "node_ids": ["A"],
                "all_datasources": True,
            },
            "^all_datasources: only datasource-measurements",
        ),
        ({"report": "reference-site-measurements", "datasource_ids": None}, "^ref_site_ids: report"),
        ({"qc_flags": "yes"}, "^qc_flags: expected True or False"),
        ({"metric_select": "  "}, "^metric_select"),
        ({"start": "2024-01-02", "end": "2024-01-01"}, "^start_time/end_time"),
    ],
)
def test_bad_requests_raise_value_error_naming_the_parameter(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        body(**changes)


# -- identity ------------------------------------------------------------------------------------------
def test_identity_ignores_id_order_and_aliases_but_not_what_defines_the_report() -> None:
    api = "http://127.0.0.1:1"
    one = report_identity(body(datasource_ids=["B", "A"]), api_url=api)
    assert one == report_identity(body(datasource_ids=["A", "B", "A"]), api_url=api)
    assert report_identity(body(file_format="csv-wide"), api_url=api) == report_identity(body(), api_url=api)
    different = [
        body(datasource_ids=["A"]),
        body(output_frequency="day"),
        body(end="2024-01-03"),
        body(org="other"),
        body(qc_assessment=True),
        body(metric_select="only pm2_5*"),
        body(file_format="parquet"),
        body(metric_label_style="english"),
        body(datasource_ids=None, all_datasources=True),
    ]
    hashes = {report_identity(b, api_url=api) for b in different} | {report_identity(body(), api_url=api)}
    assert len(hashes) == len(different) + 1
    assert report_identity(body(), api_url="http://127.0.0.1:2") != report_identity(body(), api_url=api)
    assert len(one) == 64


# -- records -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("record", "state", "message"),
    [
        ({"reportStatus": "in-progress", "message": "Processing", "urls": []}, "running", "Processing"),
        ({"reportStatus": "succeeded", "message": "Ready", "urls": ["u"]}, "succeeded", "Ready"),
        ({"reportStatus": "failed", "message": ["internal", "error"]}, "failed", "internal; error"),
        ({"reportStatus": "succeeded", "urls": []}, "invalid", "no download urls"),
        ({"reportStatus": "queued", "message": "Waiting"}, "invalid", "unknown reportStatus 'queued'"),
        ({"message": "?"}, "invalid", "unknown reportStatus None"),
    ],
)
def test_report_outcome(record: dict[str, object], state: str, message: str) -> None:
    outcome = report_outcome(record)
    assert outcome.state == state
    assert message in outcome.message


def test_summary_never_carries_urls() -> None:
    record = {
        "reportId": "JB1",
        "reportStatus": "succeeded",
        "report": "node-measurements",
        "urls": ["https://bucket/x.csv.gz?X-Amz-Signature=abc"],
        "urlsExpireAt": "2030-01-01T00:00:00.000Z",
    }
    summary = report_summary(record)
    assert summary == {
        "report_id": "JB1",
        "status": "succeeded",
        "report": "node-measurements",
        "urls_expire_at": "2030-01-01T00:00:00.000Z",
    }
    assert "Signature" not in json.dumps(summary)


@pytest.mark.parametrize(
    ("head", "kind"), [(b"\x1f\x8b\x08\x00", "gzip"), (b"PAR1", "parquet"), (b"data", "text"), (b"", "text")]
)
def test_detect_file_kind_by_magic_bytes(head: bytes, kind: str) -> None:
    assert detect_file_kind(head) == kind


# -- stored refs -----------------------------------------------------------------------------------------
def test_stored_refs_round_trip_and_age() -> None:
    now = datetime(2024, 1, 2, tzinfo=UTC)
    ref = parse_ref(json.dumps({"reportId": "JB1", "requested_at": "2024-01-01T12:00:00+00:00"}))
    assert ref == ReportRef("JB1", datetime(2024, 1, 1, 12, tzinfo=UTC))
    assert ref.is_fresh(now=now, max_age=timedelta(hours=13))
    assert not ref.is_fresh(now=now, max_age=timedelta(hours=12))
    assert variable_key("ab" * 32) == "clarity_report_" + ("ab" * 20)
    lost = parse_ref(json.dumps({"reportId": None, "requested_at": "2024-01-01T12:00:00+00:00"}))
    assert lost == ReportRef(None, datetime(2024, 1, 1, 12, tzinfo=UTC))


@pytest.mark.parametrize(
    "value",
    [
        None,
        "not json",
        "[]",
        '{"reportId": ""}',
        '{"reportId": 7, "requested_at": "2024-01-01T12:00:00+00:00"}',
        '{"reportId": "JB1", "requested_at": "2024-01-01"}',
        '{"reportId": null}',
    ],
)
def test_unusable_stored_values_are_ignored(value: str | None) -> None:
    assert parse_ref(value) is None
