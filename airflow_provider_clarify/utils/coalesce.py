"""Coalesce many small frames into frames that fill insert requests (pure logic: no Airflow, no HTTP).

The report parser yields one frame per source per Arrow batch: about 11,000 rows for each of 6 sources
interleaved in a minute report, far below one 4 MiB request -- and Clarify allows about one request per
second, so small requests waste the rate. :func:`coalesce_frames` buffers frames and releases merged frames
that make full requests, while the buffered data stays below a cap, whatever the size of the report.

Rules:

* **Buffers.** Frames that share an input key share a buffer (same keys = same source), so the values of
  one key leave in input order and a time repeated later still wins, as it would in Clarify.
* **Size estimate.** rows × (:data:`TIME_BYTES` + :data:`VALUE_BYTES` × series) bytes of JSON: a quoted
  time with milliseconds and its comma take 27 bytes, a value typically 5 to 8. Cheap, and a little high.
* **Release.** A buffer whose estimate reaches ``target_requests × max_request_bytes`` is merged
  (:func:`~.frames.merge_frames`) and packed exactly as the hook will pack it
  (:func:`~.payload.insert_requests`). Per series group, the values of the last, partly filled request
  (all of a group that fits in one request) stay in the buffer, to be completed by later rows; the rest is
  released and makes full requests. (When no group fills more than one request, all is released.)
  Packing twice costs CPU time that the hook's rate-limit pacing hides: the next body is prepared while
  the hook waits for its slot.
* **Shared time axes.** A released buffer takes along, up to the target size, the buffers whose time axes
  are identical to its own (hour and day reports: every source has the same periods), so their series
  share requests instead of each source sending a small one. Axes are compared by a running hash.
* **Memory cap.** When the estimate of everything buffered exceeds ``max_buffered_bytes``, the largest
  buffer is released by the same rule. So a minute report of many sources (each with its own irregular
  times, which cannot share requests) makes requests of about ``max_buffered_bytes / sources``: memory
  wins over the number of requests.
* **End.** Whatever is left is released, buffers with identical axes together.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np

from airflow_provider_clarify.utils.frames import Frame, merge_frames
from airflow_provider_clarify.utils.payload import DEFAULT_REQUEST_BYTES, check_budget, insert_requests

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

#: Estimated JSON bytes per time (a quoted RFC 3339 time with milliseconds and its comma is 27).
TIME_BYTES = 30
#: Estimated JSON bytes per value and its comma (``12.41,`` is 6, ``null,`` 5, ``1013.25,`` 8).
VALUE_BYTES = 8
#: A buffer is released when its estimate reaches this many request budgets.
TARGET_REQUESTS = 2
#: Default cap of the estimated size of everything buffered.
DEFAULT_MAX_BUFFERED_BYTES = 32 * 1024 * 1024
# Request sizes depend on the integration id only through its length, which is always 20 characters.
_SIZING_INTEGRATION = "0" * 20


def estimate_json_bytes(frame: Frame) -> int:
    """A cheap, slightly high estimate of the JSON bytes of a frame's data (times and every cell).

    :param frame: the frame.
    """
    return len(frame) * (TIME_BYTES + VALUE_BYTES * len(frame.series))


def _positive_int(value: Any, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{param} must be a positive integer, got {value!r}")
    return value


def coalesce_frames(
    frames: Iterable[Frame],
    *,
    max_request_bytes: int = DEFAULT_REQUEST_BYTES,
    target_requests: int = TARGET_REQUESTS,
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
) -> Iterator[Frame]:
    """Lazily re-cut a stream of frames into merged frames that fill requests (see the module docstring).

    Every value of the input leaves exactly once (a time repeated for a key: merged, the later value
    wins); released frames are sorted with unique times, like :func:`~.frames.to_frame` output.

    :param frames: validated frames, e.g. from ``ReportParser.iter_frames``; consumed lazily.
    :param max_request_bytes: the hook's byte budget per insert request.
    :param target_requests: release a buffer when its estimate reaches this many budgets.
    :param max_buffered_bytes: cap of the estimated size of everything buffered.
    :raises ValueError: for a bad option (at once, before any frame is read).
    """
    coalescer = _Coalescer(
        max_request_bytes=check_budget(max_request_bytes),
        target_bytes=_positive_int(target_requests, "target_requests") * max_request_bytes,
        max_buffered_bytes=_positive_int(max_buffered_bytes, "max_buffered_bytes"),
    )
    return coalescer.run(frames)


class _Buffer:
    """Frames waiting for release, the keys they hold, and a running hash of their time axis."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.keys: set[str] = set()
        self.size = 0
        self._axis = hashlib.blake2b(digest_size=16)
        self._last_us: int | None = None
        self._ordered = True

    def add(self, frame: Frame) -> None:
        first, last = int(frame.times[0]), int(frame.times[-1])
        if self._last_us is not None and first <= self._last_us:
            self._ordered = False
        self._last_us = last if self._last_us is None else max(last, self._last_us)
        self._axis.update(frame.times.tobytes())
        self.frames.append(frame)
        self.keys.update(frame.series)
        self.size += estimate_json_bytes(frame)

    def absorb(self, other: _Buffer) -> None:
        """Take over ``other``'s frames (their keys differ from this buffer's, so order does not matter)."""
        self.frames.extend(other.frames)
        self.keys.update(other.keys)
        self.size += other.size
        self._ordered = False

    def axis(self) -> bytes | None:
        """The hash of the time axis when the frames came in time order (then it is their concatenation)."""
        return self._axis.digest() if self._ordered else None


class _Coalescer:
    def __init__(self, *, max_request_bytes: int, target_bytes: int, max_buffered_bytes: int) -> None:
        self.max_request_bytes = max_request_bytes
        self.target_bytes = target_bytes
        self.max_buffered_bytes = max_buffered_bytes
        self.buffers: list[_Buffer] = []
        self.owner: dict[str, _Buffer] = {}
        self.buffered = 0

    def run(self, frames: Iterable[Frame]) -> Iterator[Frame]:
        for frame in frames:
            if len(frame) and frame.series:
                yield from self._add(frame)
        while self.buffers:
            yield from self._release(self.buffers[0], hold_back=False)

    def _add(self, frame: Frame) -> Iterator[Frame]:
        touched = list({id(b): b for b in map(self.owner.get, frame.series) if b is not None}.values())
        if touched:
            buffer = touched[0]
            for other in touched[1:]:
                self.buffers.remove(other)
                buffer.absorb(other)
                self.owner.update(dict.fromkeys(other.keys, buffer))
        else:
            buffer = _Buffer()
            self.buffers.append(buffer)
        before = buffer.size
        buffer.add(frame)
        self.owner.update(dict.fromkeys(frame.series, buffer))
        self.buffered += buffer.size - before
        if buffer.size >= self.target_bytes:
            yield from self._release(buffer, hold_back=True)
        while self.buffered > self.max_buffered_bytes:
            yield from self._release(max(self.buffers, key=lambda b: b.size), hold_back=True)

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
            self.buffered -= buffer.size
            for key in buffer.keys:
                del self.owner[key]
            parts += buffer.frames
            buffer.frames.clear()
        merged = merge_frames(parts)
        del parts
        if hold_back:
            merged, rest = _hold_back_partial_requests(merged, self.max_request_bytes)
            if rest is not None:
                buffer = _Buffer()
                buffer.add(rest)
                self.buffers.append(buffer)
                self.owner.update(dict.fromkeys(rest.series, buffer))
                self.buffered += buffer.size
        yield merged


def _hold_back_partial_requests(frame: Frame, max_request_bytes: int) -> tuple[Frame, Frame | None]:
    """Split ``frame`` into the values of its full requests and the rest, packing it like the hook does.

    Per series group, the values of its last request are held back (all of a group that fits in one
    request). When no group makes more than one request, nothing is: ``(frame, None)``.
    """
    starts: dict[tuple[str, ...], list[int]] = {}
    for request in insert_requests(frame, integration_id=_SIZING_INTEGRATION, max_bytes=max_request_bytes):
        starts.setdefault(request.keys, []).append(request.start_us)
    if all(len(group) < 2 for group in starts.values()):
        return frame, None
    head: dict[str, np.ndarray] = {}
    tail: dict[str, np.ndarray] = {}
    for keys, group in starts.items():
        # Rows before the group's last request are released; all of a one-request group is held back.
        cut = int(np.searchsorted(frame.times, group[-1])) if len(group) > 1 else 0
        for key in keys:
            head[key] = frame.series[key].copy()
            head[key][cut:] = np.nan
            tail[key] = frame.series[key].copy()
            tail[key][:cut] = np.nan
    return _compact(frame.times, head, duplicates=frame.duplicates), _compact(frame.times, tail)


def _compact(times: np.ndarray, series: dict[str, np.ndarray], duplicates: int = 0) -> Frame:
    """The frame without the series and the times that have no value (its arrays are new copies)."""
    kept = {key: values for key, values in series.items() if not np.isnan(values).all()}
    present = np.zeros(len(times), dtype=bool)
    for values in kept.values():
        present |= ~np.isnan(values)
    return Frame(times=times[present], series={k: v[present] for k, v in kept.items()}, duplicates=duplicates)
