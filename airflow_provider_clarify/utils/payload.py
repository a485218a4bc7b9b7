"""JSON-RPC request bodies for ``integration.insert`` and ``integration.saveSignals`` (pure logic).

The insert hot path, in three steps:

1. **Grouping** (:func:`group_series`). A series' *time axis* is the set of times where it has a value.
   Series with the same axis go together, so a request never carries a series padded with nulls over
   another series' times (a 1-minute and an hourly series end up in different requests). One relaxation
   keeps frames with occasional gaps from shattering into one request per gap pattern: a series joins a
   group whose axis it nearly shares when every member of the merged group still has values on at least
   ``1 - max_null_fraction`` (default 90 %) of its times *and* the nulls cost fewer bytes than repeating
   the times would. Series without any value are not sent (there is nothing to store).
2. **Encoding**. Times become fixed-width RFC 3339 UTC strings with ``Z`` and the shortest exact
   precision of the group (seconds, milliseconds or microseconds), written with numpy arithmetic; values
   are encoded once per series with msgspec (shortest round-trip float text, NaN -> ``null``). Byte
   offsets of every element are kept, so requests are cut from these buffers by slicing, never re-encoded.
3. **Chunking** (:func:`insert_requests`). Each group is cut into consecutive time ranges whose *whole*
   request body (JSON-RPC envelope included) stays within ``max_bytes``; sizes are exact, not estimated.
   A group whose single row would be too large a share of the budget is first split by series.
   :func:`request_sizes` makes the same cuts and gives the same sizes from the width of each value's text
   (:func:`value_widths`, mostly computed without writing the text), without building a body.

Bodies are produced lazily, one request at a time, so the caller can prepare the next body while it waits
for its rate-limit slot; memory stays at the encoded size of one group.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, TypeVar

import msgspec
import numpy as np

from airflow_provider_clarify.utils.frames import Frame, format_us

INSERT_METHOD = "integration.insert"
SAVE_SIGNALS_METHOD = "integration.saveSignals"
#: Clarify's documented request limit (about 8 MiB of JSON); budgets above it are refused.
MAX_REQUEST_BYTES = 8 * 1024 * 1024
#: Default budget per request (half the limit: room for the 15 s server time-out, see the API notes).
DEFAULT_REQUEST_BYTES = 4 * 1024 * 1024
#: Smallest budget accepted (below it the envelope and a few rows would not fit).
MIN_REQUEST_BYTES = 4 * 1024
DEFAULT_MAX_NULL_FRACTION = 0.1
#: A group is split by series when one row of it would exceed ``max_bytes // _MIN_ROWS_SHARE``.
_MIN_ROWS_SHARE = 16
_NULL_BYTES = len(b"null,")
_CANDIDATES = 8  # exact merge checks per group (after a vectorised pre-filter)

_encode = msgspec.json.encode
_COMMA = ord(",")
#: Bytes of a missing value's JSON text (``null``), as :func:`value_widths` counts it.
NULL_WIDTH = len(b"null")
#: The encoder writes magnitudes in this range as plain decimals (no exponent).
_POSITIONAL_MIN, _POSITIONAL_MAX = 1e-3, 1e15
_POWERS_OF_TEN = 10.0 ** np.arange(16)  # all exact
_EXACT_SCALED = 2.0**49


@dataclass(frozen=True)
class InsertRequest:
    """One ``integration.insert`` request body and what it carries.

    :param body: the complete JSON-RPC request body.
    :param keys: the input keys in it.
    :param start_us: its first time (µs since the epoch, UTC).
    :param end_us: its last time (µs since the epoch, UTC).
    :param times: how many timestamps it carries.
    :param points: how many values (non-null cells) it carries.
    """

    body: bytes
    keys: tuple[str, ...]
    start_us: int
    end_us: int
    times: int
    points: int

    def describe(self) -> str:
        """A one-line summary for logs and error messages (keys, time range, sizes)."""
        shown = ", ".join(self.keys[:5]) + (f" and {len(self.keys) - 5} more" if len(self.keys) > 5 else "")
        return (
            f"{len(self.keys)} series [{shown}] from {format_us(self.start_us)} to {format_us(self.end_us)} "
            f"({self.times} times, {self.points} values, {len(self.body)} bytes)"
        )


@dataclass(frozen=True)
class SeriesGroup:
    """Series that are sent on one time axis.

    :param keys: input keys, in input order.
    :param positions: indices into the frame's times where the group has at least one value.
    """

    keys: tuple[str, ...]
    positions: np.ndarray


def check_budget(max_bytes: int, *, param: str = "max_request_bytes") -> int:
    """Validate a request byte budget.

    :param max_bytes: the budget in bytes.
    :param param: the parameter name used in the error.
    :raises ValueError: unless ``MIN_REQUEST_BYTES <= max_bytes <= MAX_REQUEST_BYTES``.
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
        raise ValueError(f"{param} must be an integer number of bytes, got {max_bytes!r}")
    if not MIN_REQUEST_BYTES <= max_bytes <= MAX_REQUEST_BYTES:
        raise ValueError(
            f"{param} must be between {MIN_REQUEST_BYTES} and {MAX_REQUEST_BYTES} (Clarify's ~8 MiB limit), "
            f"got {max_bytes}"
        )
    return max_bytes


def rpc_envelope(method: str, request_id: str | int) -> tuple[bytes, bytes]:
    """The bytes before and after the params object of a JSON-RPC 2.0 request.

    :param method: the JSON-RPC method.
    :param request_id: the request id (echoed back by the server).
    """
    head = b'{"jsonrpc":"2.0","method":' + _encode(method) + b',"id":' + _encode(request_id) + b',"params":'
    return head, b"}"


# -- grouping ------------------------------------------------------------------------------------------
@dataclass
class _Cluster:
    positions: np.ndarray
    keys: list[str]
    min_count: int


def _exact_groups(frame: Frame) -> list[tuple[list[str], np.ndarray]]:
    """Series grouped by identical time axes, largest axis first (ties: input order)."""
    n = len(frame.times)
    by_axis: dict[bytes, tuple[list[str], np.ndarray]] = {}
    for key, values in frame.series.items():
        valid = ~np.isnan(values)
        count = int(np.count_nonzero(valid))
        if count == 0:
            continue
        signature = (
            b"all" if count == n else hashlib.blake2b(np.packbits(valid).tobytes(), digest_size=20).digest()
        )
        found = by_axis.get(signature)
        if found is None:
            by_axis[signature] = ([key], np.flatnonzero(valid) if count < n else np.arange(n))
        else:
            found[0].append(key)
    groups = list(by_axis.values())
    groups.sort(key=lambda g: -len(g[1]))  # stable: ties keep input order
    return groups


def group_series(frame: Frame, *, max_null_fraction: float = DEFAULT_MAX_NULL_FRACTION) -> list[SeriesGroup]:
    """Group the frame's series by time axis (see the module docstring for the rule).

    :param frame: the validated frame.
    :param max_null_fraction: the largest share of nulls any series may get by sharing a group's axis;
        0 keeps only identical axes together.
    """
    if not 0 <= max_null_fraction < 1:
        raise ValueError(f"max_null_fraction must be in [0, 1), got {max_null_fraction!r}")
    exact = _exact_groups(frame)
    keep = 1.0 - max_null_fraction
    time_bytes = 30  # a quoted RFC 3339 time with microseconds and its comma
    clusters: list[_Cluster] = []
    capacity = max(len(exact), 1)
    sizes = np.zeros(capacity, np.int64)
    mins = np.zeros(capacity, np.int64)
    firsts = np.zeros(capacity, np.int64)
    lasts = np.zeros(capacity, np.int64)
    for keys, positions in exact:
        count = len(positions)
        merged = False
        if max_null_fraction > 0 and clusters:
            h = len(clusters)
            floor = np.minimum(mins[:h], count)
            possible = np.flatnonzero(
                (floor >= keep * np.maximum(sizes[:h], count))
                & (firsts[:h] <= positions[-1])
                & (lasts[:h] >= positions[0])
            )
            for index in possible[:_CANDIDATES]:
                cluster = clusters[index]
                found = np.searchsorted(cluster.positions, positions)
                inside = found < len(cluster.positions)
                inside[inside] = cluster.positions[found[inside]] == positions[inside]
                new = count - int(np.count_nonzero(inside))
                union = len(cluster.positions) + new
                nulls = len(cluster.keys) * new + len(keys) * (union - count)
                shared = len(cluster.positions) + count - union
                if (
                    min(cluster.min_count, count) >= keep * union
                    and nulls * _NULL_BYTES < shared * time_bytes
                ):
                    if new:
                        # The sorted union, by inserting the new positions where searchsorted found
                        # their place: linear, where np.union1d sorts (or hashes) everything again.
                        outside = ~inside
                        cluster.positions = np.insert(cluster.positions, found[outside], positions[outside])
                    cluster.keys.extend(keys)
                    cluster.min_count = min(cluster.min_count, count)
                    sizes[index], mins[index] = union, cluster.min_count
                    firsts[index], lasts[index] = cluster.positions[0], cluster.positions[-1]
                    merged = True
                    break
        if not merged:
            index = len(clusters)
            clusters.append(_Cluster(positions=positions, keys=list(keys), min_count=count))
            sizes[index], mins[index] = count, count
            firsts[index], lasts[index] = positions[0], positions[-1]
    return [SeriesGroup(keys=tuple(c.keys), positions=c.positions) for c in clusters]


# -- encoding ------------------------------------------------------------------------------------------
def _put_digits(out: np.ndarray, column: int, values: np.ndarray, digits: int) -> None:
    values = values.copy()
    for k in range(digits - 1, -1, -1):
        out[:, column + k] = values % 10 + 48
        values //= 10


@functools.cache
def _digit_table(digits: int) -> np.ndarray:
    """The zero-padded decimal digits of every number below ``10**digits``, one ``V<digits>`` item each."""
    table = np.empty((10**digits, digits), dtype=np.uint8)
    _put_digits(table, 0, np.arange(10**digits), digits)
    return table.view(f"V{digits}").reshape(-1)


@functools.cache
def _time_of_day_table() -> np.ndarray:
    """``HH:MM:SS`` of every second of a day, one ``V8`` item each."""
    second = np.arange(86_400)
    table = np.empty((86_400, 8), dtype=np.uint8)
    table[:] = np.frombuffer(b"00:00:00", dtype=np.uint8)
    _put_digits(table, 0, second // 3600, 2)
    _put_digits(table, 3, second // 60 % 60, 2)
    _put_digits(table, 6, second % 60, 2)
    return table.view("V8").reshape(-1)


def _dates(days: np.ndarray) -> np.ndarray:
    """``YYYY-MM-DD`` of days since 1970-01-01 (proleptic Gregorian), one ``V10`` item each.

    The civil date (H. Hinnant's algorithm) is computed once per day of the range covered (a request
    spans few days) and gathered, unless the range is wider than the array.
    """
    first = int(days.min())
    span = int(days.max()) - first + 1
    gather = span <= len(days)
    table_days = np.arange(first, first + span) if gather else days
    z = table_days + 719_468
    era = np.floor_divide(z, 146_097)
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = np.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2)
    table = np.empty((len(table_days), 10), dtype=np.uint8)
    table[:] = np.frombuffer(b"0000-00-00", dtype=np.uint8)
    _put_digits(table, 0, year, 4)
    _put_digits(table, 5, month, 2)
    _put_digits(table, 8, day, 2)
    dates = table.view("V10").reshape(-1)
    return dates[days - first] if gather else dates


def _fraction_digits(fraction: np.ndarray) -> int:
    """The shortest exact precision (0, 3 or 6 digits) of the sub-second parts, in microseconds."""
    if not fraction.any():
        return 0
    return 3 if not (fraction % 1000).any() else 6


def _time_width(frac_digits: int) -> int:
    """Bytes of one encoded time with its quotes and comma."""
    return 20 + (frac_digits + 1 if frac_digits else 0) + 3


def encode_times(us: np.ndarray) -> tuple[bytes, int]:
    """Encode times as the inside of a JSON array of RFC 3339 UTC strings, every element the same width.

    The precision is the shortest that is exact for all of them: seconds
    (``"2021-03-11T21:00:00Z"``), milliseconds (``.123``) or microseconds (``.123456``). Each element is
    a record of fixed-width byte fields, filled from small tables (the dates of the days covered, the
    seconds of a day, the numbers below 1000).

    :param us: int64 microseconds since the epoch, years 0001-9999.
    :return: the bytes ``"t0","t1",...,"tn",`` (each element followed by a comma, the last one too) and
        the width of one element including its quotes and comma.
    """
    seconds = np.floor_divide(us, 1_000_000)
    fraction = us - seconds * 1_000_000
    frac_digits = _fraction_digits(fraction)
    if frac_digits == 3:
        fraction = fraction // 1000
    width = _time_width(frac_digits)
    if not len(us):
        return b"", width
    days = np.floor_divide(seconds, 86_400)
    fields = [("quote", "V1", 0), ("date", "V10", 1), ("t", "V1", 11), ("clock", "V8", 12)]
    if frac_digits:
        fields += [("dot", "V1", 20), ("high", "V3", 21)]
    if frac_digits == 6:
        fields.append(("low", "V3", 24))
    fields.append(("end", "V3", width - 3))
    names, formats, offsets = zip(*fields, strict=True)
    layout = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": width})
    out = np.empty(len(us), dtype=layout)
    out["quote"] = np.void(b'"')
    out["date"] = _dates(days)
    out["t"] = np.void(b"T")
    out["clock"] = _time_of_day_table()[seconds - days * 86_400]
    if frac_digits:
        out["dot"] = np.void(b".")
        thousands = _digit_table(3)
        if frac_digits == 3:
            out["high"] = thousands[fraction]
        else:
            out["high"] = thousands[fraction // 1000]
            out["low"] = thousands[fraction % 1000]
    out["end"] = np.void(b'Z",')
    return out.tobytes(), width


@dataclass(frozen=True)
class _SizedSeries:
    name: str
    key: bytes  # JSON string of the key
    widths: np.ndarray  # bytes of each element's JSON text (without its comma)


@dataclass(frozen=True)
class _EncodedSeries(_SizedSeries):
    buffer: bytes  # JSON array of the values
    starts: np.ndarray  # byte offset of each element in buffer
    present: np.ndarray  # bool: element is a value (not null)


_S = TypeVar("_S", bound=_SizedSeries)


def _encode_values(key: str, values: np.ndarray) -> _EncodedSeries:
    buffer = _encode(values.tolist())  # NaN -> null; floats in shortest round-trip form
    commas = np.flatnonzero(np.frombuffer(buffer, dtype=np.uint8) == _COMMA)
    starts = np.empty(len(values), np.int64)
    starts[0] = 1
    starts[1:] = commas + 1
    widths = np.empty(len(values), np.uint8)  # at most 24 (``-1.2345678901234567e-300``)
    np.subtract(commas, starts[:-1], out=widths[:-1], casting="unsafe")
    widths[-1] = len(buffer) - 1 - starts[-1]
    return _EncodedSeries(key, _encode(key), widths, buffer, starts, ~np.isnan(values))


def value_widths(values: np.ndarray) -> np.ndarray:
    """The bytes of each value's JSON text in an insert body (``null``: 4), for :func:`request_sizes`.

    Computed without writing the text, for the values written as decimals without an exponent (magnitudes
    from 0.001 to below 10**15): a value needs ``d`` fraction digits when ``d`` is the smallest count for
    which ``rint(v * 10**d) / 10**d == v``, that is, for which the nearest decimal of ``d`` digits reads
    back as ``v`` (exact: the scaled value stays below 2**49, so the product's rounding error cannot
    change the nearest integer, and the division of two exact numbers is rounded like a parser rounds).
    That is the shortest round-trip text the encoder writes. Other values are encoded to measure them.

    :param values: float64 values, NaN where there is no value.
    """
    widths = np.full(len(values), NULL_WIDTH, np.uint8)
    resolved = np.isnan(values)
    magnitude = np.abs(values)
    at = np.flatnonzero((magnitude >= _POSITIONAL_MIN) & (magnitude < _POSITIONAL_MAX))
    left, magnitude = values[at], magnitude[at]
    fixed = np.maximum(np.searchsorted(_POWERS_OF_TEN, magnitude, side="right"), 1) + 1  # digits, point
    fixed += left < 0
    for digits, scale in enumerate(_POWERS_OF_TEN):
        exact = np.rint(left * scale) / scale == left
        widths[at[exact]] = fixed[exact] + max(digits, 1)
        resolved[at[exact]] = True
        more = ~exact & (magnitude * (10 * scale) < _EXACT_SCALED)  # the next round stays exact
        if not more.any():
            break
        at, left, fixed, magnitude = at[more], left[more], fixed[more], magnitude[more]
    rest = np.flatnonzero(~resolved)
    if len(rest):
        widths[rest] = _encode_values("", values[rest]).widths
    return widths


def _split_columns(encoded: list[_S], limit: int) -> list[list[_S]]:
    """Consecutive subsets whose one-row cost (key, brackets, widest value) stays within ``limit``."""
    subsets: list[list[_S]] = [[]]
    cost = 0
    for item in encoded:
        item_cost = len(item.key) + 4 + int(item.widths.max()) + 1
        if subsets[-1] and cost + item_cost > limit:
            subsets.append([])
            cost = 0
        subsets[-1].append(item)
        cost += item_cost
    return subsets


@dataclass(frozen=True)
class _Cuts:
    """Where the requests of one group subset start and stop (rows), and their exact body sizes."""

    bounds: list[int]  # row where each request starts, then the end
    cum_cost: np.ndarray  # bytes of the rows before each row (times and values, commas included)
    fixed: int  # bytes of a body besides its rows

    def size(self, index: int) -> int:
        return self.fixed + int(self.cum_cost[self.bounds[index + 1]] - self.cum_cost[self.bounds[index]])


_OPENING, _MIDDLE, _CLOSING = b'{"times":[', b'],"series":{', b"}}"


def _cut_rows(
    time_width: int, columns: Sequence[_SizedSeries], *, envelope: int, max_bytes: int, keys: tuple[str, ...]
) -> _Cuts:
    """Cut the rows into consecutive ranges whose whole body (``envelope`` bytes of JSON-RPC around the
    data) stays within ``max_bytes``, each range as long as possible."""
    n = len(columns[0].widths)
    row_cost = np.full(n, time_width, np.int64)
    for item in columns:
        row_cost += item.widths + 1
    cum_cost = np.zeros(n + 1, np.int64)
    np.cumsum(row_cost, out=cum_cost[1:])
    fixed = envelope + len(_OPENING) + len(_MIDDLE) + len(_CLOSING) - 1  # minus the last times comma
    fixed += sum(len(item.key) + 3 - 1 for item in columns) + len(columns) - 1  # key:[...] minus last comma
    bounds = [0]
    while bounds[-1] < n:
        start = bounds[-1]
        stop = int(np.searchsorted(cum_cost, cum_cost[start] + max_bytes - fixed, side="right")) - 1
        if stop <= start:
            raise ValueError(
                f"max_request_bytes={max_bytes} is too small for one row of series {list(keys)[:5]}"
            )
        bounds.append(stop)
    return _Cuts(bounds, cum_cost, fixed)


def _frame_requests(
    times: np.ndarray,
    columns: list[_EncodedSeries],
    *,
    keys: tuple[str, ...],
    head: bytes,
    tail: bytes,
    max_bytes: int,
) -> Iterator[InsertRequest]:
    time_buffer, width = encode_times(times)
    cuts = _cut_rows(width, columns, envelope=len(head) + len(tail), max_bytes=max_bytes, keys=keys)
    points_per_row = np.zeros(len(times), np.int64)
    for item in columns:
        points_per_row += item.present
    cum_points = np.zeros(len(times) + 1, np.int64)
    np.cumsum(points_per_row, out=cum_points[1:])
    for index, (start, stop) in enumerate(pairwise(cuts.bounds)):
        parts = [head, _OPENING, time_buffer[start * width : stop * width - 1], _MIDDLE]
        for i, item in enumerate(columns):
            if i:
                parts.append(b",")
            end = int(item.starts[stop - 1] + item.widths[stop - 1])
            parts += [item.key, b":[", item.buffer[item.starts[start] : end], b"]"]
        parts += [_CLOSING, tail]
        body = b"".join(parts)
        expected = cuts.size(index)
        assert len(body) == expected <= max_bytes, (len(body), expected, max_bytes)
        yield InsertRequest(
            body=body,
            keys=keys,
            start_us=int(times[start]),
            end_us=int(times[stop - 1]),
            times=stop - start,
            points=int(cum_points[stop] - cum_points[start]),
        )


def _insert_envelope(integration_id: str, request_id: str | int) -> tuple[bytes, bytes]:
    head, tail = rpc_envelope(INSERT_METHOD, request_id)
    return head + b'{"integration":' + _encode(integration_id) + b',"data":', b"}" + tail


def insert_requests(
    frame: Frame,
    *,
    integration_id: str,
    max_bytes: int = DEFAULT_REQUEST_BYTES,
    request_id: str | int = 1,
    max_null_fraction: float = DEFAULT_MAX_NULL_FRACTION,
) -> Iterator[InsertRequest]:
    """Lazily yield the ``integration.insert`` requests that carry ``frame``, each at most ``max_bytes``.

    Groups come largest first; within a group, requests follow time order. Every request is a valid
    data frame with its own ``times``; together they carry every value of the frame exactly once.

    :param frame: the validated frame.
    :param integration_id: the integration id (``params.integration``).
    :param max_bytes: the budget for the whole request body, envelope included.
    :param request_id: the JSON-RPC id put in every request.
    :param max_null_fraction: see :func:`group_series`.
    """
    head, tail = _insert_envelope(integration_id, request_id)

    def encoded(key: str, positions: np.ndarray) -> _EncodedSeries:
        return _encode_values(key, frame.series[key][positions])

    for times, subset, keys in _subsets(frame, encoded, max_bytes, max_null_fraction):
        yield from _frame_requests(times, subset, keys=keys, head=head, tail=tail, max_bytes=max_bytes)


def _subsets(
    frame: Frame, column: Callable[[str, np.ndarray], _S], max_bytes: int, max_null_fraction: float
) -> Iterator[tuple[np.ndarray, list[_S], tuple[str, ...]]]:
    """The ``(times, columns, keys)`` that each take requests of their own, in request order: the series
    groups (:func:`group_series`), each split by series where a row would be too wide. Shared by
    :func:`insert_requests` and :func:`request_sizes`, so both cut alike.

    :param column: makes a group's column of one key from the group's row positions.
    """
    check_budget(max_bytes)
    row_limit = max_bytes // _MIN_ROWS_SHARE
    for group in group_series(frame, max_null_fraction=max_null_fraction):
        times = frame.times[group.positions]
        columns = [column(key, group.positions) for key in group.keys]
        for subset in _split_columns(columns, row_limit):
            yield times, subset, tuple(item.name for item in subset)


@dataclass(frozen=True)
class RequestSize:
    """Where one ``integration.insert`` request of :func:`insert_requests` starts, and its size.

    :param keys: the input keys in it.
    :param start_us: its first time (µs since the epoch, UTC).
    :param size: the bytes of its body.
    """

    keys: tuple[str, ...]
    start_us: int
    size: int


def request_sizes(
    frame: Frame,
    widths: Mapping[str, np.ndarray],
    *,
    integration_id: str,
    max_bytes: int = DEFAULT_REQUEST_BYTES,
    request_id: str | int = 1,
    max_null_fraction: float = DEFAULT_MAX_NULL_FRACTION,
) -> Iterator[RequestSize]:
    """The requests :func:`insert_requests` makes of ``frame``, in the same order, with their exact sizes,
    from the width of each value's text instead of the text: no body is built, no value encoded.

    :param frame: the validated frame.
    :param widths: input key -> :func:`value_widths` of the frame's series (one per time).
    :param integration_id: as for :func:`insert_requests`; only its encoded length matters.
    :param max_bytes: as for :func:`insert_requests`.
    :param request_id: as for :func:`insert_requests`.
    :param max_null_fraction: as for :func:`insert_requests`.
    """
    head, tail = _insert_envelope(integration_id, request_id)

    def sized(key: str, positions: np.ndarray) -> _SizedSeries:
        return _SizedSeries(key, _encode(key), widths[key][positions])

    for times, subset, keys in _subsets(frame, sized, max_bytes, max_null_fraction):
        time_width = _time_width(_fraction_digits(np.mod(times, 1_000_000)))
        cuts = _cut_rows(time_width, subset, envelope=len(head) + len(tail), max_bytes=max_bytes, keys=keys)
        for index, start in enumerate(cuts.bounds[:-1]):
            yield RequestSize(keys=keys, start_us=int(times[start]), size=cuts.size(index))


# -- saveSignals ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SaveSignalsRequest:
    """One ``integration.saveSignals`` request body.

    :param body: the complete JSON-RPC request body.
    :param keys: the input keys whose save views it carries.
    """

    body: bytes
    keys: tuple[str, ...]


def save_signals_requests(
    views: Mapping[str, Mapping[str, Any]],
    *,
    integration_id: str,
    create_only: bool = False,
    max_bytes: int = DEFAULT_REQUEST_BYTES,
    request_id: str | int = 1,
) -> Iterator[SaveSignalsRequest]:
    """Lazily yield ``integration.saveSignals`` requests (``signalsByInput``), each at most ``max_bytes``.

    :param views: input key -> complete signal save view.
    :param integration_id: the integration id.
    :param create_only: sent as ``createOnly``.
    :param max_bytes: the budget for the whole request body.
    :param request_id: the JSON-RPC id put in every request.
    """
    check_budget(max_bytes)
    head, tail = rpc_envelope(SAVE_SIGNALS_METHOD, request_id)
    head += b'{"integration":' + _encode(integration_id) + b',"createOnly":' + _encode(create_only)
    head += b',"signalsByInput":{'
    tail = b"}}" + tail
    room = max_bytes - len(head) - len(tail)
    members: list[bytes] = []
    keys: list[str] = []
    size = 0
    for key, view in views.items():
        member = _encode(key) + b":" + _encode(view)
        if len(member) > room:
            raise ValueError(f"signals: the save view of {key!r} alone is larger than {max_bytes} bytes")
        if members and size + 1 + len(member) > room:
            yield SaveSignalsRequest(head + b",".join(members) + tail, tuple(keys))
            members, keys, size = [], [], 0
        size += len(member) + (1 if members else 0)
        members.append(member)
        keys.append(key)
    if members:
        yield SaveSignalsRequest(head + b",".join(members) + tail, tuple(keys))


def merge_signals_by_input(
    merged: dict[str, dict[str, Any]], result: Mapping[str, Any], keys: Sequence[str]
) -> None:
    """Fold one response's ``signalsByInput`` into ``merged`` (``created`` stays True once True).

    :param merged: the accumulated map, updated in place.
    :param result: the JSON-RPC ``result`` object of one request.
    :param keys: the keys the request carried (a key missing from the answer is an error).
    :raises ValueError: when the answer lacks ``signalsByInput`` or one of ``keys``.
    """
    summary = result.get("signalsByInput") if isinstance(result, Mapping) else None
    if not isinstance(summary, Mapping):
        raise ValueError("the response has no signalsByInput map")
    missing = [k for k in keys if not isinstance(summary.get(k), Mapping)]
    if missing:
        raise ValueError(f"the response lacks signalsByInput entries for {missing[:5]}")
    for key in keys:
        entry = dict(summary[key])
        before = merged.get(key)
        if before is not None:
            entry["created"] = bool(before.get("created")) or bool(entry.get("created"))
            if "updated" in before or "updated" in entry:
                entry["updated"] = bool(before.get("updated")) or bool(entry.get("updated"))
        merged[key] = entry
