"""The sandbox's report file generator (pure functions, no HTTP)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_clarify.testing.reports import (
    CLARITY_NODE,
    REFERENCE_SITE,
    Datasource,
    MetricSelectError,
    ReportSpec,
    column_labels,
    count_report_rows,
    csv_header,
    default_fleet,
    iter_report_batches,
    parse_metric_select,
    read_report_table,
    report_file_names,
    report_schema,
    select_metrics,
    write_report_files,
)

if TYPE_CHECKING:
    from pathlib import Path

FLEET = default_fleet("reportsTestOrg1")
NODES = tuple(d for d in FLEET if d.source_type == CLARITY_NODE)
REF_SITES = tuple(d for d in FLEET if d.source_type == REFERENCE_SITE)
T0 = datetime(2024, 7, 30, tzinfo=UTC)
NUMBER = re.compile(r"-?\d+(\.\d{1,2})?")
ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
NODE_METRICS = {
    "no2ConcIndividual",
    "pm10ConcMassIndividual",
    "pm10ConcNumIndividual",
    "pm1ConcMassIndividual",
    "pm1ConcNumIndividual",
    "pm2_5ConcMassIndividual",
    "pm2_5ConcNumIndividual",
    "relHumidInternalIndividual",
    "temperatureInternalIndividual",
}


def make_spec(**changes: Any) -> ReportSpec:
    values: dict[str, Any] = {
        "report": "datasource-measurements",
        "output_frequency": "minute",
        "start": T0,
        "end": T0 + timedelta(hours=1),
        "sources": FLEET,
    }
    values.update(changes)
    return ReportSpec(**values)


def text_table(spec: ReportSpec, tmp_path: Path, name: str = "JBTEST0001") -> pa.Table:
    folder = tmp_path / name
    folder.mkdir()
    return read_report_table(write_report_files(spec, folder, name))


def column(table: pa.Table, name: str) -> list[str | None]:
    return table.column(name).to_pylist()


def test_default_fleet_is_stable_and_shaped_like_clarity_ids() -> None:
    assert default_fleet("reportsTestOrg1") == FLEET
    assert default_fleet("anotherOrg") != FLEET
    assert len(NODES) == 4
    assert len(REF_SITES) == 2
    for source in FLEET:
        assert re.fullmatch(r"D[A-Z]{4}\d{4}", source.datasource_id)
        prefix = "A" if source.source_type == CLARITY_NODE else "R"
        assert re.fullmatch(prefix + r"[A-Z0-9]{7}", source.source_id)
    assert len({d.datasource_id for d in FLEET}) == len(FLEET)


def test_datasource_rejects_unknown_source_type() -> None:
    with pytest.raises(ValueError, match="source_type of datasource 'DABCD1234'"):
        Datasource("DABCD1234", "AABCDEFG", "SENSOR", 1.0, 2.0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"report": "weather"}, "report must be one of"),
        ({"output_frequency": "second"}, "output_frequency must be one of"),
        ({"metric_label_style": "french"}, "metric_label_style"),
        ({"file_format": "xlsx"}, "file_format"),
        ({"start": datetime(2024, 7, 30)}, "start must be timezone-aware"),
        ({"end": T0}, "must be before end"),
        ({"report": "node-measurements", "sources": REF_SITES}, r"sources\[0\].*needs CLARITY_NODE"),
        ({"metric_select": "pm2_5*"}, "metricSelect must look like"),
    ],
)
def test_spec_validation(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_spec(**changes)


def test_minute_rows_are_irregular_interleaved_and_inside_the_window(tmp_path: Path) -> None:
    start = T0 + timedelta(minutes=7, seconds=30)
    spec = make_spec(start=start, end=start + timedelta(hours=2))
    table = text_table(spec, tmp_path)
    times = column(table, "time")
    assert all(t is not None and ISO_MS.fullmatch(t) for t in times)
    parsed = [datetime.fromisoformat(t) for t in times if t]
    assert parsed == sorted(parsed)
    assert min(parsed) >= start
    assert max(parsed) < spec.end
    assert {p.microsecond for p in parsed} != {0}  # irregular milliseconds
    per_source = {d.datasource_id: column(table, "datasourceId").count(d.datasource_id) for d in FLEET}
    assert all(110 <= n <= 121 for n in per_source.values()), per_source  # ~one reading a minute
    assert table.num_rows == count_report_rows(spec)
    # Sources alternate rather than coming in blocks.
    assert len(set(column(table, "datasourceId")[: len(FLEET)])) > 1


def test_hour_rows_cover_only_full_periods_grouped_per_source(tmp_path: Path) -> None:
    spec = make_spec(
        output_frequency="hour", start=T0 + timedelta(minutes=30), end=T0 + timedelta(hours=3, minutes=30)
    )
    table = text_table(spec, tmp_path)
    # 00:30-03:30 holds two full hours: 01:00-02:00 and 02:00-03:00.
    assert column(table, "datasourceId") == [d.datasource_id for d in FLEET for _ in range(2)]
    starts = column(table, "startOfPeriod")
    ends = column(table, "endOfPeriod")
    assert starts == ["2024-07-30T01:00:00.000Z", "2024-07-30T02:00:00.000Z"] * len(FLEET)
    assert ends == ["2024-07-30T02:00:00.000Z", "2024-07-30T03:00:00.000Z"] * len(FLEET)
    assert set(column(table, "outputFrequency")) == {"hour"}


def test_day_periods_start_at_utc_midnight(tmp_path: Path) -> None:
    spec = make_spec(
        output_frequency="day", start=T0 - timedelta(hours=1), end=T0 + timedelta(days=2, hours=1)
    )
    table = text_table(spec, tmp_path)
    assert column(table, "startOfPeriod")[:2] == ["2024-07-30T00:00:00.000Z", "2024-07-31T00:00:00.000Z"]
    assert column(table, "endOfPeriod")[:2] == ["2024-07-31T00:00:00.000Z", "2024-08-01T00:00:00.000Z"]
    assert table.num_rows == 2 * len(FLEET)


def test_node_minute_values_look_like_the_clarity_sample(tmp_path: Path) -> None:
    spec = make_spec(sources=NODES, end=T0 + timedelta(hours=6), qc_assessment=True, qc_flags=True)
    table = text_table(spec, tmp_path)
    populated = {
        name.rsplit(".", 1)[0]
        for name in table.column_names[7:]
        if table.column(name).null_count < table.num_rows
    }
    assert populated == NODE_METRICS
    statuses = {m: set(column(table, f"{m}.status")) - {None} for m in NODE_METRICS}
    assert statuses["pm2_5ConcMassIndividual"] == {"calibrated-ready"}
    assert statuses["no2ConcIndividual"] == {"calibrated-ready", "calibration-error"}
    assert statuses["pm10ConcMassIndividual"] == {"calibration-missing"}
    assert statuses["pm1ConcMassIndividual"] == {"calibration-missing"}
    for metric in ("temperatureInternalIndividual", "relHumidInternalIndividual", "pm2_5ConcNumIndividual"):
        assert statuses[metric] == {"sensor-ready"}
        assert column(table, f"{metric}.value") == column(table, f"{metric}.raw")
    rows = table.to_pylist()
    for row in rows:
        status = row["no2ConcIndividual.status"]
        assert (row["no2ConcIndividual.value"] is None) == (status in ("calibration-error", None))
        assert row["pm10ConcMassIndividual.value"] is None
        if row["pm2_5ConcMassIndividual.raw"] is not None:
            assert row["pm2_5ConcMassIndividual.value"] != row["pm2_5ConcMassIndividual.raw"]
    assert any(float(r["no2ConcIndividual.raw"]) < 0 for r in rows if r["no2ConcIndividual.raw"])
    # Gaps: a measured metric is now and then missing in a row, but rarely.
    missing = sum(r["pm2_5ConcMassIndividual.raw"] is None for r in rows)
    assert 0 < missing < 0.05 * len(rows)
    numbers = [v for m in NODE_METRICS for a in ("raw", "value") for v in column(table, f"{m}.{a}") if v]
    assert all(NUMBER.fullmatch(v) for v in numbers)
    assert not any(v.endswith(".0") for v in numbers)


def test_qc_columns_and_flags(tmp_path: Path) -> None:
    spec = make_spec(end=T0 + timedelta(hours=6), qc_assessment=True, qc_flags=True)
    table = text_table(spec, tmp_path)
    assessments = column(table, "pm2_5ConcMassIndividual.qcAssessment")
    flags = column(table, "pm2_5ConcMassIndividual.qcFlags")
    types = column(table, "sourceType")
    node_values = [a for a, t in zip(assessments, types, strict=True) if a and t == CLARITY_NODE]
    assert 0.01 < node_values.count("invalid") / len(node_values) < 0.06
    for assessment, flag, source_type in zip(assessments, flags, types, strict=True):
        assert (assessment is None) == (flag is None)
        if assessment is None:
            continue
        parsed = json.loads(flag or "")
        assert isinstance(parsed, list)
        assert (assessment == "invalid") == bool(parsed)
        if source_type == REFERENCE_SITE:
            assert assessment == "valid"
    assert all(a is None for a in column(table, "windSpeedIndividual.qcAssessment"))
    # The JSON array inside a CSV cell is quoted with doubled quotes.
    text = gzip.decompress((tmp_path / "JBTEST0001" / "JBTEST0001.csv.gz").read_bytes()).decode()
    assert '"[""QC.I.OOB.001""' in text
    assert ",valid,[]," in text


def test_reference_sites_measure_pm25_o3_no2_only(tmp_path: Path) -> None:
    spec = make_spec(
        report="reference-site-measurements",
        sources=REF_SITES,
        output_frequency="hour",
        end=T0 + timedelta(days=1),
    )
    table = text_table(spec, tmp_path)
    populated = {
        n.rsplit(".", 1)[0] for n in table.column_names[8:] if table.column(n).null_count < table.num_rows
    }
    assert populated == {
        "no2Conc1HourMean",
        "no2Conc1HourMeanUsEpaAqi",
        "o3Conc1HourMean",
        "pm2_5ConcMass1HourMean",
        "pm2_5ConcMass24HourRollingMean",
        "pm2_5ConcMassNowcast",
        "pm2_5ConcMassNowcastUsEpaAqi",
    }
    assert table.column_names[0] == "refSiteId"
    assert column(table, "refSiteId") == column(table, "sourceId")
    assert set(column(table, "refSiteId")) == {d.source_id for d in REF_SITES}


def test_aqi_columns_are_integers(tmp_path: Path) -> None:
    spec = make_spec(output_frequency="hour", end=T0 + timedelta(days=1))
    schema = report_schema(spec)
    assert schema.field("pm2_5ConcMassNowcastUsEpaAqi.value").type == pa.int64()
    assert schema.field("pm2_5ConcMassNowcast.value").type == pa.float64()
    table = text_table(spec, tmp_path)
    values = [v for v in column(table, "pm2_5ConcMassNowcastUsEpaAqi.value") if v is not None]
    assert values
    assert all(re.fullmatch(r"\d+", v) for v in values)


def test_label_styles() -> None:
    english = column_labels(
        make_spec(
            report="node-measurements", sources=NODES, output_frequency="hour", metric_label_style="english"
        )
    )
    assert english[:8] == [
        "nodeId",
        "Source Id",
        "Source Type",
        "Output Frequency",
        "Start of Period",
        "End of Period",
        "Location Latitude [deg]",
        "Location Longitude [deg]",
    ]
    assert "PM 2.5 mass concentration, 1-hour mean value" in english
    assert "PM 2.5 mass concentration, Nowcast, UsEpaAqi value" in english
    assert "Temperature internal, 1-hour mean raw" in english
    legacy = column_labels(make_spec(output_frequency="hour", metric_label_style="legacy"))
    assert legacy[:8] == column_labels(make_spec(output_frequency="hour"))[:8]
    assert "pm2_5ConcMass.value" in legacy
    assert "pm2_5ConcMass24HourRollingMean.value" in legacy
    assert "no2ConcUsEpaAqi.raw" in legacy
    assert len(set(legacy)) == len(legacy)
    assert csv_header(["a", "b, c", 'd"e']) == b'a,"b, c","d""e"\n'


@pytest.mark.parametrize(
    ("expression", "frequency", "expected"),
    [
        ("only pm2_5ConcMass24HourRollingMean", "hour", ["pm2_5ConcMass24HourRollingMean"]),
        ("only *nowcast*", "hour", ["pm2_5ConcMassNowcast", "pm2_5ConcMassNowcastUsEpaAqi"]),
        (
            "ONLY + :pm25 + :internal",
            "day",
            [
                "pm2_5ConcMass24HourMean",
                "pm2_5ConcMass24HourMeanUsEpaAqi",
                "relHumidInternal24HourMean",
                "temperatureInternal24HourMean",
            ],
        ),
        (
            "only pm10* + no2*",
            "minute",
            ["no2ConcIndividual", "pm10ConcMassIndividual", "pm10ConcNumIndividual"],
        ),
    ],
)
def test_metric_select(expression: str, frequency: str, expected: list[str]) -> None:
    assert list(make_spec(output_frequency=frequency, metric_select=expression).metrics) == expected


@pytest.mark.parametrize(
    "expression", ["pm2_5*", "only", "only +", "only :nosuch", "only pm2.5", "just pm2_5*"]
)
def test_metric_select_errors(expression: str) -> None:
    with pytest.raises(MetricSelectError):
        parse_metric_select(expression)


def test_select_metrics_without_expression_keeps_all() -> None:
    assert select_metrics(["b", "a"], None) == ("b", "a")


def test_same_spec_same_bytes_and_overlapping_windows_agree(tmp_path: Path) -> None:
    for file_format in ("csv-wide", "parquet-wide"):
        spec = make_spec(file_format=file_format, qc_assessment=True)
        first = write_report_files(spec, tmp_path, f"JBA{file_format[0]}")
        second = write_report_files(spec, tmp_path, f"JBB{file_format[0]}")
        assert first[0].read_bytes() == second[0].read_bytes()
    early = text_table(make_spec(end=T0 + timedelta(hours=2)), tmp_path, "JBEARLY")
    late = text_table(
        make_spec(start=T0 + timedelta(hours=1), end=T0 + timedelta(hours=3)), tmp_path, "JBLATE"
    )
    overlap = T0 + timedelta(hours=1)
    early_rows = [r for r in early.to_pylist() if datetime.fromisoformat(r["time"]) >= overlap]
    late_rows = [r for r in late.to_pylist() if datetime.fromisoformat(r["time"]) < T0 + timedelta(hours=2)]
    assert early_rows
    assert early_rows == late_rows


def test_split_files_are_complete_and_even(tmp_path: Path) -> None:
    spec = make_spec(output_frequency="hour", end=T0 + timedelta(days=1))
    whole = text_table(spec, tmp_path)
    paths = write_report_files(spec, tmp_path, "JBSPLIT01", files=5)
    assert [p.name for p in paths] == [f"JBSPLIT01-{n}.csv.gz" for n in range(1, 6)]
    header = csv_header(column_labels(spec))
    sizes = []
    for path in paths:
        lines = gzip.decompress(path.read_bytes()).splitlines(keepends=True)
        assert lines[0] == header
        sizes.append(len(lines) - 1)
    assert sum(sizes) == whole.num_rows == 24 * len(FLEET)
    assert max(sizes) - min(sizes) <= 1
    assert read_report_table(paths).equals(whole)


def test_more_files_than_rows_gives_header_only_files(tmp_path: Path) -> None:
    spec = make_spec(output_frequency="day", sources=FLEET[:1], end=T0 + timedelta(days=2))
    paths = write_report_files(spec, tmp_path, "JBFEW0001", files=3)
    counts = [len(gzip.decompress(p.read_bytes()).splitlines()) - 1 for p in paths]
    assert counts == [0, 1, 1]


def test_empty_window_gives_header_only_files(tmp_path: Path) -> None:
    spec = make_spec(
        output_frequency="hour", start=T0 + timedelta(minutes=10), end=T0 + timedelta(minutes=50)
    )
    assert count_report_rows(spec) == 0
    (path,) = write_report_files(spec, tmp_path, "JBEMPTY01")
    assert gzip.decompress(path.read_bytes()) == csv_header(column_labels(spec))
    table = read_report_table([path])
    assert table.num_rows == 0
    assert table.column_names == column_labels(spec)
    parquet_spec = make_spec(
        output_frequency="hour", file_format="parquet-wide", start=spec.start, end=spec.end
    )
    (parquet,) = write_report_files(parquet_spec, tmp_path, "JBEMPTY02")
    assert pq.read_table(parquet).num_rows == 0
    assert pq.read_schema(parquet) == report_schema(parquet_spec)


def test_parquet_types_and_same_rows_as_csv(tmp_path: Path) -> None:
    csv_spec = make_spec(
        output_frequency="hour", end=T0 + timedelta(days=1), qc_assessment=True, qc_flags=True
    )
    parquet_spec = make_spec(
        output_frequency="hour",
        end=T0 + timedelta(days=1),
        qc_assessment=True,
        qc_flags=True,
        file_format="parquet-wide",
    )
    (path,) = write_report_files(parquet_spec, tmp_path, "JBPARQUET")
    assert path.name == "JBPARQUET.parquet"
    table = pq.read_table(path)
    assert table.schema.field("startOfPeriod").type == pa.timestamp("ms", tz="UTC")
    assert table.schema.field("locationLatitude").type == pa.float64()
    assert table.schema.field("pm2_5ConcMass1HourMean.raw").type == pa.float64()
    assert table.schema.field("no2Conc1HourMeanUsEpaAqi.raw").type == pa.int64()
    assert table.schema.field("pm2_5ConcMass1HourMean.qcFlags").type == pa.string()
    assert read_report_table([path]).equals(text_table(csv_spec, tmp_path))


def test_report_file_names() -> None:
    assert report_file_names("JBX", "csv-wide") == ["JBX.csv.gz"]
    assert report_file_names("JBX", "parquet-wide", 2) == ["JBX-1.parquet", "JBX-2.parquet"]
    with pytest.raises(ValueError, match="files must be >= 1"):
        report_file_names("JBX", "csv-wide", 0)


def test_large_minute_report_streams_in_bounded_batches() -> None:
    # ~200k rows: six sources, 23 days of minute readings.
    spec = make_spec(end=T0 + timedelta(days=23), qc_assessment=True, qc_flags=True)
    expected = count_report_rows(spec)
    assert 190_000 < expected < 200_000
    baseline = pa.total_allocated_bytes()
    rows = 0
    batches = 0
    last_time = None
    for batch in iter_report_batches(spec, batch_rows=20_000):
        assert 0 < batch.num_rows <= 20_000
        # Arrow memory follows the batch, not the report (a 200k-row table would be ~10x this).
        assert pa.total_allocated_bytes() - baseline < 64 * 1024 * 1024
        times = batch.column("time")
        assert last_time is None or times[0].as_py() >= last_time
        last_time = times[-1].as_py()
        rows += batch.num_rows
        batches += 1
    assert rows == expected
    assert batches >= 10


def test_csv_text_round_trip_keeps_commas_and_quotes(tmp_path: Path) -> None:
    spec = make_spec(sources=NODES[:1], end=T0 + timedelta(hours=12), qc_flags=True)
    (path,) = write_report_files(spec, tmp_path, "JBCSV0001")
    with gzip.open(path, "rt", newline="") as text:
        rows = list(csv.reader(io.StringIO(text.read())))
    assert all(len(r) == len(rows[0]) for r in rows)
    flags = {r[rows[0].index("no2ConcIndividual.qcFlags")] for r in rows[1:]}
    assert '["QC.I.OOB.001","QC.I.SPK.002"]' in flags
