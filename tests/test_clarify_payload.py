"""Request bodies for Clarify: time encoding, grouping, byte-budget chunking, save views (pure logic)."""

from __future__ import annotations

import itertools
import json
import math
from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np
import pytest

from airflow_provider_clarify.utils.frames import Frame, to_frame
from airflow_provider_clarify.utils.payload import (
    MAX_REQUEST_BYTES,
    check_budget,
    encode_times,
    group_series,
    insert_requests,
    merge_signals_by_input,
    request_sizes,
    save_signals_requests,
    value_widths,
)
from airflow_provider_clarify.utils.signals import (
    HASH_ANNOTATION,
    content_hash,
    format_duration,
    save_view,
    with_hash,
)

INTEGRATION = "sandb0c1ar1f00000001"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MINUTE = 60_000_000
T0 = 1_709_294_400_000_000  # 2024-03-01T12:00:00Z


def _decode_times(buffer: bytes) -> list[str]:
    return json.loads(b"[" + buffer[:-1] + b"]")


def _iso(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def _parse(text: str) -> int:
    return (datetime.fromisoformat(text) - EPOCH) // timedelta(microseconds=1)


def _decoded(requests: list) -> dict[str, dict[int, float]]:
    """key -> {µs: value} from request bodies; fails on a value sent twice."""
    points: dict[str, dict[int, float]] = {}
    for request in requests:
        body = json.loads(request.body)
        assert body["jsonrpc"] == "2.0"
        assert body["method"] == "integration.insert"
        assert body["params"]["integration"] == INTEGRATION
        data = body["params"]["data"]
        times = [_parse(t) for t in data["times"]]
        assert times == sorted(set(times)), "times must be sorted and unique"
        assert len(data["series"]) == len(request.keys)
        for key, values in data["series"].items():
            assert len(values) == len(times)
            for at, value in zip(times, values, strict=True):
                if value is not None:
                    assert at not in points.setdefault(key, {}), (key, at)
                    points[key][at] = value
    return points


def _expected(frame: Frame) -> dict[str, dict[int, float]]:
    return {
        key: {int(t): float(v) for t, v in zip(frame.times, values, strict=True) if not np.isnan(v)}
        for key, values in frame.series.items()
        if not np.isnan(values).all()
    }


def test_encode_times_matches_python_isoformat() -> None:
    rng = np.random.default_rng(7)
    us = np.sort(rng.integers(-62_135_596_800_000_000, 253_402_300_799_999_999, 5000))
    us = np.concatenate([[-62_135_596_800_000_000, -1, 0, 951_782_400_000_001, 253_402_300_799_999_999], us])
    buffer, width = encode_times(us)
    assert width == len('"2024-03-01T12:00:00.000000Z",')
    texts = _decode_times(buffer)
    for value, text in zip(us.tolist(), texts, strict=True):
        assert text == _iso(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ").rjust(27, "0"), value


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([T0, T0 + MINUTE], ["2024-03-01T12:00:00Z", "2024-03-01T12:01:00Z"]),
        ([T0, T0 + 1000], ["2024-03-01T12:00:00.000Z", "2024-03-01T12:00:00.001Z"]),
        ([T0, T0 + 1], ["2024-03-01T12:00:00.000000Z", "2024-03-01T12:00:00.000001Z"]),
        ([951_825_600_000_000], ["2000-02-29T12:00:00Z"]),
    ],
)
def test_encode_times_uses_the_shortest_exact_precision(values: list[int], expected: list[str]) -> None:
    buffer, width = encode_times(np.array(values, dtype=np.int64))
    assert _decode_times(buffer) == expected
    assert width == len(expected[0]) + 3


def test_values_round_trip_exactly() -> None:
    values = [0.1, 1 / 3, -0.0, 5e-324, 1.7976931348623157e308, 123456789.123456789, 2.0**53, -7.0]
    times = [T0 + i * MINUTE for i in range(len(values))]
    frame = to_frame({"times": [_iso(t) for t in times], "series": {"v": values}})
    [request] = list(insert_requests(frame, integration_id=INTEGRATION))
    sent = json.loads(request.body)["params"]["data"]["series"]["v"]
    assert sent == values
    assert [repr(a) for a in sent] == [repr(b) for b in values]


def _dense_and_sparse(n_minutes: int = 24 * 60) -> Frame:
    times = np.arange(n_minutes, dtype=np.int64) * MINUTE + T0
    dense = np.arange(n_minutes, dtype=np.float64) / 7
    hourly = np.full(n_minutes, np.nan)
    hourly[::60] = np.arange(len(hourly[::60]))
    gappy = dense * 2
    gappy[[5, 500, 1000]] = np.nan  # three gaps: still "the same axis"
    empty = np.full(n_minutes, np.nan)
    return Frame(times=times, series={"dense": dense, "hourly": hourly, "gappy": gappy, "empty": empty})


def test_grouping_keeps_sparse_series_apart_and_tolerates_a_few_gaps() -> None:
    frame = _dense_and_sparse()
    groups = group_series(frame)
    assert [g.keys for g in groups] == [("dense", "gappy"), ("hourly",)]
    assert len(groups[1].positions) == 24
    exact = group_series(frame, max_null_fraction=0)
    assert [g.keys for g in exact] == [("dense",), ("gappy",), ("hourly",)]
    with pytest.raises(ValueError, match="max_null_fraction"):
        group_series(frame, max_null_fraction=1)


def test_sparse_series_are_not_padded_with_nulls() -> None:
    frame = _dense_and_sparse()
    requests = list(insert_requests(frame, integration_id=INTEGRATION))
    hourly = [r for r in requests if "hourly" in r.keys]
    assert [r.keys for r in hourly] == [("hourly",)]
    data = json.loads(hourly[0].body)["params"]["data"]
    assert len(data["times"]) == 24
    assert None not in data["series"]["hourly"]
    total_nulls = sum(
        json.loads(r.body)["params"]["data"]["series"][k].count(None) for r in requests for k in r.keys
    )
    assert total_nulls == 3  # only the gaps of "gappy", which shares the dense axis
    assert "empty" not in {k for r in requests for k in r.keys}
    assert _decoded(requests) == _expected(frame)


def test_budget_is_respected_and_every_point_is_sent_once() -> None:
    rng = np.random.default_rng(3)
    n = 40_000
    times = np.sort(rng.choice(np.arange(n * 3, dtype=np.int64), n, replace=False)) * 1_000_123 + T0
    series = {f"site-{i}.pm2_5": rng.normal(10, 3, n) for i in range(6)}
    series["site-2.pm2_5"][rng.random(n) < 0.5] = np.nan  # half missing: its own group
    frame = Frame(times=times, series=series)
    budget = 256 * 1024
    requests = list(insert_requests(frame, integration_id=INTEGRATION, max_bytes=budget, request_id="abc"))
    assert len(requests) > 10
    assert all(len(r.body) <= budget for r in requests)
    assert max(len(r.body) for r in requests) > budget * 0.95  # filled, not split needlessly
    assert all(json.loads(r.body)["id"] == "abc" for r in requests)
    assert _decoded(requests) == _expected(frame)
    assert sum(r.points for r in requests) == frame.points
    for request in requests:
        data = json.loads(request.body)["params"]["data"]
        assert request.times == len(data["times"])
        assert request.start_us == _parse(data["times"][0])
        assert request.end_us == _parse(data["times"][-1])


def test_a_single_long_series_is_split_by_time_ranges() -> None:
    n = 200_000
    frame = Frame(times=np.arange(n, dtype=np.int64) * 1_000_000 + T0, series={"one": np.arange(n) * 0.5})
    requests = list(insert_requests(frame, integration_id=INTEGRATION, max_bytes=512 * 1024))
    assert len(requests) >= 10
    assert all(r.keys == ("one",) for r in requests)
    assert [r.start_us for r in requests] == sorted(r.start_us for r in requests)
    assert all(a.end_us < b.start_us for a, b in itertools.pairwise(requests))
    assert _decoded(requests) == _expected(frame)


def test_wide_groups_are_split_by_series() -> None:
    n, width = 50, 2000
    frame = Frame(
        times=np.arange(n, dtype=np.int64) * MINUTE + T0,
        series={f"sensor-{i:05d}.value": np.full(n, float(i)) for i in range(width)},
    )
    budget = 64 * 1024
    requests = list(insert_requests(frame, integration_id=INTEGRATION, max_bytes=budget))
    assert all(len(r.body) <= budget for r in requests)
    assert all(len(r.keys) < width for r in requests)
    assert _decoded(requests) == _expected(frame)


def _mixed_values(rng: np.random.Generator, n: int) -> np.ndarray:
    """Report-like decimals and every kind of float text: integers, long fractions, exponents, extremes."""
    values = np.concatenate(
        [
            np.round(rng.uniform(-500, 500, n), 2),
            np.round(rng.uniform(0, 5, n), 4) / 10.0 ** rng.integers(0, 5, n),
            rng.uniform(-1e3, 1e3, n),
            rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n),
            np.round(rng.uniform(0, 1e15, n), 1),
            rng.integers(-(2**53), 2**53, n).astype(np.float64),
            np.frombuffer(rng.bytes(8 * n), dtype=np.float64),
            [0.0, -0.0, 1e-3, 9.99e-4, 1e15, 999999999999999.9, 5e-324, 1.7976931348623157e308, 0.3, 1 / 3],
        ]
    )
    values[~np.isfinite(values)] = np.nan
    values[rng.random(len(values)) < 0.1] = np.nan
    return values


def test_value_widths_are_the_lengths_of_the_encoded_values() -> None:
    values = _mixed_values(np.random.default_rng(11), 20_000)
    # The bodies' encoder, one value at a time (NaN: null).
    encoded = [len(msgspec.json.encode(None if math.isnan(v) else v)) for v in values.tolist()]
    assert value_widths(values).tolist() == encoded
    assert value_widths(np.array([], dtype=np.float64)).tolist() == []


@pytest.mark.parametrize("budget", [4096, 16 * 1024, 256 * 1024])
def test_request_sizes_are_those_of_insert_requests(budget: int) -> None:
    rng = np.random.default_rng(5)
    n = 6000
    times = np.sort(rng.choice(np.arange(n * 3, dtype=np.int64), n, replace=False)) * 1_000 + T0  # ms
    values = _mixed_values(rng, n // 7)[:n]
    series = {f"site-{i}.pm2_5": np.roll(values, i * 13) for i in range(5)}
    series["site-1.pm2_5"][rng.random(n) < 0.5] = np.nan  # its own group
    series["site-3.pm2_5"][rng.random(n) < 0.05] = np.nan  # shares the axis, with nulls
    series.update({f"wide-{i:03d}.with-a-long-key-to-split-the-group": np.full(n, 1.5) for i in range(40)})
    frame = Frame(times=times, series=series)
    widths = {key: value_widths(column) for key, column in frame.series.items()}
    sized = list(request_sizes(frame, widths, integration_id=INTEGRATION, max_bytes=budget, request_id=7))
    built = list(insert_requests(frame, integration_id=INTEGRATION, max_bytes=budget, request_id=7))
    assert len(built) > 3
    assert len({r.keys for r in built}) > 2  # several groups, the wide one split by series
    assert [(r.keys, r.start_us, r.size) for r in sized] == [(r.keys, r.start_us, len(r.body)) for r in built]


def test_budget_limits() -> None:
    assert check_budget(MAX_REQUEST_BYTES) == MAX_REQUEST_BYTES
    for bad in (MAX_REQUEST_BYTES + 1, 100, 0, 4.5, True):
        with pytest.raises(ValueError, match="max_request_bytes"):
            check_budget(bad)  # type: ignore[arg-type]
    frame = Frame(times=np.array([T0]), series={"a": np.array([1.0])})
    with pytest.raises(ValueError, match="max_request_bytes"):
        list(insert_requests(frame, integration_id=INTEGRATION, max_bytes=9 * 1024 * 1024))


def test_empty_frames_send_nothing() -> None:
    assert list(insert_requests(to_frame({"times": [], "series": {}}), integration_id=INTEGRATION)) == []
    only_nulls = to_frame({"times": [_iso(T0)], "series": {"a": [None]}})
    assert list(insert_requests(only_nulls, integration_id=INTEGRATION)) == []


def test_merge_signals_by_input() -> None:
    merged: dict = {}
    merge_signals_by_input(merged, {"signalsByInput": {"a": {"id": "x", "created": True}}}, ["a"])
    merge_signals_by_input(
        merged, {"signalsByInput": {"a": {"id": "x", "created": False}, "b": {"id": "y"}}}, ["a", "b"]
    )
    assert merged == {"a": {"id": "x", "created": True}, "b": {"id": "y"}}
    with pytest.raises(ValueError, match="lacks signalsByInput entries"):
        merge_signals_by_input(merged, {"signalsByInput": {}}, ["c"])
    with pytest.raises(ValueError, match="no signalsByInput"):
        merge_signals_by_input(merged, {}, ["c"])


# -- signal metadata ----------------------------------------------------------------------------------
def test_save_view_is_complete_with_defaults() -> None:
    view = save_view("site-1.pm2_5", {"name": "PM2.5 — site 1", "labels": {"site": "1", "metric": ["pm2_5"]}})
    assert view == {
        "name": "PM2.5 — site 1",
        "description": "",
        "labels": {"site": ["1"], "metric": ["pm2_5"]},
        "engUnit": "",
        "valueType": "numeric",
        "enumValues": {},
        "sourceType": "measurement",
        "sampleInterval": None,
        "gapDetection": None,
        "annotations": {},
    }
    assert save_view("k", {})["name"] == "k"
    enum = save_view("k", {"type": "enum", "enumValues": {0: "off", "1": "on"}, "sampleInterval": "PT1M"})
    assert enum["valueType"] == "enum"
    assert enum["enumValues"] == {"0": "off", "1": "on"}
    assert save_view("k", {"gapDetection": timedelta(hours=2)})["gapDetection"] == "PT2H"


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"nmae": "x"}, r"'k' has unknown field\(s\) \['nmae'\]"),
        ({"name": ""}, r"'k' field 'name' must be a string of 1 to 100"),
        ({"name": "x" * 101}, r"field 'name'"),
        ({"labels": {"bad key!": ["x"]}}, r"field 'labels' key 'bad key!'"),
        ({"labels": {"a": [1]}}, r"value of 'a' must be a string or a list of strings"),
        ({"annotations": {"a": 1}}, r"field 'annotations' value of 'a' must be a string"),
        (
            {"sourceType": "aggregate"},
            r"field 'sourceType' must be one of measurement, aggregation, prediction",
        ),
        ({"valueType": "text"}, r"field 'valueType'"),
        ({"type": "enum", "valueType": "numeric"}, r"differs from valueType"),
        ({"enumValues": {10000: "x"}}, r"key 10000 must be an integer 0-9999"),
        ({"sampleInterval": "P1M"}, r"field 'sampleInterval' must be None, a timedelta or a fixed duration"),
        ({"sampleInterval": timedelta(0)}, r"field 'sampleInterval' a duration must be positive"),
    ],
)
def test_save_view_rejects_bad_metadata(metadata: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        save_view("k", metadata)


def test_content_hash_is_stable_and_ignores_its_own_annotation() -> None:
    view = save_view("k", {"name": "N", "labels": {"b": "2", "a": "1"}, "annotations": {"x": "1"}})
    reordered = save_view("k", {"annotations": {"x": "1"}, "labels": {"a": "1", "b": "2"}, "name": "N"})
    assert content_hash(view) == content_hash(reordered)
    hashed = with_hash(view)
    assert hashed["annotations"] == {"x": "1", HASH_ANNOTATION: content_hash(view)}
    assert content_hash(hashed) == content_hash(view)
    assert content_hash(save_view("k", {"name": "M"})) != content_hash(view)


def test_format_duration() -> None:
    assert format_duration(timedelta(seconds=30)) == "PT30S"
    assert format_duration(timedelta(days=1, hours=2, minutes=3, seconds=4.5)) == "P1DT2H3M4.5S"
    assert format_duration(timedelta(days=7)) == "P7D"


def test_save_signals_requests_respect_the_budget() -> None:
    views = {
        f"signal-{i}": with_hash(save_view(f"signal-{i}", {"description": "d" * 900})) for i in range(50)
    }
    budget = 8 * 1024
    requests = list(
        save_signals_requests(views, integration_id=INTEGRATION, create_only=True, max_bytes=budget)
    )
    assert len(requests) > 1
    assert all(len(r.body) <= budget for r in requests)
    sent: dict = {}
    for request in requests:
        body = json.loads(request.body)
        assert body["method"] == "integration.saveSignals"
        assert body["params"]["createOnly"] is True
        assert list(body["params"]["signalsByInput"]) == list(request.keys)
        sent.update(body["params"]["signalsByInput"])
    assert sent == views
    with pytest.raises(ValueError, match="alone is larger"):
        list(
            save_signals_requests(
                {"x": {"description": "d" * 9000}}, integration_id=INTEGRATION, max_bytes=budget
            )
        )
