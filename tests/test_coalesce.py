"""coalesce_frames and merge_frames (pure): every value once, later wins, full requests, shared axes, cap."""

from __future__ import annotations

import math
import weakref
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from airflow_provider_clarify.utils.coalesce import FULL_REQUEST, coalesce_frames, estimate_json_bytes
from airflow_provider_clarify.utils.frames import Frame, merge_frames
from airflow_provider_clarify.utils.payload import insert_requests

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

T0 = 1_709_251_200_000_000  # 2024-03-01T00:00:00Z in µs
MINUTE = 60_000_000
HOUR = 3_600_000_000
BUDGET = 16 * 1024


def frame(times: Iterable[int], series: dict[str, Iterable[float]], duplicates: int = 0) -> Frame:
    return Frame(
        times=np.asarray(list(times), dtype=np.int64),
        series={k: np.asarray(list(v), dtype=np.float64) for k, v in series.items()},
        duplicates=duplicates,
    )


def values(frames: Iterable[Frame]) -> dict[str, dict[int, float]]:
    """key -> {time: value}, checking that every frame is sorted with unique times."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for item in frames:
        assert bool(np.all(item.times[1:] > item.times[:-1]))
        for key, column in item.series.items():
            assert len(column) == len(item.times)
            for at, value in zip(item.times.tolist(), column.tolist(), strict=True):
                if not math.isnan(value):
                    assert at not in out[key], "a value left twice"
                    out[key][at] = value
    return dict(out)


def minute_frames(sources: int, batches: int, rows: int, seed: int = 7) -> Iterator[Frame]:
    """Frames as the parser yields them for an interleaved minute report: per batch, one frame per source,
    each source with its own irregular milliseconds and a few gaps. Made lazily."""
    rng = np.random.default_rng(seed)
    for batch in range(batches):
        for source in range(sources):
            minutes = np.arange(batch * rows, (batch + 1) * rows, dtype=np.int64)
            times = T0 + minutes * MINUTE + (source * 7_919 + rng.integers(0, 40_000, rows)) * 1000
            series = {}
            for metric in range(5):
                column = np.round(rng.uniform(0, 500, rows), 2)
                column[rng.random(rows) < 0.02] = np.nan
                series[f"D{source:04d}.m{metric}"] = column
            yield Frame(times=times, series=series)


def minute_report(sources: int, batches: int, rows: int) -> list[Frame]:
    return list(minute_frames(sources, batches, rows))


def request_sizes(frames: Iterable[Frame]) -> dict[str, list[int]]:
    """Source prefix -> body sizes of the requests the hook would send for the frames, in order."""
    sizes: dict[str, list[int]] = defaultdict(list)
    for item in frames:
        for request in insert_requests(item, integration_id="a" * 20, max_bytes=BUDGET):
            sources = {key.split(".")[0] for key in request.keys}
            assert len(sources) == 1, "sources with different times share a request"
            sizes[sources.pop()].append(len(request.body))
    return dict(sizes)


# -- merge_frames ----------------------------------------------------------------------------------------
def test_merge_frames_unions_keys_sorts_and_lets_the_later_value_win() -> None:
    first = frame([30, 10, 20], {"a": [3.0, 1.0, 2.0], "b": [30.0, 10.0, np.nan]})
    second = frame([20, 40], {"a": [22.0, np.nan], "c": [np.nan, 4.0]}, duplicates=5)
    merged = merge_frames([first, second])
    assert merged.times.tolist() == [10, 20, 30, 40]
    assert values([merged]) == {
        "a": {10: 1.0, 20: 22.0, 30: 3.0},
        "b": {10: 10.0, 30: 30.0},
        "c": {40: 4.0},
    }
    assert merged.duplicates == 5 + 1  # the row at 20 of the first frame lost its value of "a"


def test_merge_frames_keeps_an_earlier_value_when_the_later_one_is_missing() -> None:
    merged = merge_frames([frame([10], {"a": [1.0]}), frame([10], {"a": [np.nan]})])
    assert values([merged]) == {"a": {10: 1.0}}
    assert merged.duplicates == 0  # nothing was replaced


def test_merge_frames_of_other_keys_on_the_same_times_merges_no_duplicates() -> None:
    parts = [frame([10, 20], {f"s{i}.m": [float(i), float(i)]}) for i in range(4)]
    merged = merge_frames(parts)
    assert merged.times.tolist() == [10, 20]
    assert sorted(merged.series) == ["s0.m", "s1.m", "s2.m", "s3.m"]
    assert merged.duplicates == 0


def test_merge_frames_of_nothing_or_one() -> None:
    single = frame([1, 2], {"a": [1.0, 2.0]})
    assert merge_frames([single]) is single
    assert len(merge_frames([])) == 0
    assert len(merge_frames([frame([], {"a": []})])) == 0


# -- coalesce_frames -------------------------------------------------------------------------------------
def test_every_value_leaves_exactly_once() -> None:
    frames = minute_report(sources=4, batches=6, rows=300)
    out = list(coalesce_frames(frames, max_request_bytes=BUDGET, max_buffered_bytes=256 * 1024))
    assert values(out) == values(frames)


def test_a_time_repeated_in_a_later_frame_takes_the_later_value() -> None:
    frames = [
        frame([10, 20], {"a": [1.0, 2.0]}),
        frame([15], {"b": [5.0]}),
        frame([20, 30], {"a": [20.0, 3.0]}),
        frame([10], {"a": [np.nan]}),
    ]
    out = list(coalesce_frames(frames, max_request_bytes=BUDGET))
    assert values(out) == {"a": {10: 1.0, 20: 20.0, 30: 3.0}, "b": {15: 5.0}}
    assert sum(item.duplicates for item in out) == 1


def test_requests_are_full_except_the_last_of_each_source() -> None:
    frames = minute_report(sources=6, batches=40, rows=60)
    coalesced = list(coalesce_frames(frames, max_request_bytes=BUDGET))
    sizes = request_sizes(coalesced)
    assert len(sizes) == 6
    for source, bodies in sizes.items():
        assert len(bodies) > 5, source
        fill = [size / BUDGET for size in bodies[:-1]]
        assert min(fill) >= FULL_REQUEST, (source, fill)
    # Without coalescing, every (source, batch) frame makes its own small request.
    plain = request_sizes(frames)
    assert sum(map(len, plain.values())) == len(frames) > 3 * sum(map(len, sizes.values()))


def test_sources_on_identical_times_are_released_together() -> None:
    hours = [T0 + h * HOUR for h in range(48)]
    frames = [frame(hours, {f"D{s}.m{m}": [s + m / 10] * 48 for m in range(3)}) for s in range(6)]
    out = list(coalesce_frames(frames, max_request_bytes=BUDGET))
    assert len(out) == 1
    assert len(out[0].series) == 18
    assert out[0].duplicates == 0
    assert values(out) == values(frames)
    assert sum(map(len, request_sizes_any(out))) == 1


def request_sizes_any(frames: Iterable[Frame]) -> list[list[int]]:
    return [
        [len(r.body) for r in insert_requests(item, integration_id="a" * 20, max_bytes=BUDGET)]
        for item in frames
    ]


def most_held(sources: int, **options: Any) -> tuple[int, int]:
    """The largest estimated size of input frames still alive when the next one is read, and the number
    of values released. Input frames are made lazily, as a parser would; released frames are dropped."""
    alive: dict[int, int] = {}
    most = points = 0

    def frames() -> Iterator[Frame]:
        nonlocal most
        for item in minute_frames(sources=sources, batches=10, rows=120):
            # The previous frame is still referenced by the loop that consumed it: discount it.
            most = max(most, sum(alive.values()) - previous[0])
            alive[id(item)] = previous[0] = estimate_json_bytes(item)
            weakref.finalize(item, alive.pop, id(item))
            yield item

    previous = [0]
    for item in coalesce_frames(frames(), max_request_bytes=BUDGET, **options):
        points += item.points
        del item
    return most, points


def test_memory_cap_parks_frames_on_disk_and_keeps_requests_full() -> None:
    # 40 sources, each with its own reading times: they cannot share requests.
    frames = minute_report(sources=40, batches=10, rows=120)
    points = sum(item.points for item in frames)
    cap = 128 * 1024
    uncapped, released = most_held(40, max_buffered_bytes=1 << 30)
    assert released == points
    assert uncapped > 4 * cap  # without the cap, every source holds up to a request's worth
    capped, released = most_held(40, max_buffered_bytes=cap)
    assert released == points
    assert capped <= cap  # the rest was parked on disk
    coalesced = list(coalesce_frames(frames, max_request_bytes=BUDGET, max_buffered_bytes=cap))
    assert values(coalesced) == values(frames)
    # Parked frames come back when their source has enough for full requests.
    sizes = request_sizes(coalesced)
    assert len(sizes) == 40
    for source, bodies in sizes.items():
        assert len(bodies) > 2, source
        assert all(size >= FULL_REQUEST * BUDGET for size in bodies[:-1]), (source, bodies)


def test_options_are_checked_at_once() -> None:
    with pytest.raises(ValueError, match="max_request_bytes"):
        coalesce_frames([], max_request_bytes=100)
    with pytest.raises(ValueError, match="target_requests"):
        coalesce_frames([], target_requests=0)
    with pytest.raises(ValueError, match="max_buffered_bytes"):
        coalesce_frames([], max_buffered_bytes=-1)


def test_empty_input_and_empty_frames() -> None:
    assert list(coalesce_frames([])) == []
    assert list(coalesce_frames([frame([], {"a": []}), frame([1], {})])) == []


def test_estimate_is_at_least_the_request_payload() -> None:
    item = minute_report(sources=1, batches=1, rows=2000)[0]
    body = sum(len(r.body) for r in insert_requests(item, integration_id="a" * 20, max_bytes=1 << 22))
    assert body <= estimate_json_bytes(item) <= 1.5 * body
