"""Report files -> Clarify frames: formats, layouts, QC, empty cells, ordering, keys, metadata, memory."""

from __future__ import annotations

import gzip
import io
import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from airflow_provider_clarify.testing import reports as sandbox
from airflow_provider_clarify.utils.report_parsing import ReportParser, SignalFacts, signal_metadata
from airflow_provider_clarify.utils.signals import save_view

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from airflow_provider_clarify.utils.frames import Frame

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def us(text: str) -> int:
    """Microseconds since the epoch of an ISO 8601 UTC time."""
    return (datetime.fromisoformat(text) - EPOCH) // timedelta(microseconds=1)


class OneWay(io.RawIOBase):
    """A stream that cannot seek, like an HTTP body."""

    def __init__(self, source: IO[bytes]) -> None:
        super().__init__()
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._source.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def one_way(data: bytes) -> io.BufferedReader:
    return io.BufferedReader(OneWay(io.BytesIO(data)), buffer_size=7)


def parse(data: bytes, **options: Any) -> tuple[list[Frame], ReportParser]:
    parser = ReportParser(**options)
    return list(parser.iter_frames(io.BytesIO(data))), parser


def collect(frames: Iterable[Frame]) -> dict[str, dict[int, float]]:
    """key -> {time: value} over all frames, checking each frame's shape on the way."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for frame in frames:
        assert frame.times.dtype == np.int64
        assert bool(np.all(frame.times[1:] > frame.times[:-1]))
        assert frame.series, "a frame without series"
        present = np.zeros(len(frame.times), dtype=bool)
        for key, values in frame.series.items():
            assert values.dtype == np.float64
            assert len(values) == len(frame.times)
            assert not np.isnan(values).all(), key
            present |= ~np.isnan(values)
            for time, value in zip(frame.times.tolist(), values.tolist(), strict=True):
                if not math.isnan(value):
                    assert time not in out[key], (key, time)
                    out[key][time] = value
        assert present.all(), "a time without any value"
    return dict(out)


# -- a hand-written minute report (datasource, both QC options) ---------------------------------------
MINUTE_HEADER = (
    "datasourceId,sourceId,sourceType,outputFrequency,time,locationLatitude,locationLongitude,"
    "no2ConcIndividual.qcAssessment,no2ConcIndividual.qcFlags,no2ConcIndividual.raw,"
    "no2ConcIndividual.status,no2ConcIndividual.value,"
    "pm2_5ConcMassIndividual.qcAssessment,pm2_5ConcMassIndividual.qcFlags,pm2_5ConcMassIndividual.raw,"
    "pm2_5ConcMassIndividual.status,pm2_5ConcMassIndividual.value\n"
)
# Interleaved across sources and out of time order; an invalid value with a quoted qcFlags cell; empty
# cells (reference site without PM, node value without calibration); zeros.
MINUTE_ROWS = (
    "DAAAA1111,AAAAAAA1,CLARITY_NODE,minute,2024-07-30T22:25:56.579Z,41.8,-87.7,"
    "valid,[],-5.45,calibrated-ready,12.64,valid,[],10.2,calibrated-ready,8.3\n"
    "DBBBB2222,RBBBBBB2,REFERENCE_SITE,minute,2024-07-30T22:25:10.000Z,41.9,-87.6,"
    "valid,[],15.1,sensor-ready,15.1,,,,,\n"
    "DAAAA1111,AAAAAAA1,CLARITY_NODE,minute,2024-07-30T22:24:56.100Z,41.8,-87.7,"
    'invalid,"[""QC.I.OOB.001""]",80.5,calibrated-ready,43.0,valid,[],11.0,calibration-missing,\n'
    "DBBBB2222,RBBBBBB2,REFERENCE_SITE,minute,2024-07-30T22:26:10.000Z,41.9,-87.6,"
    "valid,[],16.0,sensor-ready,16.0,,,,,\n"
    "DAAAA1111,AAAAAAA1,CLARITY_NODE,minute,2024-07-30T22:26:57.000Z,41.8,-87.7,"
    "valid,[],0,calibrated-ready,0,,,,,\n"
)
MINUTE_CSV = (MINUTE_HEADER + MINUTE_ROWS).encode()

T1, T2, T3 = us("2024-07-30T22:24:56.100Z"), us("2024-07-30T22:25:56.579Z"), us("2024-07-30T22:26:57.000Z")
R1, R2 = us("2024-07-30T22:25:10.000Z"), us("2024-07-30T22:26:10.000Z")


def as_parquet(csv_bytes: bytes, *, typed: bool) -> bytes:
    """The CSV as a Parquet file: typed (timestamps, floats) or all strings (types are unconfirmed)."""
    names = csv_bytes.split(b"\n", 1)[0].decode().split(",")
    convert = pa_csv.ConvertOptions(
        column_types={} if typed else dict.fromkeys(names, pa.string()),
        strings_can_be_null=True,
        null_values=[""],
    )
    table = pa_csv.read_csv(io.BytesIO(csv_bytes), convert_options=convert)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def test_minute_report_values_sorted_per_source_invalid_dropped() -> None:
    frames, parser = parse(MINUTE_CSV)
    assert len(frames) == 2  # one per source: both rows' sources are in the one batch
    node, site = frames
    np.testing.assert_array_equal(node.times, [T2, T3])  # T1 only had an invalid NO2 and no PM value
    assert list(node.series) == ["DAAAA1111.no2ConcIndividual", "DAAAA1111.pm2_5ConcMassIndividual"]
    np.testing.assert_array_equal(node.series["DAAAA1111.no2ConcIndividual"], [12.64, 0.0])
    np.testing.assert_array_equal(node.series["DAAAA1111.pm2_5ConcMassIndividual"], [8.3, np.nan])
    np.testing.assert_array_equal(site.times, [R1, R2])
    assert list(site.series) == ["DBBBB2222.no2ConcIndividual"]  # no PM value at all: no series
    np.testing.assert_array_equal(site.series["DBBBB2222.no2ConcIndividual"], [15.1, 16.0])
    stats = parser.stats
    assert (stats.files, stats.rows, stats.points, stats.invalid_dropped) == (1, 5, 5, 1)
    assert (stats.frames, stats.duplicate_rows, stats.files_without_qc_assessment) == (2, 0, 0)
    assert parser.facts == {
        "DAAAA1111.no2ConcIndividual": SignalFacts(
            "DAAAA1111",
            "datasourceId",
            "no2ConcIndividual",
            "value",
            "minute",
            ("AAAAAAA1",),
            ("CLARITY_NODE",),
        ),
        "DAAAA1111.pm2_5ConcMassIndividual": SignalFacts(
            "DAAAA1111",
            "datasourceId",
            "pm2_5ConcMassIndividual",
            "value",
            "minute",
            ("AAAAAAA1",),
            ("CLARITY_NODE",),
        ),
        "DBBBB2222.no2ConcIndividual": SignalFacts(
            "DBBBB2222",
            "datasourceId",
            "no2ConcIndividual",
            "value",
            "minute",
            ("RBBBBBB2",),
            ("REFERENCE_SITE",),
        ),
    }


def test_include_invalid_keeps_the_value() -> None:
    frames, parser = parse(MINUTE_CSV, include_invalid=True)
    data = collect(frames)
    assert data["DAAAA1111.no2ConcIndividual"] == {T1: 43.0, T2: 12.64, T3: 0.0}
    assert parser.stats.invalid_dropped == 0
    assert parser.stats.points == 6


def test_raw_and_value_attributes() -> None:
    frames, parser = parse(MINUTE_CSV, attributes=("raw", "value"))
    assert collect(frames) == {
        "DAAAA1111.no2ConcIndividual.raw": {T2: -5.45, T3: 0.0},
        "DAAAA1111.no2ConcIndividual.value": {T2: 12.64, T3: 0.0},
        "DAAAA1111.pm2_5ConcMassIndividual.raw": {T1: 11.0, T2: 10.2},
        "DAAAA1111.pm2_5ConcMassIndividual.value": {T2: 8.3},
        "DBBBB2222.no2ConcIndividual.raw": {R1: 15.1, R2: 16.0},
        "DBBBB2222.no2ConcIndividual.value": {R1: 15.1, R2: 16.0},
    }
    assert parser.stats.invalid_dropped == 2  # raw and value of the invalid NO2 reading
    assert parser.facts["DAAAA1111.no2ConcIndividual.raw"].attribute == "raw"


def test_metric_selection() -> None:
    frames, parser = parse(MINUTE_CSV, metrics="pm2_5ConcMassIndividual")
    assert collect(frames) == {"DAAAA1111.pm2_5ConcMassIndividual": {T2: 8.3}}
    assert list(parser.facts) == ["DAAAA1111.pm2_5ConcMassIndividual"]


EXPECTED_MINUTE = {
    "DAAAA1111.no2ConcIndividual": {T2: 12.64, T3: 0.0},
    "DAAAA1111.pm2_5ConcMassIndividual": {T2: 8.3},
    "DBBBB2222.no2ConcIndividual": {R1: 15.1, R2: 16.0},
}


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: io.BytesIO(MINUTE_CSV), id="csv"),
        pytest.param(lambda: io.BytesIO(gzip.compress(MINUTE_CSV)), id="csv.gz"),
        pytest.param(lambda: one_way(MINUTE_CSV), id="csv-stream"),
        pytest.param(lambda: one_way(gzip.compress(MINUTE_CSV)), id="csv.gz-stream"),
        pytest.param(lambda: io.BytesIO(MINUTE_CSV.replace(b"\n", b"\r\n")), id="csv-crlf"),
        pytest.param(lambda: io.BytesIO(b"\xef\xbb\xbf" + MINUTE_CSV), id="csv-bom"),
        pytest.param(lambda: io.BytesIO(as_parquet(MINUTE_CSV, typed=True)), id="parquet-typed"),
        pytest.param(lambda: io.BytesIO(as_parquet(MINUTE_CSV, typed=False)), id="parquet-strings"),
        pytest.param(lambda: one_way(as_parquet(MINUTE_CSV, typed=True)), id="parquet-stream"),
    ],
)
def test_every_format_gives_the_same_frames(make: Any) -> None:
    parser = ReportParser()
    stream = make()
    assert collect(parser.iter_frames(stream)) == EXPECTED_MINUTE
    assert not stream.closed  # the caller's stream is left open
    assert parser.stats.rows == 5
    assert parser.stats.invalid_dropped == 1


def test_gzip_with_several_members() -> None:
    head, rows = MINUTE_CSV.split(b"\n", 1)
    data = gzip.compress(head + b"\n") + gzip.compress(rows)
    frames, _ = parse(data)
    assert collect(frames) == EXPECTED_MINUTE


def test_parquet_with_other_column_types() -> None:
    """Clarity's Parquet types are unconfirmed: ns timestamps without zone, integers, numeric strings."""
    table = pa.table(
        {
            "datasourceId": pa.array(["DAAAA1111", "DAAAA1111"]).dictionary_encode(),
            "sourceId": ["AAAAAAA1", "AAAAAAA1"],
            "sourceType": ["CLARITY_NODE", "CLARITY_NODE"],
            "outputFrequency": ["hour", "hour"],
            "startOfPeriod": pa.array(
                [datetime(2024, 1, 1, 1), datetime(2024, 1, 1, 0)], pa.timestamp("ns")
            ),  # naive = UTC
            "endOfPeriod": ["2024-01-01T02:00:00.000Z", "2024-01-01T01:00:00.000Z"],
            "pm2_5ConcMassNowcastUsEpaAqi.value": pa.array([38, None], pa.int64()),
            "pm2_5ConcMass1HourMean.value": ["12.5", ""],
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    hour0, hour1, hour2 = us("2024-01-01T00:00:00Z"), us("2024-01-01T01:00:00Z"), us("2024-01-01T02:00:00Z")
    frames, _ = parse(sink.getvalue())
    assert collect(frames) == {
        "DAAAA1111.pm2_5ConcMassNowcastUsEpaAqi": {hour1: 38.0},
        "DAAAA1111.pm2_5ConcMass1HourMean": {hour1: 12.5},
    }
    frames, _ = parse(sink.getvalue(), timestamp="end")
    assert collect(frames)["DAAAA1111.pm2_5ConcMass1HourMean"] == {hour2: 12.5}
    assert hour0 not in collect(frames)["DAAAA1111.pm2_5ConcMass1HourMean"]


# -- hour, day, node and reference-site reports ------------------------------------------------------
NODE_HOUR_CSV = (
    b"nodeId,sourceId,sourceType,outputFrequency,startOfPeriod,endOfPeriod,locationLatitude,"
    b"locationLongitude,pm2_5ConcMass1HourMean.raw,pm2_5ConcMass1HourMean.status,pm2_5ConcMass1HourMean.value,"
    b"pm2_5ConcMassNowcastUsEpaAqi.raw,pm2_5ConcMassNowcastUsEpaAqi.status,pm2_5ConcMassNowcastUsEpaAqi.value\n"
    b"AQQCNWJ6,AQQCNWJ6,CLARITY_NODE,hour,2023-11-01T01:00:00.000Z,2023-11-01T02:00:00.000Z,41.8,-87.7,"
    b"14.2,calibrated-ready,11.1,55,calibrated-ready,46\n"
    b"AQQCNWJ6,AQQCNWJ6,CLARITY_NODE,hour,2023-11-01T00:00:00.000Z,2023-11-01T01:00:00.000Z,41.8,-87.7,"
    b"13.0,calibrated-ready,10.4,53,calibrated-ready,43\n"
    b"A3TM3GGL,A3TM3GGL,CLARITY_NODE,hour,2023-11-01T00:00:00.000Z,2023-11-01T01:00:00.000Z,41.7,-87.6,"
    b"9.0,calibration-error,,38,calibration-error,\n"
)
H0, H1, H2 = us("2023-11-01T00:00:00Z"), us("2023-11-01T01:00:00Z"), us("2023-11-01T02:00:00Z")


def test_node_hour_report_start_of_period() -> None:
    frames, parser = parse(gzip.compress(NODE_HOUR_CSV))
    assert collect(frames) == {
        "AQQCNWJ6.pm2_5ConcMass1HourMean": {H0: 10.4, H1: 11.1},
        "AQQCNWJ6.pm2_5ConcMassNowcastUsEpaAqi": {H0: 43.0, H1: 46.0},
    }
    assert parser.stats.files_without_qc_assessment == 1  # nothing could be dropped
    facts = parser.facts["AQQCNWJ6.pm2_5ConcMass1HourMean"]
    assert (facts.id_column, facts.report_kind, facts.frequency) == ("nodeId", "node", "hour")
    assert facts.source_ids == ("AQQCNWJ6",)


def test_node_hour_report_end_of_period() -> None:
    frames, _ = parse(NODE_HOUR_CSV, timestamp="end", attributes="raw")
    assert collect(frames) == {
        "AQQCNWJ6.pm2_5ConcMass1HourMean": {H1: 13.0, H2: 14.2},
        "AQQCNWJ6.pm2_5ConcMassNowcastUsEpaAqi": {H1: 53.0, H2: 55.0},
        "A3TM3GGL.pm2_5ConcMass1HourMean": {H1: 9.0},
        "A3TM3GGL.pm2_5ConcMassNowcastUsEpaAqi": {H1: 38.0},
    }


@pytest.mark.parametrize("id_column", ["refSiteId", "referenceSiteId"])
def test_reference_site_day_report(id_column: str) -> None:
    data = (
        f"{id_column},sourceId,sourceType,outputFrequency,startOfPeriod,endOfPeriod,locationLatitude,"
        "locationLongitude,o3Conc24HourMean.qcAssessment,o3Conc24HourMean.raw,o3Conc24HourMean.status,"
        "o3Conc24HourMean.value\n"
        "RCR7X5QP,RCR7X5QP,REFERENCE_SITE,day,2024-01-02T00:00:00.000Z,2024-01-03T00:00:00.000Z,41.9,-87.6,"
        "valid,31.5,sensor-ready,31.5\n"
        "RCR7X5QP,RCR7X5QP,REFERENCE_SITE,day,2024-01-01T00:00:00.000Z,2024-01-02T00:00:00.000Z,41.9,-87.6,"
        "invalid,90.0,sensor-ready,90.0\n"
    ).encode()
    frames, parser = parse(data)
    assert collect(frames) == {"RCR7X5QP.o3Conc24HourMean": {us("2024-01-02T00:00:00Z"): 31.5}}
    facts = parser.facts["RCR7X5QP.o3Conc24HourMean"]
    assert (facts.report_kind, facts.frequency) == ("reference-site", "day")
    view = signal_metadata(parser.facts, org="cityof58A9")["RCR7X5QP.o3Conc24HourMean"]
    assert view["sampleInterval"] == "P1D"
    assert view["annotations"]["clarity/ref-site-id"] == "RCR7X5QP"
    assert "datasource" not in view["labels"]


def test_missing_output_frequency_column() -> None:
    data = b"nodeId,startOfPeriod,pm2_5ConcMass1HourMean.value\nAQQCNWJ6,2023-11-01T00:00:00.000Z,10.4\n"
    with pytest.raises(ValueError, match=r"no outputFrequency column: pass output_frequency"):
        parse(data)
    frames, parser = parse(data, output_frequency="hour")
    assert collect(frames) == {"AQQCNWJ6.pm2_5ConcMass1HourMean": {H0: 10.4}}
    assert parser.facts["AQQCNWJ6.pm2_5ConcMass1HourMean"].source_ids == ("AQQCNWJ6",)
    with pytest.raises(ValueError, match=r"outputFrequency 'hour', expected output_frequency='day'"):
        parse(NODE_HOUR_CSV, output_frequency="day")


# -- edge cases ----------------------------------------------------------------------------------------
def test_duplicate_times_last_row_wins() -> None:
    data = (
        MINUTE_HEADER + "DAAAA1111,AAAAAAA1,CLARITY_NODE,minute,2024-07-30T22:25:56.579Z,41.8,-87.7,"
        "valid,[],1,calibrated-ready,1.5,valid,[],2,calibrated-ready,2.5\n"
        "DAAAA1111,AAAAAAA1,CLARITY_NODE,minute,2024-07-30T22:24:56.100Z,41.8,-87.7,"
        "valid,[],3,calibrated-ready,3.5,valid,[],4,calibrated-ready,4.5\n"
        "DAAAA1111,AAAAAAA1,CLARITY_NODE,minute,2024-07-30T22:25:56.579Z,41.8,-87.7,"
        "valid,[],5,calibrated-ready,5.5,,,,,\n"
    ).encode()
    frames, parser = parse(data)
    assert len(frames) == 1
    assert frames[0].duplicates == 1
    assert collect(frames) == {
        "DAAAA1111.no2ConcIndividual": {T1: 3.5, T2: 5.5},
        "DAAAA1111.pm2_5ConcMassIndividual": {T1: 4.5},  # the later row's empty cell wins
    }
    assert parser.stats.duplicate_rows == 1


def test_small_batches_keep_each_source_on_its_own_axis() -> None:
    frames, parser = parse(MINUTE_CSV, batch_rows=2)
    assert collect(frames) == EXPECTED_MINUTE
    assert parser.stats.batches == 3
    assert parser.stats.max_batch_rows == 2
    assert parser.stats.rows == 5


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(MINUTE_HEADER.encode(), id="csv"),
        pytest.param(MINUTE_HEADER.rstrip("\n").encode(), id="csv-no-newline"),
        pytest.param(gzip.compress(MINUTE_HEADER.encode()), id="csv.gz"),
        pytest.param(as_parquet(MINUTE_HEADER.encode(), typed=False), id="parquet"),
    ],
)
def test_header_only_file_gives_no_frames(data: bytes) -> None:
    frames, parser = parse(data)
    assert frames == []
    assert parser.stats.rows == 0
    assert parser.stats.files == 1
    assert parser.facts == {}


def test_empty_file() -> None:
    with pytest.raises(ValueError, match="report file is empty"):
        parse(b"")


def test_several_files_add_up() -> None:
    parser = ReportParser()
    first = collect(parser.iter_frames(io.BytesIO(gzip.compress(MINUTE_CSV))))
    second = collect(parser.iter_frames(io.BytesIO(NODE_HOUR_CSV)))
    assert set(parser.facts) == set(first) | set(second)
    assert (parser.stats.files, parser.stats.rows) == (2, 8)
    assert parser.stats.files_without_qc_assessment == 1


def test_bad_cells_name_the_row_or_column() -> None:
    bad_time = MINUTE_CSV.replace(b"2024-07-30T22:26:10.000Z", b"")
    with pytest.raises(ValueError, match=r"report file row 4: 'time' is empty"):
        parse(bad_time)
    with pytest.raises(ValueError, match=r"cannot parse 'yesterday'"):
        parse(MINUTE_CSV.replace(b"2024-07-30T22:26:10.000Z", b"yesterday"))
    with pytest.raises(ValueError, match=r"CSV conversion error to double"):
        parse(MINUTE_CSV.replace(b"12.64", b"high"))
    with pytest.raises(ValueError, match=r"row 1: 'no2ConcIndividual.value' is inf"):
        parse(MINUTE_CSV.replace(b"12.64", b"inf"))
    with pytest.raises(ValueError, match=r"row 2: 'datasourceId' is empty"):
        parse(
            MINUTE_CSV.replace(
                b"DBBBB2222,RBBBBBB2,REFERENCE_SITE,minute,2024-07-30T22:25:10",
                b",RBBB,X,minute,2024-07-30T22:25:10",
            )
        )


# -- header problems -----------------------------------------------------------------------------------
ENGLISH_HEADER = (
    b'nodeId,Source Id,Source Type,Output Frequency,Start of Period,End of Period,"Location Latitude [deg]",'
    b'"Location Longitude [deg]","PM 2.5 mass concentration, 1-hour mean value"\n'
    b"AQQCNWJ6,AQQCNWJ6,CLARITY_NODE,hour,2023-11-01T00:00:00.000Z,2023-11-01T01:00:00.000Z,41.8,-87.7,10.4\n"
)
LEGACY = (
    b"datasourceId,sourceId,sourceType,outputFrequency,time,pm2_5ConcMass.value\n"
    b"DAAAA1111,AAAAAAA1,CLARITY_NODE,minute,2024-07-30T22:25:56.579Z,8.3\n"
)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            ENGLISH_HEADER,
            r"non-canonical column labels such as \['Source Id'.*metric_label_style='canonical'",
        ),
        (gzip.compress(ENGLISH_HEADER), r"non-canonical column labels.*metric_label_style='canonical'"),
        (LEGACY, r"non-canonical metric columns such as \['pm2_5ConcMass.value'\].*'canonical'"),
        (b"<html>Access denied</html>\n", r"first column is '<html>Access denied</html>'"),
        (b"\n\n", r"no header line"),
        (MINUTE_CSV.replace(b"time,", b"when,", 1), r"neither a 'time' nor a 'startOfPeriod' column"),
    ],
)
def test_header_errors(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(data)


def test_end_of_period_missing() -> None:
    data = NODE_HOUR_CSV.replace(b",endOfPeriod", b"", 1).replace(b",2023-11-01T02:00:00.000Z", b"")
    with pytest.raises(ValueError, match=r"neither a 'time' nor a 'endOfPeriod' column \(timestamp='end'\)"):
        parse(data, timestamp="end")


def test_unknown_metric_lists_what_the_report_has() -> None:
    with pytest.raises(
        ValueError,
        match=r"metrics: \['o3ConcIndividual'\] not in the report file; it has "
        r"\['no2ConcIndividual', 'pm2_5ConcMassIndividual'\]",
    ):
        parse(MINUTE_CSV, metrics=["o3ConcIndividual", "no2ConcIndividual"])


def test_missing_attribute_column() -> None:
    data = NODE_HOUR_CSV.replace(b"pm2_5ConcMass1HourMean.raw", b"pm2_5ConcMass1HourMean.rawish")
    with pytest.raises(ValueError, match=r"no column 'pm2_5ConcMass1HourMean.raw'"):
        parse(data, attributes="raw")


def test_mixed_frequencies() -> None:
    data = NODE_HOUR_CSV.replace(b"CLARITY_NODE,hour,2023-11-01T01", b"CLARITY_NODE,day,2023-11-01T01")
    with pytest.raises(ValueError, match=r"mixes output frequencies \['day', 'hour'\]"):
        parse(data)
    with pytest.raises(ValueError, match=r"outputFrequency 'minute' but period columns"):
        parse(NODE_HOUR_CSV.replace(b",hour,", b",minute,"))


# -- options -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"attributes": ("value", "status")}, r"attributes: status are not numeric"),
        ({"attributes": ["qcFlags", "qcAssessment"]}, r"attributes: qcFlags, qcAssessment are not numeric"),
        ({"attributes": ["calibrated"]}, r"attributes: unknown \['calibrated'\]"),
        ({"attributes": []}, r"attributes must name at least one"),
        ({"attributes": ["raw", "raw"]}, r"names an attribute twice"),
        ({"metrics": ["PM 2.5 mass concentration"]}, r"metrics\[0\]: 'PM 2.5 mass concentration' is not a"),
        ({"metrics": []}, r"metrics must name at least one metric"),
        ({"timestamp": "middle"}, r"timestamp must be 'start' or 'end'"),
        ({"output_frequency": "week"}, r"output_frequency must be one of minute, hour, day"),
        ({"batch_rows": 0}, r"batch_rows must be a positive integer"),
        (
            {"key_template": "{id}.{unit}"},
            r"key_template '\{id\}.\{unit\}' uses unknown field\(s\) \['unit'\]",
        ),
        ({"key_template": "{}.{metric}"}, r"uses unknown field\(s\) \[''\]"),
        ({"key_template": "{id.upper}"}, r"uses unknown field\(s\) \['id.upper'\]"),
        ({"key_template": "{id"}, r"not a valid format string"),
        ({"key_template": "{id} {metric}"}, r"gives invalid keys such as 'DABCD1234 pm2_5ConcMass1HourMean'"),
        ({"key_template": "{id:d}"}, r"cannot be formatted"),
        (
            {"attributes": ("raw", "value"), "key_template": "{id}.{metric}"},
            r"must contain \{attribute\} when several attributes are loaded",
        ),
    ],
)
def test_option_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReportParser(**options)


def test_key_template_fields() -> None:
    template = "clarity/{frequency}/{source_type}/{source_id}/{id}/{metric}#{attribute}"
    frames, parser = parse(MINUTE_CSV, key_template=template, metrics=["no2ConcIndividual"])
    assert set(collect(frames)) == {
        "clarity/minute/CLARITY_NODE/AAAAAAA1/DAAAA1111/no2ConcIndividual#value",
        "clarity/minute/REFERENCE_SITE/RBBBBBB2/DBBBB2222/no2ConcIndividual#value",
    }
    assert parser.key_template == template


def test_key_template_invalid_key_from_the_data() -> None:
    data = MINUTE_CSV.replace(b"DBBBB2222", b"DBB B2222")
    with pytest.raises(
        ValueError,
        match=r"key_template '\{id\}.\{metric\}' gives the invalid key "
        r"'DBB B2222.no2ConcIndividual' for datasourceId 'DBB B2222'",
    ):
        parse(data)


def test_key_template_collisions() -> None:
    with pytest.raises(ValueError, match=r"gives the same key 'minute.no2ConcIndividual' to DAAAA1111/"):
        parse(MINUTE_CSV, key_template="{frequency}.{metric}")
    with pytest.raises(
        ValueError,
        match=r"gives the same key 'DAAAA1111' to DAAAA1111/no2ConcIndividual/value \(minute\) and "
        r"DAAAA1111/pm2_5ConcMassIndividual/value",
    ):
        parse(MINUTE_CSV, key_template="{id}")


def test_swapped_device_is_one_signal_with_both_sources() -> None:
    data = MINUTE_CSV.replace(
        b"AAAAAAA1,CLARITY_NODE,minute,2024-07-30T22:26:57",
        b"AZZZZZZ9,CLARITY_NODE,minute,2024-07-30T22:26:57",
    )
    frames, parser = parse(data)
    assert collect(frames)["DAAAA1111.no2ConcIndividual"] == {T2: 12.64, T3: 0.0}
    assert parser.facts["DAAAA1111.no2ConcIndividual"].source_ids == ("AAAAAAA1", "AZZZZZZ9")
    assert parser.facts["DAAAA1111.pm2_5ConcMassIndividual"].source_ids == ("AAAAAAA1",)  # no value at T3
    frames, _ = parse(data, key_template="{source_id}.{metric}")
    assert collect(frames)["AZZZZZZ9.no2ConcIndividual"] == {T3: 0.0}


# -- signal metadata -----------------------------------------------------------------------------------
def test_signal_metadata_views() -> None:
    _, parser = parse(MINUTE_CSV, attributes=("value", "raw"))
    views = signal_metadata(parser.facts, org="myorgVD43")
    assert views["DAAAA1111.no2ConcIndividual.value"] == {
        "name": "NO2 concentration — DAAAA1111",
        "description": "Clarity datasource DAAAA1111: no2ConcIndividual.value, minute report data",
        "labels": {
            "org": ["myorgVD43"],
            "datasource": ["DAAAA1111"],
            "source": ["AAAAAAA1"],
            "sourceType": ["CLARITY_NODE"],
            "metric": ["no2ConcIndividual"],
            "frequency": ["minute"],
        },
        "engUnit": "ppb",
        "sourceType": "measurement",
        "sampleInterval": None,
        "annotations": {
            "clarity/datasource-id": "DAAAA1111",
            "clarity/source-ids": "AAAAAAA1",
            "clarity/metric": "no2ConcIndividual",
            "clarity/attribute": "value",
            "clarity/output-frequency": "minute",
        },
    }
    assert views["DAAAA1111.pm2_5ConcMassIndividual.raw"]["name"] == (
        "PM2.5 mass concentration (raw) — DAAAA1111"
    )
    for key, view in views.items():
        assert save_view(key, view) == {
            **view,
            "valueType": "numeric",
            "enumValues": {},
            "gapDetection": None,
        }


def test_signal_metadata_hour_node_without_org() -> None:
    _, parser = parse(NODE_HOUR_CSV)
    view = signal_metadata(parser.facts, org=None)["AQQCNWJ6.pm2_5ConcMassNowcastUsEpaAqi"]
    assert view["name"] == "PM2.5 mass concentration, NowCast, US EPA AQI — AQQCNWJ6"
    assert view["labels"] == {
        "source": ["AQQCNWJ6"],
        "sourceType": ["CLARITY_NODE"],
        "metric": ["pm2_5ConcMassNowcastUsEpaAqi"],
        "frequency": ["hour"],
    }
    assert (view["engUnit"], view["sourceType"], view["sampleInterval"]) == ("", "aggregation", "PT1H")
    assert view["annotations"]["clarity/node-id"] == "AQQCNWJ6"


def test_signal_metadata_long_names_are_cut_to_100() -> None:
    facts = SignalFacts(
        "D" * 60,
        "datasourceId",
        "someVeryLongQuantityNameWithManyWords24HourRollingMeanUsEpaAqi",
        "raw",
        "hour",
        (),
        (),
    )
    view = signal_metadata({"k": facts}, org="o")["k"]
    assert len(view["name"]) == 100
    assert view["name"].endswith("… — " + "D" * 60)
    assert save_view("k", view)["name"] == view["name"]
    assert "source" not in view["labels"]
    assert "clarity/source-ids" not in view["annotations"]


# -- files from the sandbox generator ------------------------------------------------------------------
FLEET = sandbox.default_fleet("myorgVD43", nodes=3, reference_sites=2)
START = datetime(2024, 3, 1, tzinfo=UTC)


def expected_from_table(
    table: pa.Table, *, attribute: str = "value", include_invalid: bool = False, timestamp: str = "start"
) -> dict[str, dict[int, float]]:
    """An independent reading of a report table (CSV text semantics), row by row in Python."""
    names = table.column_names
    time_column = "time" if "time" in names else ("startOfPeriod" if timestamp == "start" else "endOfPeriod")
    metrics = [n.rsplit(".", 1)[0] for n in names if n.endswith(".value")]
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for row in table.to_pylist():
        time = us(row[time_column])
        for metric in metrics:
            text = row[f"{metric}.{attribute}"]
            if text is None:
                continue
            if not include_invalid and row.get(f"{metric}.qcAssessment") == "invalid":
                continue
            out[f"{row[names[0]]}.{metric}"][time] = float(text)
    return dict(out)


@pytest.mark.parametrize(
    ("report", "frequency", "hours", "file_format", "options"),
    [
        ("datasource-measurements", "minute", 6, "csv-wide", {}),
        ("datasource-measurements", "minute", 3, "parquet-wide", {"include_invalid": True}),
        ("datasource-measurements", "hour", 72, "csv-wide", {"attribute": "raw"}),
        ("node-measurements", "hour", 48, "parquet-wide", {"timestamp": "end"}),
        ("reference-site-measurements", "day", 24 * 10, "csv-wide", {}),
        ("datasource-measurements", "day", 24 * 10, "parquet-wide", {"attribute": "raw"}),
    ],
)
def test_sandbox_report_matches_the_generated_table(
    tmp_path: Path, report: str, frequency: str, hours: int, file_format: str, options: dict[str, Any]
) -> None:
    kind = {"node-measurements": "CLARITY_NODE", "reference-site-measurements": "REFERENCE_SITE"}.get(report)
    sources = tuple(s for s in FLEET if kind is None or s.source_type == kind)
    spec = sandbox.ReportSpec(
        report=report,
        output_frequency=frequency,
        start=START,
        end=START + timedelta(hours=hours),
        sources=sources,
        file_format=file_format,
        qc_assessment=True,
        qc_flags=True,
    )
    paths = sandbox.write_report_files(spec, tmp_path, "JBTEST0001", files=2, batch_rows=700)
    attribute = options.get("attribute", "value")
    parser = ReportParser(
        attributes=(attribute,),
        include_invalid=options.get("include_invalid", False),
        timestamp=options.get("timestamp", "start"),
        batch_rows=1000,
    )
    frames: list[Frame] = []
    for path in paths:
        with path.open("rb") as stream:
            frames.extend(parser.iter_frames(stream))
    expected = expected_from_table(
        sandbox.read_report_table(paths),
        attribute=attribute,
        **{k: v for k, v in options.items() if k != "attribute"},
    )
    assert expected  # the comparison means something
    assert collect(frames) == expected
    assert set(parser.facts) == set(expected)
    assert parser.stats.rows == sandbox.count_report_rows(spec)
    assert parser.stats.points == sum(len(v) for v in expected.values())
    assert parser.stats.max_batch_rows <= 1000
    assert parser.stats.files == 2
    if options.get("include_invalid") or not any(s.source_type == "CLARITY_NODE" for s in sources):
        assert parser.stats.invalid_dropped == 0
    else:
        assert parser.stats.invalid_dropped > 0
    for facts in parser.facts.values():
        assert facts.frequency == frequency
        assert facts.id_column == sandbox.ID_COLUMNS[report]
    views = signal_metadata(parser.facts, org="myorgVD43")
    for key, view in views.items():
        save_view(key, view)


@pytest.mark.parametrize("style", ["english", "legacy"])
def test_sandbox_non_canonical_labels_are_refused(tmp_path: Path, style: str) -> None:
    spec = sandbox.ReportSpec(
        report="node-measurements",
        output_frequency="hour",
        start=START,
        end=START + timedelta(hours=3),
        sources=tuple(s for s in FLEET if s.source_type == "CLARITY_NODE"),
        metric_label_style=style,
    )
    (path,) = sandbox.write_report_files(spec, tmp_path, "JBTEST0002")
    with path.open("rb") as stream, pytest.raises(ValueError, match="metric_label_style='canonical'"):
        list(ReportParser().iter_frames(stream))


def test_bounded_memory_on_a_large_minute_report(tmp_path: Path) -> None:
    """~300k rows: batches never exceed batch_rows and Arrow's allocations stay far below the file size."""
    fleet = sandbox.default_fleet("memoryorg", nodes=8, reference_sites=2)
    spec = sandbox.ReportSpec(
        report="datasource-measurements",
        output_frequency="minute",
        start=START,
        end=START + timedelta(minutes=30_300),
        sources=fleet,
        qc_assessment=True,
        qc_flags=True,
    )
    (path,) = sandbox.write_report_files(spec, tmp_path, "JBMEMORY01")
    parser = ReportParser()
    baseline = pa.total_allocated_bytes()
    peak = 0
    largest_frame = 0
    with path.open("rb") as raw, io.BufferedReader(OneWay(raw)) as stream:  # cannot seek, like HTTP
        for frame in parser.iter_frames(stream):
            peak = max(peak, pa.total_allocated_bytes() - baseline)
            largest_frame = max(largest_frame, len(frame))
    assert parser.stats.rows == sandbox.count_report_rows(spec) > 290_000
    assert parser.stats.max_batch_rows <= parser.batch_rows
    assert largest_frame <= parser.batch_rows
    assert parser.stats.batches >= parser.stats.rows // parser.batch_rows
    assert peak < 150 * 2**20, f"peak Arrow allocation {peak / 2**20:.0f} MiB"


# -- many Arrow blocks, corrupt files ----------------------------------------------------------------
def many_rows(count: int) -> bytes:
    """The minute report's header and ``count`` rows of one node (several Arrow blocks)."""
    row = (
        "DAAAA1111,AAAAAAA1,CLARITY_NODE,minute,{time},41.8,-87.7,"
        "valid,[],1.5,calibrated-ready,{value},valid,[],10.2,calibrated-ready,8.25\n"
    )
    start = datetime(2024, 7, 1, tzinfo=UTC)
    rows = "".join(
        row.format(time=(start + timedelta(minutes=i)).isoformat().replace("+00:00", "Z"), value=i / 4)
        for i in range(count)
    )
    return (MINUTE_HEADER + rows).encode()


def test_every_row_of_many_blocks_comes_out_once_in_order() -> None:
    frames = list(ReportParser(batch_rows=333).iter_frames(one_way(gzip.compress(many_rows(20_000)))))
    values = collect(frames)["DAAAA1111.no2ConcIndividual"]
    assert list(values.values()) == [i / 4 for i in range(20_000)]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(gzip.compress(MINUTE_CSV)[:10] + b"\xff" * 40, id="bad deflate data in the header"),
        pytest.param(gzip.compress(MINUTE_CSV)[:-30], id="cut in the rows"),
    ],
)
def test_corrupt_gzip_raises_os_error(data: bytes) -> None:
    # OSError (and Arrow's errors) is what the transfer reports as "corrupt or truncated".
    message = r"zlib inflate failed: .*invalid block type|Truncated compressed stream"
    with pytest.raises(OSError, match=message):
        list(ReportParser().iter_frames(one_way(data)))
