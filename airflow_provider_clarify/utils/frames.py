"""Normalise and validate insert input into one columnar frame (pure logic: no Airflow, no HTTP).

:func:`to_frame` accepts what :meth:`ClarifyHook.insert` accepts -- a pandas DataFrame (``DatetimeIndex``
or a ``time`` column), a pyarrow Table or RecordBatch (a ``time`` column), or a Clarify data frame dict
``{"times": [...], "series": {key: [...]}}`` -- and returns a :class:`Frame`, or raises :class:`ValueError`
naming the parameter, the key and the position. Everything is checked here, before any request is sent.

Rules (SPEC §3.1, reference/clarify-api.md §3.1):

* **Keys** match ``^[a-zA-Z0-9\\-_:.#+/]{1,128}$`` (letters, digits and ``- _ : . # + /``) and are strings.
* **Times** may be timestamps (any unit, naive or tz-aware), dates, ISO 8601 strings, ``datetime``,
  pandas ``Timestamp`` or numpy ``datetime64``. They are converted to UTC; **a naive time is UTC**, never
  the worker's local zone. Numbers are refused (seconds or milliseconds would be a guess).
* **Precision**: Clarify stores microseconds, so times are kept as integer microseconds since the epoch.
  Digits below the microsecond are **dropped** (floored), not rejected: data that carries nanosecond noise
  (from float seconds, for example) still loads, and this is what the server's own resolution does.
  Years must lie in 0001..9999.
* **Values** must be numeric (integers, floats, decimals; booleans and strings are refused). ``NaN`` and
  nulls mean "no value" (sent as ``null``, or not sent at all, see :mod:`.payload`); ``±Inf`` is refused.
  Values are carried as float64, so integers beyond 2**53 lose precision, as they would in any JSON client.
* **Lengths**: every series has exactly as many values as there are times.
* **Duplicate timestamps** (the same instant twice, also after the time-zone conversion or the
  microsecond truncation) are merged deterministically: for each series, the **last non-null value in
  input order wins** (the same rule as Clarify applies to a later insert at the same time). The number of
  merged rows is reported in :attr:`Frame.duplicates` so the caller can log it.

The result is sorted by time, with unique times, ready for :mod:`.payload`.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    import pandas as pd

#: Input keys, as documented (``9-_`` read as the three characters, as every source describes it).
KEY_PATTERN = re.compile(r"[a-zA-Z0-9\-_:.#+/]{1,128}", re.ASCII)
#: Name of the time column of DataFrames (when the index is not a DatetimeIndex) and Tables.
TIME_COLUMN = "time"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
#: 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z in microseconds since the epoch.
MIN_US = -62_135_596_800_000_000
MAX_US = 253_402_300_799_999_999
_US_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 1}
# Matches strings that carry their own offset ("Z", "+01:00", "-0530", "+01").
_ZONE_SUFFIX = r"([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)$"
_REPR_MAX = 60
#: Element types of a Python list of times that pyarrow converts without guessing.
_TIME_TYPES = (str, date, np.datetime64)


@dataclass(frozen=True)
class Frame:
    """Validated insert data: one sorted, unique time axis and float64 series (NaN = no value).

    :param times: microseconds since the epoch (UTC), int64, strictly increasing.
    :param series: input key -> float64 values, one per time; NaN where there is no value.
    :param duplicates: how many input rows were merged into an earlier row with the same instant.
    """

    times: np.ndarray
    series: dict[str, np.ndarray]
    duplicates: int = 0

    @property
    def points(self) -> int:
        """The number of values (non-null cells) in the frame."""
        return int(sum(np.count_nonzero(~np.isnan(v)) for v in self.series.values()))

    def __len__(self) -> int:
        return len(self.times)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_MAX else text[: _REPR_MAX - 3] + "..."


def format_us(us: int) -> str:
    """An ISO 8601 UTC text for microseconds since the epoch (for error messages and logs).

    :param us: microseconds since the epoch.
    """
    if not MIN_US <= us <= MAX_US:
        return f"{us} µs since the epoch"
    return (_EPOCH + timedelta(microseconds=us)).isoformat().replace("+00:00", "Z")


def validate_key(key: Any, *, param: str = "data") -> str:
    """Check one input key.

    :param key: the key (a series name or a column name).
    :param param: the parameter name used in the error.
    :raises ValueError: when the key is not a string matching :data:`KEY_PATTERN`.
    """
    if not isinstance(key, str):
        raise ValueError(f"{param}: series key {_short(key)} must be a string")
    if not KEY_PATTERN.fullmatch(key):
        raise ValueError(
            f"{param}: series key {_short(key)} is not a valid Clarify input key "
            "(1-128 characters: letters, digits and - _ : . # + /)"
        )
    return key


# -- times ---------------------------------------------------------------------------------------------
def _check_range(us: np.ndarray, *, param: str, original: Any = None) -> None:
    bad = np.flatnonzero((us < MIN_US) | (us > MAX_US))
    if len(bad):
        index = int(bad[0])
        shown = _short(original[index]) if original is not None else format_us(int(us[index]))
        raise ValueError(f"{param}: times position {index} ({shown}) is outside the years 0001-9999")


def _first_null(array: pa.Array) -> int:
    return int(np.flatnonzero(np.asarray(array.is_null()))[0])


def _timestamps_to_us(array: pa.Array, *, param: str) -> np.ndarray:
    """int64 microseconds since the epoch from a pyarrow timestamp or date array (no nulls)."""
    if array.null_count:
        raise ValueError(f"{param}: times position {_first_null(array)} is missing (null)")
    if pa.types.is_date(array.type):
        days = array.cast(pa.date32()).cast(pa.int32()).to_numpy().astype(np.int64)
        return days * 86_400_000_000
    unit = array.type.unit
    raw = array.cast(pa.int64()).to_numpy()
    if unit == "ns":
        return np.floor_divide(raw, 1000)
    factor = _US_PER_UNIT[unit]
    limit = max(abs(MIN_US), MAX_US) // factor + 1
    if factor > 1 and len(raw) and (np.abs(raw) > limit).any():
        index = int(np.flatnonzero(np.abs(raw) > limit)[0])
        raise ValueError(f"{param}: times position {index} is outside the years 0001-9999")
    return raw * factor


def _parse_strings(array: pa.Array, *, param: str) -> np.ndarray:
    """Parse ISO 8601 strings (with or without offset; without = UTC) to int64 microseconds."""
    if array.null_count:
        raise ValueError(f"{param}: times position {_first_null(array)} is missing (null)")
    import pyarrow.compute as pc

    array = array.cast(pa.large_string())
    has_zone = np.asarray(pc.match_substring_regex(array, _ZONE_SUFFIX).fill_null(False), dtype=bool)
    out = np.empty(len(array), dtype=np.int64)
    for zoned in (True, False):
        where = np.flatnonzero(has_zone == zoned)
        if not len(where):
            continue
        part = array if len(where) == len(array) else array.take(pa.array(where))
        out[where] = _cast_strings(part, zoned=zoned, where=where, param=param)
    return out


def _cast_strings(part: pa.Array, *, zoned: bool, where: np.ndarray, param: str) -> np.ndarray:
    tz = "UTC" if zoned else None
    # ns first (accepts up to 9 fraction digits, years 1677-2262), then us (any year, up to 6 digits).
    for unit in ("ns", "us"):
        try:
            return _timestamps_to_us(part.cast(pa.timestamp(unit, tz)), param=param)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    for i, text in enumerate(part.to_pylist()):  # error path only: find the first bad string
        single = pa.array([text], pa.large_string())
        if not any(_casts(single, pa.timestamp(unit, tz)) for unit in ("ns", "us")):
            raise ValueError(
                f"{param}: times position {int(where[i])}: cannot parse {_short(text)} as an ISO 8601 time"
            )
    raise ValueError(f"{param}: times could not be parsed")  # pragma: no cover - every string parsed alone


def _casts(array: pa.Array, target: pa.DataType) -> bool:
    try:
        array.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _scalar_time_us(value: Any, index: int, *, param: str) -> int:
    """One Python time value to microseconds (the slow path for mixed sequences)."""
    if isinstance(value, str):
        return int(_parse_strings(pa.array([value]), param=param)[0])
    if isinstance(value, datetime):  # pandas Timestamp is a datetime subclass (keeps its nanoseconds)
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        try:
            return int((aware - _EPOCH) // _ONE_US)
        except OverflowError:
            raise ValueError(f"{param}: times position {index} ({_short(value)}) is out of range") from None
    if isinstance(value, date):
        return (date.fromordinal(value.toordinal()) - date(1970, 1, 1)).days * 86_400_000_000
    if isinstance(value, np.datetime64) and not np.isnat(value):
        return int(_timestamps_to_us(pa.array(np.array([value])), param=param)[0])
    if value is None or (isinstance(value, float) and math.isnan(value)) or isinstance(value, np.datetime64):
        raise ValueError(f"{param}: times position {index} is missing (null)")
    if isinstance(value, int | float | np.number):
        raise ValueError(
            f"{param}: times position {index} is the number {_short(value)}; numbers are ambiguous "
            "(seconds or milliseconds?): pass datetimes or ISO 8601 strings"
        )
    raise ValueError(
        f"{param}: times position {index} is {_short(value)}; expected a datetime or an ISO 8601 string"
    )


def times_to_us(values: Any, *, param: str = "data") -> np.ndarray:
    """Convert a sequence of times to int64 microseconds since the epoch (UTC), in input order.

    :param values: a pyarrow array, pandas Index/Series, numpy array or Python sequence of times.
    :param param: the parameter name used in errors.
    :raises ValueError: naming the first position that is missing, unparseable or out of range.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        array = values
    else:
        # pyarrow would read a stray number in a list of datetimes as microseconds: plain Python
        # sequences with anything but time types take the element-by-element path, which names it.
        plain = isinstance(values, list | tuple)
        try:
            if plain and not all(issubclass(t, _TIME_TYPES) for t in set(map(type, values))):
                raise TypeError("mixed types")
            array = pa.array(values, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError):
            sequence = list(values)
            result = np.array([_scalar_time_us(v, i, param=param) for i, v in enumerate(sequence)], np.int64)
            _check_range(result, param=param, original=sequence)
            return result
    kind = array.type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        result = _timestamps_to_us(array, param=param)
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        result = _parse_strings(array, param=param)
    elif pa.types.is_null(kind) and len(array) > 0:
        raise ValueError(f"{param}: times position 0 is missing (null)")
    elif pa.types.is_null(kind):
        result = np.empty(0, dtype=np.int64)
    elif pa.types.is_dictionary(kind):
        return times_to_us(array.dictionary_decode(), param=param)
    else:
        raise ValueError(
            f"{param}: times must be timestamps, dates or ISO 8601 strings, not {kind} "
            "(numbers are ambiguous: seconds or milliseconds?)"
        )
    _check_range(result, param=param)
    return result


# -- values --------------------------------------------------------------------------------------------
def _is_numeric_type(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_null(kind)
    )


def _scalar_value(value: Any) -> float | None:
    """One Python value as float (NaN for no value), or None when it is not numeric."""
    if value is None:
        return math.nan
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | float | Decimal | np.integer | np.floating):
        try:
            return float(value)
        except OverflowError:
            return None
    pd = sys.modules.get("pandas")
    if pd is not None and (value is pd.NA or value is pd.NaT):
        return math.nan
    return None


def _first_bool(values: Any) -> int | None:
    """Position of the first boolean among untyped values (lists, object arrays), else ``None``.

    pyarrow reads ``[1.0, 2.0, True]`` as doubles (``True`` becomes 1.0), so booleans hidden among
    numbers must be looked for before the conversion; typed arrays cannot hide one.
    """
    dtype = getattr(values, "dtype", None)
    if isinstance(values, pa.Array) or (dtype is not None and getattr(dtype, "kind", "O") != "O"):
        return None
    for i, item in enumerate(values):
        if isinstance(item, bool | np.bool_):
            return i
    return None


def values_to_float(values: Any, *, key: str, times_us: np.ndarray, param: str = "data") -> np.ndarray:
    """Convert one series to float64 (NaN = no value) and check it.

    :param values: a pyarrow array, pandas Series, numpy array or Python sequence.
    :param key: the input key (named in errors).
    :param times_us: the frame's times in input order (to name the time of a bad value).
    :param param: the parameter name used in errors.
    :raises ValueError: on a length mismatch, a non-numeric value or ±Inf, naming key and position.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    length = len(values)
    if length != len(times_us):
        raise ValueError(f"{param}: series {key!r} has {length} values but there are {len(times_us)} times")
    array: pa.Array | None
    if isinstance(values, pa.Array):
        array = values
    else:
        try:
            array = pa.array(values, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError):
            array = None
    if array is not None and pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    hidden_bool = _first_bool(values) if array is not None and _is_numeric_type(array.type) else None
    if hidden_bool is not None:
        raise ValueError(
            f"{param}: series {key!r} position {hidden_bool} (time {format_us(int(times_us[hidden_bool]))}): "
            f"value {values[hidden_bool]!r} is not numeric"
        )
    if array is not None and _is_numeric_type(array.type):
        result = np.asarray(array.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    else:
        sequence = array.to_pylist() if array is not None else list(values)
        floats = np.empty(length, dtype=np.float64)
        for i, item in enumerate(sequence):
            converted = _scalar_value(item)
            if converted is None:
                raise ValueError(
                    f"{param}: series {key!r} position {i} (time {format_us(int(times_us[i]))}): "
                    f"value {_short(item)} is not numeric"
                )
            floats[i] = converted
        result = floats
    infinite = np.flatnonzero(np.isinf(result))
    if len(infinite):
        i = int(infinite[0])
        raise ValueError(
            f"{param}: series {key!r} position {i} (time {format_us(int(times_us[i]))}): "
            f"value {result[i]} is not finite (±Inf cannot be stored)"
        )
    return result


# -- assembling ----------------------------------------------------------------------------------------
def _sort_and_merge(times: np.ndarray, series: dict[str, np.ndarray]) -> Frame:
    """Sort by time and merge duplicate instants (last non-null value in input order wins)."""
    if len(times) < 2 or bool(np.all(times[1:] > times[:-1])):
        return Frame(times=times, series=series)
    order = np.argsort(times, kind="stable")
    ordered = times[order]
    starts = np.empty(len(ordered), dtype=bool)
    starts[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    unique_times = ordered[starts]
    if len(unique_times) == len(ordered):
        return Frame(times=ordered, series={k: v[order] for k, v in series.items()})
    group = np.cumsum(starts) - 1
    merged: dict[str, np.ndarray] = {}
    for key, values in series.items():
        column = values[order]
        present = np.flatnonzero(~np.isnan(column))
        out = np.full(len(unique_times), np.nan)
        if len(present):
            groups = group[present]
            last = np.empty(len(present), dtype=bool)
            last[-1] = True
            np.not_equal(groups[1:], groups[:-1], out=last[:-1])
            out[groups[last]] = column[present[last]]
        merged[key] = out
    return Frame(times=unique_times, series=merged, duplicates=len(ordered) - len(unique_times))


def merge_frames(frames: Iterable[Frame]) -> Frame:
    """Combine validated frames into one sorted frame with unique times (pure, no validation repeated).

    The keys are the union of the frames' keys; a frame without a key has no value for it. Times may
    overlap and come in any order: an instant present more than once is merged with the same rule as
    :func:`to_frame` -- per series, the last non-null value in the order given wins (what Clarify does when
    the frames are inserted one after the other). :attr:`Frame.duplicates` adds to the frames' own count the
    rows that lose a value to a later frame here (frames of other keys at the same instants lose nothing).

    :param frames: frames as :func:`to_frame` or the report parser return them.
    """
    parts = [frame for frame in frames if len(frame)]
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return Frame(times=np.empty(0, dtype=np.int64), series={})
    keys = dict.fromkeys(key for frame in parts for key in frame.series)
    times = np.concatenate([frame.times for frame in parts])
    series = {
        key: np.concatenate(
            [frame.series[key] if key in frame.series else np.full(len(frame), np.nan) for frame in parts]
        )
        for key in keys
    }
    merged = _sort_and_merge(times, series)
    duplicates = sum(frame.duplicates for frame in parts)
    if merged.duplicates:  # equal instants; only rows that lose a value count (not other keys at that time)
        duplicates += _rows_superseded(times, series)
    return Frame(times=merged.times, series=merged.series, duplicates=duplicates)


def _rows_superseded(times: np.ndarray, series: dict[str, np.ndarray]) -> int:
    """How many rows (in input order) have a value that a later row replaces (same instant and key)."""
    order = np.argsort(times, kind="stable")
    ordered = times[order]
    lost = np.zeros(len(times), dtype=bool)
    for values in series.values():
        present = np.flatnonzero(~np.isnan(values[order]))
        at = ordered[present]
        lost[order[present[:-1][at[:-1] == at[1:]]]] = True
    return int(np.count_nonzero(lost))


def _build(times_source: Any, columns: Sequence[tuple[Any, Any]], *, param: str) -> Frame:
    times = times_to_us(times_source, param=param)
    series: dict[str, np.ndarray] = {}
    for key, values in columns:
        validate_key(key, param=param)
        if key in series:
            raise ValueError(f"{param}: series key {key!r} appears more than once")
        series[key] = values_to_float(values, key=key, times_us=times, param=param)
    return _sort_and_merge(times, series)


def _from_pandas(df: pd.DataFrame, *, param: str) -> Frame:
    import pandas as pd

    if isinstance(df.columns, pd.MultiIndex):
        raise ValueError(f"{param}: DataFrame columns must be flat input keys, not a MultiIndex")
    if TIME_COLUMN in df.columns:
        times_source: Any = df[TIME_COLUMN]
        names = [c for c in df.columns if c != TIME_COLUMN]
    elif isinstance(df.index, pd.DatetimeIndex):
        times_source = df.index
        names = list(df.columns)
    else:
        raise ValueError(f"{param}: a DataFrame needs a DatetimeIndex or a {TIME_COLUMN!r} column")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"{param}: series key {_short(dup)} appears more than once")
    return _build(times_source, [(n, df[n]) for n in names], param=param)


def _from_arrow(table: pa.Table, *, param: str) -> Frame:
    names = table.column_names
    if TIME_COLUMN not in names:
        raise ValueError(f"{param}: a pyarrow Table needs a {TIME_COLUMN!r} column, got {names[:10]}")
    if names.count(TIME_COLUMN) > 1:
        raise ValueError(f"{param}: the pyarrow Table has more than one {TIME_COLUMN!r} column")
    columns = [(n, table.column(i)) for i, n in enumerate(names) if n != TIME_COLUMN]
    if len({n for n, _ in columns}) != len(columns):
        dup = next(n for n, _ in columns if names.count(n) > 1)
        raise ValueError(f"{param}: series key {_short(dup)} appears more than once")
    return _build(table.column(TIME_COLUMN), columns, param=param)


def _from_dict(data: Mapping[Any, Any], *, param: str) -> Frame:
    unknown = sorted(str(k) for k in data if k not in ("times", "series"))
    if unknown:
        raise ValueError(
            f"{param}: unknown field(s) {unknown}; a Clarify data frame has 'times' and 'series'"
        )
    if "times" not in data or "series" not in data:
        raise ValueError(f"{param}: a Clarify data frame dict needs both 'times' and 'series'")
    times, series = data["times"], data["series"]
    if isinstance(times, str | bytes | Mapping) or not hasattr(times, "__len__"):
        raise ValueError(f"{param}: 'times' must be a list of times, not {type(times).__name__}")
    if not isinstance(series, Mapping):
        raise ValueError(
            f"{param}: 'series' must be a dict of input key -> values, not {type(series).__name__}"
        )
    for key, values in series.items():
        if isinstance(values, str | bytes | Mapping) or not hasattr(values, "__len__"):
            raise ValueError(
                f"{param}: series {_short(key)} must be a list of numbers, not {type(values).__name__}"
            )
    return _build(times, list(series.items()), param=param)


def to_frame(data: Any, *, param: str = "data") -> Frame:
    """Validate insert input and return it as a sorted, de-duplicated :class:`Frame`.

    :param data: a pandas DataFrame, a pyarrow Table or RecordBatch, or ``{"times": [...], "series": {...}}``.
    :param param: the parameter name used in errors.
    :raises ValueError: for anything Clarify would reject or that would be ambiguous (see module docstring).
    """
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    if isinstance(data, pa.Table):
        return _from_arrow(data, param=param)
    if isinstance(data, Mapping):
        return _from_dict(data, param=param)
    pd = sys.modules.get("pandas")  # only a DataFrame's owner has imported pandas already
    if pd is not None and isinstance(data, pd.DataFrame):
        return _from_pandas(data, param=param)
    raise ValueError(
        f"{param}: expected a pandas DataFrame, a pyarrow Table or a Clarify data frame dict "
        f"{{'times': [...], 'series': {{...}}}}, got {type(data).__name__}"
    )
