"""Pure logic of the recent-measurements sync: request bodies, answers, pivoting, frames, state, windows.

No HTTP and no Airflow here. The frames of both answer formats are checked against the report parser's
reading of the same rows written as a report file, so keys, QC filtering and facts cannot drift apart.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from airflow_provider_clarify.utils.recent import (
    CACHE_EDGE_MARGIN,
    RecentAnswer,
    SyncState,
    build_recent_query,
    cache_start,
    check_key_template,
    json_long_table,
    lost_period,
    metric_select_for,
    parse_recent_answer,
    query_options_hash,
    recent_frames,
    recovery_start,
    sync_identity,
    time_range,
)
from airflow_provider_clarify.utils.report_parsing import ReportParser, signal_metadata

T = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
PM = "pm2_5ConcMassIndividual"
NO2 = "no2ConcIndividual"


def entry(ds: str, time: str, metric: str, raw: Any, value: Any, qc: str | None = "valid") -> dict[str, Any]:
    row = {"datasourceId": ds, "time": time, "metric": metric, "raw": raw, "value": value, "status": "x"}
    if qc is not None:
        row["qcAssessment"] = qc
    return row


# -- request bodies ------------------------------------------------------------------------------------
def test_query_body() -> None:
    body = build_recent_query(
        org=" myorgVD43 ",
        datasource_ids=["DAAAA1111", "DBBBB2222", "DAAAA1111"],
        output_frequency="hour",
        response_format="csv-wide",
        start_time="2030-06-01T14:00:00+02:00",
        metric_select=" only pm2_5* ",
        qc_assessment=True,
    )
    assert body == {
        "org": "myorgVD43",
        "datasourceIds": ["DAAAA1111", "DBBBB2222"],
        "outputFrequency": "hour",
        "format": "csv-wide",
        "startTime": "2030-06-01T12:00:00.000Z",
        "metricSelect": "only pm2_5*",
        "qcAssessment": True,
        "qcFlags": False,
        "replyWithContinuationToken": True,
    }
    everything = build_recent_query(org="o", all_datasources=True, continuation=False)
    assert everything == {
        "org": "o",
        "allDatasources": True,
        "outputFrequency": "minute",
        "format": "json-long",
        "qcAssessment": False,
        "qcFlags": False,
        "replyWithContinuationToken": False,
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"org": ""}, "org: no organization"),
        ({"datasource_ids": None}, "datasource_ids: recent measurements need a list"),
        ({"all_datasources": True}, "datasource_ids: give either"),
        ({"datasource_ids": "DAAAA1111"}, "datasource_ids: expected a list of ids"),
        ({"datasource_ids": ["DAAAA1111", " "]}, r"datasource_ids\[1\]: expected a non-empty id"),
        ({"output_frequency": "week"}, "output_frequency: 'week' is not one of"),
        ({"response_format": "parquet-wide"}, "response_format: 'parquet-wide' is not one of"),
        ({"start_time": "yesterday"}, "start_time: 'yesterday' is not an ISO 8601 time"),
        ({"qc_assessment": "yes"}, "qc_assessment: expected True or False"),
        ({"metric_select": "  "}, "metric_select: expected a non-empty"),
    ],
)
def test_bad_query_input(changes: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"org": "o", "datasource_ids": ["DAAAA1111"], **changes}
    with pytest.raises(ValueError, match=message):
        build_recent_query(**arguments)


def test_metric_select_for_and_key_template_check() -> None:
    assert metric_select_for(None) is None
    assert metric_select_for(PM) == f"only {PM}"
    assert metric_select_for([PM, NO2, PM]) == f"only {PM} + {NO2}"
    check_key_template(None, "json-long")
    check_key_template("{source_id}.{metric}", "csv-wide")
    check_key_template("{id}/{metric}", "json-long")
    with pytest.raises(ValueError, match=r"uses \{source_id\}, \{source_type\}, which json-long"):
        check_key_template("{source_type}.{source_id}.{metric}", "json-long")


# -- answers -------------------------------------------------------------------------------------------
def test_json_answer() -> None:
    document = {
        "request": {"org": "o"},
        "data": [entry("DAAAA1111", "2030-06-01T11:58:00.000Z", PM, 12.5, 10.0)],
        "locations": [{"datasourceId": "DAAAA1111", "lat": 1.0, "lon": 2.0}],
    }
    answer = parse_recent_answer(
        json.dumps(document).encode(),
        content_type="application/json; charset=utf-8",
        token="tok-123456",
        server_time=T,
    )
    assert answer.response_format == "json-long"
    assert answer.rows == document["data"]
    assert answer.locations == document["locations"]
    assert answer.request == {"org": "o"}
    assert (answer.token, answer.server_time, answer.empty) == ("tok-123456", T, False)
    assert "tok-123456" not in repr(answer)
    empty = parse_recent_answer(b'{"request": {}, "data": []}', content_type=None, token="", server_time=None)
    assert (empty.response_format, empty.empty, empty.token, empty.locations) == ("json-long", True, None, [])


def test_csv_answer_and_malformed_answers() -> None:
    csv = parse_recent_answer(b"datasourceId,time\n", content_type="text/csv", token=None, server_time=None)
    assert (csv.response_format, csv.empty) == ("csv-wide", True)
    sniffed = parse_recent_answer(
        b"datasourceId,time\nD,2030\n", content_type=None, token=None, server_time=None
    )
    assert (sniffed.response_format, sniffed.empty) == ("csv-wide", False)
    for body, message in [
        (b"{nope", "not valid JSON"),
        (b"[1, 2]", "is a JSON list, not an object"),
        (b'{"data": {"a": 1}}', "of the wrong type"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_recent_answer(body, content_type="application/json", token=None, server_time=None)


def test_json_long_pivot() -> None:
    rows = [
        entry("DBBBB2222", "2030-06-01T11:59:10.000Z", PM, 20.0, None, qc=None),
        entry("DAAAA1111", "2030-06-01T11:59:00.000Z", PM, 12.5, 10.0),
        entry("DAAAA1111", "2030-06-01T11:59:00.000Z", NO2, 3, 4.5, qc="invalid"),
        entry("DAAAA1111", "2030-06-01T11:58:00.000Z", PM, 11.0, 9.0),
    ]
    table = json_long_table(rows, output_frequency="minute", metrics=[PM, "o3ConcIndividual"])
    assert table is not None
    assert table.column_names == [
        "datasourceId",
        "sourceId",
        "sourceType",
        "time",
        f"{NO2}.qcAssessment",
        f"{NO2}.raw",
        f"{NO2}.value",
        f"{PM}.qcAssessment",
        f"{PM}.raw",
        f"{PM}.value",
        "o3ConcIndividual.raw",  # asked for, nothing new: empty columns, not an error
        "o3ConcIndividual.value",
    ]
    assert table.to_pydict() == {
        "datasourceId": ["DBBBB2222", "DAAAA1111", "DAAAA1111"],
        "sourceId": [None, None, None],
        "sourceType": [None, None, None],
        "time": ["2030-06-01T11:59:10.000Z", "2030-06-01T11:59:00.000Z", "2030-06-01T11:58:00.000Z"],
        f"{NO2}.qcAssessment": [None, "invalid", None],
        f"{NO2}.raw": [None, 3.0, None],
        f"{NO2}.value": [None, 4.5, None],
        f"{PM}.qcAssessment": [None, "valid", "valid"],
        f"{PM}.raw": [20.0, 12.5, 11.0],
        f"{PM}.value": [None, 10.0, 9.0],
        "o3ConcIndividual.raw": [None, None, None],
        "o3ConcIndividual.value": [None, None, None],
    }
    assert json_long_table([], output_frequency="minute") is None


def test_json_long_pivot_of_hours_has_periods() -> None:
    table = json_long_table(
        [entry("DAAAA1111", "2030-06-01T10:00:00.000Z", "pm2_5ConcMass1HourMean", 5, 5)],
        output_frequency="hour",
    )
    assert table is not None
    assert table.column("startOfPeriod").to_pylist() == [datetime(2030, 6, 1, 10, tzinfo=UTC)]
    assert table.column("endOfPeriod").to_pylist() == [datetime(2030, 6, 1, 11, tzinfo=UTC)]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("text", r"data\[1\]: expected an object"),
        ({"time": "2030-06-01T00:00:00Z", "metric": PM}, r"data\[1\]: 'datasourceId' is missing"),
        (
            {"datasourceId": "D", "time": "2030-06-01T00:00:00Z", "metric": "PM 2.5"},
            r"data\[1\]: metric 'PM 2.5'",
        ),
        (entry("D", "2030-06-01T00:00:00Z", PM, "12", 1), r"data\[1\]: 'raw' is '12', not a number"),
        (entry("D", "2030-06-01T00:00:00Z", PM, 1, True), r"data\[1\]: 'value' is True"),
    ],
)
def test_json_long_pivot_names_the_bad_entry(bad: Any, message: str) -> None:
    rows = [entry("D", "2030-06-01T00:00:00Z", PM, 1, 1), bad]
    with pytest.raises(ValueError, match=message):
        json_long_table(rows, output_frequency="minute")


# -- frames: the same as the report parser's --------------------------------------------------------------
CSV = (
    "datasourceId,sourceId,sourceType,outputFrequency,time,locationLatitude,locationLongitude,"
    f"{NO2}.qcAssessment,{NO2}.raw,{NO2}.status,{NO2}.value,{PM}.qcAssessment,{PM}.raw,{PM}.status,{PM}.value\n"
    "DAAAA1111,AAAAAAAA,CLARITY_NODE,minute,2030-06-01T11:58:00.000Z,1,2,valid,3,s,4.5,valid,11,s,9\n"
    "DAAAA1111,AAAAAAAA,CLARITY_NODE,minute,2030-06-01T11:59:00.000Z,1,2,invalid,3,s,4.5,valid,12.5,s,10\n"
    "DBBBB2222,RBBBBBBB,REFERENCE_SITE,minute,2030-06-01T11:59:10.000Z,1,2,,,,,,20,s,\n"
)
JSON_ROWS = [  # the same readings, json-long, time-descending
    entry("DBBBB2222", "2030-06-01T11:59:10.000Z", PM, 20.0, None, qc=None),
    entry("DAAAA1111", "2030-06-01T11:59:00.000Z", NO2, 3, 4.5, qc="invalid"),
    entry("DAAAA1111", "2030-06-01T11:59:00.000Z", PM, 12.5, 10.0),
    entry("DAAAA1111", "2030-06-01T11:58:00.000Z", NO2, 3, 4.5),
    entry("DAAAA1111", "2030-06-01T11:58:00.000Z", PM, 11.0, 9.0),
]


def frames_by_key(frames: list[Any]) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for frame in frames:
        for key, values in frame.series.items():
            out.setdefault(key, {}).update(
                {int(t): float(v) for t, v in zip(frame.times, values, strict=True) if not np.isnan(v)}
            )
    return out


@pytest.mark.parametrize(
    ("options", "expected_keys"),
    [
        ({}, {f"DAAAA1111.{NO2}", f"DAAAA1111.{PM}"}),
        ({"attributes": ("raw", "value")}, None),
        ({"include_invalid": True}, None),
        ({"key_template": "clarity/{frequency}/{id}/{metric}"}, None),
        ({"metrics": [PM]}, {f"DAAAA1111.{PM}"}),
    ],
)
def test_json_long_and_csv_wide_give_the_report_parsers_frames(
    options: dict[str, Any], expected_keys: set[str] | None
) -> None:
    csv_parser = ReportParser(output_frequency="minute", **options)
    json_parser = ReportParser(output_frequency="minute", **options)
    from_csv = list(recent_frames(RecentAnswer("csv-wide", csv=CSV.encode()), csv_parser))
    from_json = list(recent_frames(RecentAnswer("json-long", rows=JSON_ROWS), json_parser))
    assert frames_by_key(from_json) == frames_by_key(from_csv)
    assert json_parser.stats.invalid_dropped == csv_parser.stats.invalid_dropped
    if expected_keys is not None:
        assert set(frames_by_key(from_json)) == expected_keys
    if not options:
        # The invalid NO2 value at 11:59 is dropped; the reference site has only a raw value (no "value").
        assert frames_by_key(from_json)[f"DAAAA1111.{NO2}"] == {
            int(datetime(2030, 6, 1, 11, 58, tzinfo=UTC).timestamp() * 1e6): 4.5
        }
        assert json_parser.stats.invalid_dropped == 1
    # The same signal metadata, but json-long knows no source ids (labels left out).
    views_csv = signal_metadata(csv_parser.facts, org="o")
    views_json = signal_metadata(json_parser.facts, org="o")
    assert views_json.keys() == views_csv.keys()
    for key, view in views_json.items():
        assert view["name"] == views_csv[key]["name"]
        assert view["engUnit"] == views_csv[key]["engUnit"]
        assert view["labels"]["frequency"] == ["minute"]
        assert "source" not in view["labels"]
        sources = {"DAAAA1111": "AAAAAAAA", "DBBBB2222": "RBBBBBBB"}
        assert views_csv[key]["labels"]["source"] == [sources[csv_parser.facts[key].id]]


def test_hour_answers_use_the_period_start_or_end() -> None:
    rows = [entry("DAAAA1111", "2030-06-01T10:00:00.000Z", "pm2_5ConcMass1HourMean", 5.0, 6.0)]
    for timestamp, hour in (("start", 10), ("end", 11)):
        parser = ReportParser(output_frequency="hour", timestamp=timestamp)
        (frame,) = recent_frames(RecentAnswer("json-long", rows=rows), parser)
        assert frame.times.tolist() == [int(datetime(2030, 6, 1, hour, tzinfo=UTC).timestamp() * 1e6)]
        assert parser.facts["DAAAA1111.pm2_5ConcMass1HourMean"].frequency == "hour"


def test_empty_answers_and_time_range() -> None:
    parser = ReportParser(output_frequency="minute")
    assert list(recent_frames(RecentAnswer("csv-wide", csv=b""), parser)) == []
    assert list(recent_frames(RecentAnswer("csv-wide", csv=CSV.splitlines()[0].encode()), parser)) == []
    assert list(recent_frames(RecentAnswer("json-long"), parser)) == []
    assert time_range([]) is None
    frames = list(recent_frames(RecentAnswer("json-long", rows=JSON_ROWS), parser))
    # Only loaded values count: the reference site's 11:59:10 reading has no calibrated value.
    assert time_range(frames) == (
        datetime(2030, 6, 1, 11, 58, tzinfo=UTC),
        datetime(2030, 6, 1, 11, 59, tzinfo=UTC),
    )
    raw = ReportParser(output_frequency="minute", attributes="raw")
    frames = list(recent_frames(RecentAnswer("json-long", rows=JSON_ROWS), raw))
    assert time_range(frames) == (
        datetime(2030, 6, 1, 11, 58, tzinfo=UTC),
        datetime(2030, 6, 1, 11, 59, 10, tzinfo=UTC),
    )


# -- state ----------------------------------------------------------------------------------------------
def test_state_round_trip_and_transitions() -> None:
    state = SyncState(token=None, issued_at=None, last_loaded_time=T, origin=T, options="abc")
    assert SyncState.from_json(state.to_json()) == state
    pending = state.pending(token="secret-token-1", issued_at=T, since=T + timedelta(minutes=1))
    assert (pending.pending_since, pending.last_loaded_time, pending.token) == (
        T + timedelta(minutes=1),
        T,
        "secret-token-1",
    )
    assert pending.pending(
        token="t2", issued_at=T, since=T + timedelta(minutes=5)
    ).pending_since == T + timedelta(minutes=1)  # the earliest unconfirmed time is kept
    loaded = pending.loaded(token="secret-token-1", issued_at=T, through=T + timedelta(minutes=9))
    assert (loaded.pending_since, loaded.last_loaded_time) == (None, T + timedelta(minutes=9))
    assert loaded.loaded(token=None, issued_at=None, through=None).last_loaded_time == T + timedelta(
        minutes=9
    )
    assert loaded.loaded(token=None, issued_at=None, through=T).last_loaded_time == T + timedelta(minutes=9)
    assert SyncState.from_json(loaded.to_json()) == loaded
    assert "secret-token-1" not in repr(loaded)
    assert json.loads(loaded.to_json())["last_loaded_time"] == "2030-06-01T12:09:00.000Z"
    for junk in (None, "[]", "{}", '{"last_loaded_time": "x", "origin": "y"}', 42):
        assert SyncState.from_json(junk) is None


def test_identity_and_options_hash() -> None:
    base: dict[str, Any] = {
        "dag_id": "d",
        "task_id": "t",
        "api_url": "https://clarity-data-api.clarity.io/",
        "org": "o",
        "datasource_ids": ["DB", "DA"],
        "all_datasources": False,
        "output_frequency": "minute",
    }
    same = sync_identity(
        **{**base, "datasource_ids": ["DA", "DB", "DA"], "api_url": base["api_url"].rstrip("/")}
    )
    assert sync_identity(**base) == same
    for change in ({"task_id": "u"}, {"org": "p"}, {"output_frequency": "hour"}, {"all_datasources": True}):
        assert sync_identity(**{**base, **change}) != same
    body = build_recent_query(org="o", all_datasources=True)
    assert query_options_hash(body) == query_options_hash({**body, "startTime": "x", "org": "p"})
    assert query_options_hash(body) != query_options_hash({**body, "format": "csv-wide"})


def test_recovery_start_and_lost_period() -> None:
    origin = T - timedelta(hours=3)
    last = T - timedelta(hours=1)
    assert recovery_start(
        last, origin=origin, overlap=timedelta(minutes=15), server_now=T, output_frequency="minute"
    ) == last - timedelta(minutes=15)
    # never before the first start
    assert (
        recovery_start(
            origin, origin=origin, overlap=timedelta(hours=1), server_now=T, output_frequency="minute"
        )
        == origin
    )
    # never before the cache edge
    late = T + timedelta(hours=30)
    edge = cache_start(late, "minute") + CACHE_EDGE_MARGIN
    assert edge == T + timedelta(hours=6, minutes=2)
    assert (
        recovery_start(last, origin=origin, overlap=timedelta(0), server_now=late, output_frequency="minute")
        == edge
    )
    assert (
        recovery_start(last, origin=origin, overlap=timedelta(0), server_now=late, output_frequency="hour")
        == last
    )
    assert cache_start(T, "day") == T - timedelta(days=10)

    assert lost_period(last, requested_start=edge, answered_at=late, output_frequency="minute") == (
        last,
        edge,
    )
    assert lost_period(last, requested_start=last, answered_at=late, output_frequency="hour") is None
    # the requested start looked fine by the worker's clock, but the server's cache had moved on
    assert lost_period(last, requested_start=last, answered_at=late, output_frequency="minute") == (
        last,
        T + timedelta(hours=6),
    )
    assert lost_period(last, requested_start=last, answered_at=None, output_frequency="minute") is None
