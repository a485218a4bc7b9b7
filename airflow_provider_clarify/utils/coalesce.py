"""Coalesce many small frames into frames that fill insert requests (no Airflow, no HTTP).

The report parser yields one frame per source per Arrow batch: about 11,000 rows for each of 6 sources
interleaved in a minute report, far below one 4 MiB request -- and Clarify allows about one request per
second, so small requests waste the rate. :func:`coalesce_frames` buffers frames and releases merged frames
that make full requests, with a bounded amount of memory, whatever the size of the report.

Rules:

* **Buffers.** Frames that share an input key share a buffer (same keys = same source), so the values of
  one key leave in input order and a time repeated later still wins, as it would in Clarify.
* **Size estimate.** rows × (:data:`TIME_BYTES` + :data:`VALUE_BYTES` × series) bytes of JSON: a quoted
  time with milliseconds and its comma take 27 bytes; a value with its comma 5 to 8 (``12.41,``, ``null,``,
  ``1013.25,``). Cheap, and close for report data (decimals with few digits).
* **Release.** A buffer whose estimate reaches ``target_requests × max_request_bytes`` is merged
  (:func:`~.frames.merge_frames`) and sized exactly as the hook will pack it
  (:func:`~.payload.request_sizes`: the same grouping and cuts as :func:`~.payload.insert_requests`, from
  the width of each value's JSON text, measured once per release, without building a body). Per series
  group, the values of a last request that is less than :data:`FULL_REQUEST` full stay in the buffer, to
  be completed by later rows; the rest is sized again (a different set of rows can group differently)
  and released, so it makes full requests. When nothing fills a request yet, the buffer waits until it
  has grown by a quarter request. Releases are kept small (a little more than one request by default),
  as the hook's packing takes several times a frame's size in memory.
* **Shared time axes.** A released buffer takes along, up to the target size, the buffers whose time axes
  are identical to its own (hour and day reports: every source has the same periods), so their series
  share requests instead of each source sending a small one. Axes are compared by a running hash.
* **Memory cap.** When the frames held in memory exceed ``max_buffered_bytes`` (estimated), those of the
  buffer holding most are parked in a temporary file (raw float64, read back when the buffer is released).
  So even a minute report of hundreds of sources -- each with its own reading times, which cannot share a
  request -- makes full requests, while memory stays at about the cap plus one release. The file grows
  by 8 bytes per value and time parked (about the report's decoded size, more when held-back values are
  parked again) and is deleted at the end.
* **End.** Whatever is left is released, buffers with identical axes together.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from airflow_provider_clarify.utils.frames import Frame, merge_frames
from airflow_provider_clarify.utils.payload import (
    DEFAULT_REQUEST_BYTES,
    NULL_WIDTH,
    check_budget,
    request_sizes,
    value_widths,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

#: Estimated JSON bytes per time (a quoted RFC 3339 time with milliseconds and its comma is 27).
TIME_BYTES = 27
#: Estimated JSON bytes per value and its comma (``12.41,`` is 6, ``null,`` 5, ``1013.25,`` 8).
VALUE_BYTES = 7
#: A buffer is released when its estimate reaches this many request budgets.
TARGET_REQUESTS = 1.25
#: After a release found no full request, the buffer waits until it grew by this many request budgets.
_RETRY_STEP = 0.25
#: Default cap of the (estimated) frames held in memory; more is parked on disk.
DEFAULT_MAX_BUFFERED_BYTES = 4 * 1024 * 1024
#: A request at least this full (of the byte budget) counts as full.
FULL_REQUEST = 0.9
#: How many times a release is sized to find and check its full requests.
_PACKING_ROUNDS = 3
# Request sizes depend on the integration id only through its length, which is always 20 characters.
_SIZING_INTEGRATION = "0" * 20


def estimate_json_bytes(frame: Frame) -> int:
    """A cheap, slightly high estimate of the JSON bytes of a frame's data (times and every cell).

    :param frame: the frame.
    """
    return len(frame) * (TIME_BYTES + VALUE_BYTES * len(frame.series))


def _positive(value: Any, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{param} must be a positive number, got {value!r}")
    return value


def coalesce_frames(
    frames: Iterable[Frame],
    *,
    max_request_bytes: int = DEFAULT_REQUEST_BYTES,
    target_requests: float = TARGET_REQUESTS,
    max_buffered_bytes: float = DEFAULT_MAX_BUFFERED_BYTES,
) -> Iterator[Frame]:
    """Lazily re-cut a stream of frames into merged frames that fill requests (see the module docstring).

    Every value of the input leaves exactly once (a time repeated for a key: merged, the later value
    wins); released frames are sorted with unique times, like :func:`~.frames.to_frame` output.

    :param frames: validated frames, e.g. from ``ReportParser.iter_frames``; consumed lazily.
    :param max_request_bytes: the hook's byte budget per insert request.
    :param target_requests: release a buffer when its estimate reaches this many budgets.
    :param max_buffered_bytes: cap of the estimated size of the frames held in memory.
    :raises ValueError: for a bad option (at once, before any frame is read).
    """
    coalescer = _Coalescer(
        max_request_bytes=check_budget(max_request_bytes),
        target_bytes=_positive(target_requests, "target_requests") * max_request_bytes,
        max_buffered_bytes=_positive(max_buffered_bytes, "max_buffered_bytes"),
    )
    return coalescer.run(frames)


@dataclass(frozen=True)
class _Parked:
    """A frame written to the parking file: times, then each series, as raw 8-byte numbers."""

    offset: int
    rows: int
    keys: tuple[str, ...]
    duplicates: int


class _Parking:
    """An append-only temporary file of parked frames (created on first use)."""

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self._end = 0

    def park(self, frame: Frame) -> _Parked:
        if self._file is None:
            self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close(), at the end of the run
        self._file.seek(self._end)
        for column in (frame.times, *frame.series.values()):
            self._file.write(np.ascontiguousarray(column).tobytes())
        parked = _Parked(self._end, len(frame), tuple(frame.series), frame.duplicates)
        self._end = self._file.tell()
        return parked

    def load(self, parked: _Parked) -> Frame:
        assert self._file is not None
        self._file.seek(parked.offset)
        raw = self._file.read(8 * parked.rows * (1 + len(parked.keys)))
        times = np.frombuffer(raw, dtype=np.int64, count=parked.rows)
        values = np.frombuffer(raw, dtype=np.float64, offset=8 * parked.rows).reshape(-1, parked.rows)
        return Frame(
            times=times, series=dict(zip(parked.keys, values, strict=True)), duplicates=parked.duplicates
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class _Buffer:
    """Frames waiting for release (in memory or parked), their keys, and a running hash of their axis."""

    def __init__(self) -> None:
        self.frames: list[Frame | _Parked] = []
        self.keys: set[str] = set()
        self.size = 0  # estimate of all its frames
        self.in_memory = 0  # estimate of those not parked
        self.retry_at = 0.0  # a release that found no full request waits until size reaches this
        self._axis = hashlib.blake2b(digest_size=16)
        self._last_us: int | None = None
        self._ordered = True

    def add(self, frame: Frame) -> None:
        first, last = int(frame.times[0]), int(frame.times[-1])
        if self._last_us is not None and first <= self._last_us:
            self._ordered = False
        self._last_us = last if self._last_us is None else max(last, self._last_us)
        self._axis.update(np.ascontiguousarray(frame.times).tobytes())
        self.frames.append(frame)
        self.keys.update(frame.series)
        estimate = estimate_json_bytes(frame)
        self.size += estimate
        self.in_memory += estimate

    def absorb(self, other: _Buffer) -> None:
        """Take over ``other``'s frames (their keys differ from this buffer's, so order does not matter)."""
        self.frames.extend(other.frames)
        self.keys.update(other.keys)
        self.size += other.size
        self.in_memory += other.in_memory
        self._ordered = False

    def axis(self) -> bytes | None:
        """The hash of the time axis when the frames came in time order (then it is their concatenation)."""
        return self._axis.digest() if self._ordered else None


class _Coalescer:
    def __init__(self, *, max_request_bytes: int, target_bytes: float, max_buffered_bytes: float) -> None:
        self.max_request_bytes = max_request_bytes
        self.target_bytes = target_bytes
        self.max_buffered_bytes = max_buffered_bytes
        self.buffers: list[_Buffer] = []
        self.owner: dict[str, _Buffer] = {}
        self.in_memory = 0
        self.parking = _Parking()

    def run(self, frames: Iterable[Frame]) -> Iterator[Frame]:
        try:
            for frame in frames:
                if len(frame) and frame.series:
                    yield from self._add(frame)
            while self.buffers:
                yield from self._release(self.buffers[0], hold_back=False)
        finally:
            self.parking.close()

    def _add(self, frame: Frame) -> Iterator[Frame]:
        touched = list({id(b): b for b in map(self.owner.get, frame.series) if b is not None}.values())
        if touched:
            buffer = touched[0]
            for other in touched[1:]:
                self.buffers.remove(other)
                buffer.absorb(other)
                self.owner.update(dict.fromkeys(other.keys, buffer))
        else:
            buffer = self._new_buffer()
        self._put(buffer, frame)
        if buffer.size >= max(self.target_bytes, buffer.retry_at):
            yield from self._release(buffer, hold_back=True)
        while self.in_memory > self.max_buffered_bytes:
            self._park(max(self.buffers, key=lambda b: b.in_memory))

    def _new_buffer(self) -> _Buffer:
        buffer = _Buffer()
        self.buffers.append(buffer)
        return buffer

    def _put(self, buffer: _Buffer, frame: Frame) -> None:
        buffer.add(frame)
        self.owner.update(dict.fromkeys(frame.series, buffer))
        self.in_memory += estimate_json_bytes(frame)

    def _park(self, buffer: _Buffer) -> None:
        buffer.frames = [self.parking.park(f) if isinstance(f, Frame) else f for f in buffer.frames]
        self.in_memory -= buffer.in_memory
        buffer.in_memory = 0

    def _release(self, chosen: _Buffer, *, hold_back: bool) -> Iterator[Frame]:
        group = [chosen]
        size = chosen.size
        axis = chosen.axis()
        if axis is not None:
            for other in self.buffers:
                if other is not chosen and size + other.size <= self.target_bytes and other.axis() == axis:
                    group.append(other)
                    size += other.size
        parts: list[Frame] = []
        for buffer in group:
            self.buffers.remove(buffer)
            self.in_memory -= buffer.in_memory
            for key in buffer.keys:
                del self.owner[key]
            parts += [self.parking.load(f) if isinstance(f, _Parked) else f for f in buffer.frames]
            buffer.frames = []
        if not hold_back:
            merged = merge_frames(parts)
            del parts
            yield merged
            return
        released, kept = _split_full_requests(parts, self.max_request_bytes)
        if kept is not None:
            buffer = self._new_buffer()
            self._put(buffer, kept)
            if released is None:
                buffer.retry_at = buffer.size + _RETRY_STEP * self.max_request_bytes
        if released is not None:
            yield released


def _split_full_requests(parts: list[Frame], max_request_bytes: int) -> tuple[Frame | None, Frame | None]:
    """Merge ``parts`` (the list is emptied, to free them) and split the result into ``(values that make
    full requests, the rest)``, sized exactly like the hook packs; ``None`` for an empty part.

    Per series group, a last request less than :data:`FULL_REQUEST` full is held back (all of a group that
    fits in one such request). The part released is sized again, as its rows may group differently, up to
    :data:`_PACKING_ROUNDS` times in all. The width of each value's text is measured once per release
    (:func:`~.payload.value_widths`); the rounds only add widths up (:func:`~.payload.request_sizes`).
    """
    head: Frame | None = merge_frames(parts)
    parts.clear()
    assert head is not None
    widths = {key: value_widths(column) for key, column in head.series.items()}
    kept: list[Frame] = []
    for _ in range(_PACKING_ROUNDS):
        cuts = _partial_cuts(head, widths, max_request_bytes)
        if not cuts:
            break
        released, rest, widths = _split(head, cuts, widths)
        kept.append(rest)
        if released is None:
            return None, merge_frames(kept)
        head = released
    return head, merge_frames(kept) if kept else None


def _partial_cuts(frame: Frame, widths: dict[str, np.ndarray], max_request_bytes: int) -> dict[str, int]:
    """Key -> index of the first row held back, for the series groups whose last request is not full."""
    starts: dict[tuple[str, ...], list[int]] = {}
    last_size: dict[tuple[str, ...], int] = {}
    for request in request_sizes(
        frame, widths, integration_id=_SIZING_INTEGRATION, max_bytes=max_request_bytes
    ):
        starts.setdefault(request.keys, []).append(request.start_us)
        last_size[request.keys] = request.size
    cuts: dict[str, int] = {}
    for keys, group in starts.items():
        if last_size[keys] < FULL_REQUEST * max_request_bytes:
            cut = int(np.searchsorted(frame.times, group[-1])) if len(group) > 1 else 0
            cuts.update(dict.fromkeys(keys, cut))
    return cuts


def _split(
    frame: Frame, cuts: dict[str, int], widths: dict[str, np.ndarray]
) -> tuple[Frame | None, Frame, dict[str, np.ndarray]]:
    """``(frame without the held-back values or None, the held-back values, the value widths of the
    first)``: for each key in ``cuts``, the values from its cut row on are held back. Only the results are
    allocated (no full copies)."""
    rows = len(frame)
    head_rows = np.zeros(rows, dtype=bool)
    tail_rows = np.zeros(rows, dtype=bool)
    for key, values in frame.series.items():
        cut = cuts.get(key, rows)
        valid = ~np.isnan(values)
        head_rows[:cut] |= valid[:cut]
        tail_rows[cut:] |= valid[cut:]
    head_at, tail_at = np.flatnonzero(head_rows), np.flatnonzero(tail_rows)
    head: dict[str, np.ndarray] = {}
    tail: dict[str, np.ndarray] = {}
    head_widths: dict[str, np.ndarray] = {}
    for key, values in frame.series.items():
        cut = cuts.get(key, rows)
        for part, at, keep in ((head, head_at, head_at < cut), (tail, tail_at, tail_at >= cut)):
            column = values[at]
            column[~keep] = np.nan
            if not np.isnan(column).all():
                part[key] = column
        if key in head:
            head_widths[key] = widths[key][head_at]
            head_widths[key][np.isnan(head[key])] = NULL_WIDTH
    released = Frame(times=frame.times[head_at], series=head, duplicates=frame.duplicates) if head else None
    return released, Frame(times=frame.times[tail_at], series=tail), head_widths
