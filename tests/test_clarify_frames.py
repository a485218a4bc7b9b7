"""Input normalisation and validation for Clarify inserts (pure logic, no HTTP)."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from airflow_provider_clarify.utils.frames import format_us, times_to_us, to_frame, validate_key

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
T0_US = 1_709_294_400_000_000


def _us(dt: datetime) -> int:
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def test_pandas_datetime_index_tz_aware_is_converted_to_utc() -> None:
    index = pd.DatetimeIndex(["2024-03-01T13:00:00", "2024-03-01T13:01:00"]).tz_localize("Europe/Oslo")
    frame = to_frame(pd.DataFrame({"a": [1.0, 2.0]}, index=index))
    assert frame.times.tolist() == [T0_US, T0_US + 60_000_000]
    assert frame.series["a"].tolist() == [1.0, 2.0]


def test_naive_times_are_utc_not_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        naive = datetime(2024, 3, 1, 12, 0)
        assert to_frame({"times": [naive], "series": {"a": [1]}}).times.tolist() == [T0_US]
        assert to_frame({"times": ["2024-03-01T12:00:00"], "series": {"a": [1]}}).times.tolist() == [T0_US]
        df = pd.DataFrame({"a": [1.0]}, index=pd.DatetimeIndex([naive]))
        assert to_frame(df).times.tolist() == [T0_US]
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_time_column_in_dataframe_and_arrow_table() -> None:
    df = pd.DataFrame({"time": ["2024-03-01T12:00:00Z", "2024-03-01T12:00:01Z"], "x": [1, 2]})
    frame = to_frame(df)
    assert frame.times.tolist() == [T0_US, T0_US + 1_000_000]
    assert frame.series["x"].tolist() == [1.0, 2.0]
    table = pa.table({"time": pa.array([T0, T0 + timedelta(seconds=1)]), "x": pa.array([1, None])})
    frame = to_frame(table)
    assert frame.times.tolist() == [T0_US, T0_US + 1_000_000]
    assert frame.series["x"][0] == 1.0
    assert np.isnan(frame.series["x"][1])
    batch = table.to_batches()[0]
    assert to_frame(batch).times.tolist() == frame.times.tolist()


@pytest.mark.parametrize(
    "value",
    [
        "2024-03-01T12:00:00Z",
        "2024-03-01T13:00:00+01:00",
        "2024-03-01T07:00:00-0500",
        "2024-03-01 12:00:00",
        datetime(2024, 3, 1, 12, 0),
        datetime(2024, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
        pd.Timestamp("2024-03-01T12:00:00Z"),
        np.datetime64("2024-03-01T12:00:00"),
    ],
)
def test_every_time_type_parses(value: object) -> None:
    assert times_to_us([value]).tolist() == [T0_US]


def test_mixed_time_types_in_one_list() -> None:
    values = ["2024-03-01T12:00:00Z", datetime(2024, 3, 1, 12, 0, 1), np.datetime64("2024-03-01T12:00:02")]
    assert times_to_us(values).tolist() == [T0_US, T0_US + 1_000_000, T0_US + 2_000_000]
    assert times_to_us([date(2024, 3, 1), "2024-03-01T00:00:01Z"]).tolist() == [
        T0_US - 12 * 3_600_000_000,
        T0_US - 12 * 3_600_000_000 + 1_000_000,
    ]


def test_sub_microsecond_digits_are_dropped() -> None:
    assert times_to_us(["2024-03-01T12:00:00.123456789Z"]).tolist() == [T0_US + 123_456]
    assert times_to_us(pd.DatetimeIndex(["2024-03-01T12:00:00.000000999"])).tolist() == [T0_US]
    # floor, also before 1970
    assert times_to_us(np.array(["1969-12-31T23:59:59.999999999"], dtype="datetime64[ns]")).tolist() == [-1]


def test_far_dates_and_units() -> None:
    assert times_to_us(["9999-12-31T23:59:59.999999Z"]).tolist() == [253_402_300_799_999_999]
    assert times_to_us(["0001-01-01T00:00:00Z"]).tolist() == [-62_135_596_800_000_000]
    seconds = pa.array([1_709_294_400], pa.timestamp("s"))
    assert times_to_us(seconds).tolist() == [T0_US]
    millis = pa.array([1_709_294_400_001], pa.timestamp("ms", "UTC"))
    assert times_to_us(millis).tolist() == [T0_US + 1000]


def test_values_nan_and_nulls_mean_no_value() -> None:
    df = pd.DataFrame(
        {
            "f": [1.5, np.nan],
            "i": pd.array([1, None], dtype="Int64"),
            "F": pd.array([2.5, None], dtype="Float64"),
            "o": [Decimal("1.25"), None],
        },
        index=pd.DatetimeIndex([T0, T0 + timedelta(seconds=1)]),
    )
    frame = to_frame(df)
    for key, first in {"f": 1.5, "i": 1.0, "F": 2.5, "o": 1.25}.items():
        assert frame.series[key][0] == first
        assert np.isnan(frame.series[key][1]), key
    assert frame.points == 4
    dict_frame = to_frame({"times": [T0, T0 + timedelta(seconds=1)], "series": {"a": [None, float("nan")]}})
    assert dict_frame.points == 0


def test_unsorted_input_is_sorted() -> None:
    frame = to_frame({"times": ["2024-03-01T12:00:02Z", "2024-03-01T12:00:00Z"], "series": {"a": [2, 0]}})
    assert frame.times.tolist() == [T0_US, T0_US + 2_000_000]
    assert frame.series["a"].tolist() == [0.0, 2.0]


def test_duplicate_times_last_non_null_value_wins() -> None:
    frame = to_frame(
        {
            # 12:00Z three times (also as +01:00 and after truncating nanoseconds), 12:00:01Z once
            "times": [
                "2024-03-01T12:00:00Z",
                "2024-03-01T12:00:01Z",
                "2024-03-01T13:00:00+01:00",
                "2024-03-01T12:00:00.000000400Z",
            ],
            "series": {"a": [1, 5, 2, None], "b": [None, 6, None, None], "c": [7, None, None, 8]},
        }
    )
    assert frame.duplicates == 2
    assert frame.times.tolist() == [T0_US, T0_US + 1_000_000]
    assert frame.series["a"].tolist() == [2.0, 5.0]
    assert np.isnan(frame.series["b"][0])
    assert frame.series["b"][1] == 6.0
    assert frame.series["c"][0] == 8.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"times": [T0], "series": {"bad key": [1]}},
            r"series key 'bad key' is not a valid Clarify input key",
        ),
        ({"times": [T0], "series": {"k" * 129: [1]}}, r"is not a valid Clarify input key"),
        ({"times": [T0], "series": {"ok;": [1]}}, r"'ok;' is not a valid"),
        ({"times": [T0], "series": {5: [1]}}, r"series key 5 must be a string"),
        ({"times": [T0, T0], "series": {"a": [1]}}, r"series 'a' has 1 values but there are 2 times"),
        (
            {"times": [T0], "series": {"a": [float("inf")]}},
            r"series 'a' position 0 \(time 2024-03-01T12:00:00Z\)",
        ),
        (
            {"times": [T0, T0 + timedelta(hours=1)], "series": {"a": [1, -np.inf]}},
            r"series 'a' position 1 \(time 2024-03-01T13:00:00Z\): value -inf is not finite",
        ),
        ({"times": [T0, T0], "series": {"a": [1, "2"]}}, r"series 'a' position 1 .*value '2' is not numeric"),
        ({"times": [T0], "series": {"a": [True]}}, r"series 'a' position 0 .*value True is not numeric"),
        ({"times": [T0], "series": {"a": "1"}}, r"series 'a' must be a list of numbers"),
        (
            {"times": ["2024-03-01T12:00:00Z", "yesterday"], "series": {}},
            r"times position 1: cannot parse 'yesterday'",
        ),
        ({"times": [T0, None], "series": {}}, r"times position 1 is missing"),
        ({"times": [1_709_294_400], "series": {}}, r"numbers are ambiguous"),
        ({"times": [T0, 17], "series": {}}, r"times position 1 is the number 17; numbers are ambiguous"),
        ({"times": [T0, object()], "series": {}}, r"times position 1 is <object"),
        ({"times": ["10000-01-01T00:00:00Z"], "series": {}}, r"times position 0"),
        ({"times": [T0], "series": {}, "extra": 1}, r"unknown field"),
        ({"times": [T0]}, r"needs both 'times' and 'series'"),
        ({"times": "2024-03-01", "series": {}}, r"'times' must be a list"),
        ([1, 2, 3], r"expected a pandas DataFrame, a pyarrow Table or a Clarify data frame dict"),
    ],
)
def test_bad_input_is_rejected_naming_key_and_position(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_frame(data)


def test_bad_dataframes() -> None:
    with pytest.raises(ValueError, match="needs a DatetimeIndex or a 'time' column"):
        to_frame(pd.DataFrame({"a": [1]}))
    dup = pd.DataFrame([[1, 2]], columns=["a", "a"], index=pd.DatetimeIndex([T0]))
    with pytest.raises(ValueError, match="'a' appears more than once"):
        to_frame(dup)
    with pytest.raises(ValueError, match="must be a string"):
        to_frame(pd.DataFrame({0: [1.0]}, index=pd.DatetimeIndex([T0])))
    text = pd.DataFrame({"a": ["x"]}, index=pd.DatetimeIndex([T0]))
    with pytest.raises(ValueError, match=r"series 'a' position 0 \(time 2024-03-01T12:00:00Z\): value 'x'"):
        to_frame(text)
    with pytest.raises(ValueError, match="needs a 'time' column"):
        to_frame(pa.table({"t": [T0], "a": [1.0]}))


def test_validate_key_and_format_us() -> None:
    assert validate_key("site-1/pm2_5:avg.#+") == "site-1/pm2_5:avg.#+"
    assert format_us(T0_US + 5) == "2024-03-01T12:00:00.000005+00:00".replace("+00:00", "Z")
    assert format_us(_us(T0)) == "2024-03-01T12:00:00Z"
