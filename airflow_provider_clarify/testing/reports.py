"""Deterministic Clarity report files for the sandbox (gzip ``csv-wide`` and ``parquet-wide``).

Pure functions, no HTTP: :func:`write_report_files` turns a :class:`ReportSpec` into the files
a report's pre-signed URLs would serve. The same spec always gives byte-identical files, and a
reading is a function of (source id, metric, time) only, so overlapping windows agree.

Layout (``reference/clarity-api.md`` §3): one row per source and time; leading columns
``<id>,sourceId,sourceType,outputFrequency``, then ``time`` (minute) or
``startOfPeriod,endOfPeriod`` (hour, day), then ``locationLatitude,locationLongitude``, then
``<metric>.<attribute>`` for every metric in alphabetical order, attributes ``qcAssessment``
and ``qcFlags`` (only when requested), ``raw``, ``status``, ``value``.

Generation streams: rows are produced in vectorised batches (numpy + pyarrow) and written
batch by batch, so memory follows the batch size, not the report size.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import math
import random
import re
import zlib
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fnmatch import translate
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import threading
    from collections.abc import Iterator, Sequence
    from pathlib import Path
    from types import TracebackType

    from numpy.typing import NDArray

REPORT_TYPES = ("datasource-measurements", "node-measurements", "reference-site-measurements")
OUTPUT_FREQUENCIES = ("minute", "hour", "day")
LABEL_STYLES = ("canonical", "english", "legacy")
FILE_FORMATS = ("csv-wide", "parquet-wide")
CLARITY_NODE = "CLARITY_NODE"
REFERENCE_SITE = "REFERENCE_SITE"

#: First column of each report type. ``refSiteId`` is unconfirmed upstream (reference §3.1):
#: by analogy with ``nodeId`` in node reports.
ID_COLUMNS = {
    "datasource-measurements": "datasourceId",
    "node-measurements": "nodeId",
    "reference-site-measurements": "refSiteId",
}

MINUTE_METRICS = (
    "atmPressureIndividual",
    "bcAllSourcesIndividual",
    "bcBiomassIndividual",
    "bcFossilFuelIndividual",
    "bcSpectralBIndividual",
    "bcSpectralGIndividual",
    "bcSpectralIRIndividual",
    "bcSpectralRIndividual",
    "bcSpectralUVIndividual",
    "no2ConcIndividual",
    "o3ConcIndividual",
    "pm10ConcMassIndividual",
    "pm10ConcNumIndividual",
    "pm1ConcMassIndividual",
    "pm1ConcNumIndividual",
    "pm2_5ConcMassIndividual",
    "pm2_5ConcNumIndividual",
    "relHumidAmbientIndividual",
    "relHumidInternalIndividual",
    "temperatureAmbientIndividual",
    "temperatureInternalIndividual",
    "windDirectionIndividual",
    "windSpeedIndividual",
)
# The full hour/day dictionaries are unconfirmed upstream (reference §3.3); these are the
# names seen in real files and docs.
HOUR_METRICS = tuple(
    sorted(
        (
            "pm2_5ConcMass1HourMean",
            "pm2_5ConcMass24HourRollingMean",
            "pm2_5ConcMassNowcast",
            "pm2_5ConcMassNowcastUsEpaAqi",
            "pm10ConcMass1HourMean",
            "pm10ConcMass24HourRollingMean",
            "no2Conc1HourMean",
            "no2Conc1HourMeanUsEpaAqi",
            "o3Conc1HourMean",
            "temperatureInternal1HourMean",
            "relHumidInternal1HourMean",
            "temperatureAmbient1HourMean",
            "relHumidAmbient1HourMean",
        )
    )
)
DAY_METRICS = tuple(
    sorted(
        (
            "pm2_5ConcMass24HourMean",
            "pm2_5ConcMass24HourMeanUsEpaAqi",
            "pm10ConcMass24HourMean",
            "no2Conc24HourMean",
            "o3Conc24HourMean",
            "temperatureInternal24HourMean",
            "relHumidInternal24HourMean",
        )
    )
)
METRICS = {"minute": MINUTE_METRICS, "hour": HOUR_METRICS, "day": DAY_METRICS}

#: Rows per generated batch (and per pyarrow write).
DEFAULT_BATCH_ROWS = 25_000
#: zlib level of the ``.csv.gz`` files: fast, still ~15x smaller than the CSV text.
GZIP_LEVEL = 1

_PERIOD_MS = {"minute": 60_000, "hour": 3_600_000, "day": 86_400_000}
_DAY_MS = 86_400_000
_SKIP_RATE = 0.005  # share of minutes in which a source sends no reading
_GAP_RATE = 0.015  # share of rows in which a measured metric is missing
_INVALID_RATE = 0.03  # share of node values with qcAssessment "invalid"

_STATUSES = pa.array(["sensor-ready", "calibrated-ready", "calibration-missing", "calibration-error"])
_SENSOR_READY, _CALIBRATED_READY, _CALIBRATION_MISSING, _CALIBRATION_ERROR = range(4)
_ASSESSMENTS = pa.array(["valid", "invalid"])
# Flag ids follow the documented ``QC.I.OOB.001`` shape; the others are invented (unconfirmed).
_FLAGS = pa.array(["[]", '["QC.I.OOB.001"]', '["QC.I.OOB.001","QC.I.SPK.002"]'])


class MetricSelectError(ValueError):
    """A ``metricSelect`` expression that cannot be parsed."""


# -- sources ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Datasource:
    """A datasource of an organization and the source (node or reference site) installed in it.

    :param datasource_id: stable datasource id, ``D`` + 4 letters + 4 digits.
    :param source_id: the installed source: node ``A…`` or reference site ``R…``.
    :param source_type: ``CLARITY_NODE`` or ``REFERENCE_SITE``.
    :param latitude: location latitude in degrees.
    :param longitude: location longitude in degrees.
    """

    datasource_id: str
    source_id: str
    source_type: str
    latitude: float
    longitude: float

    def __post_init__(self) -> None:
        if self.source_type not in (CLARITY_NODE, REFERENCE_SITE):
            raise ValueError(
                f"source_type of datasource {self.datasource_id!r} must be {CLARITY_NODE!r} or "
                f"{REFERENCE_SITE!r}, got {self.source_type!r}"
            )


def default_fleet(org: str, *, nodes: int = 4, reference_sites: int = 2) -> tuple[Datasource, ...]:
    """A small fleet of datasources for ``org``, the same for the same arguments.

    :param org: organization id; seeds the ids and locations.
    :param nodes: how many datasources hold a Clarity node.
    :param reference_sites: how many datasources hold a reference site.
    """
    rng = random.Random(zlib.crc32(org.encode()))
    upper = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    alnum = upper + "0123456789"
    lat0, lon0 = 41.8 + rng.uniform(-0.2, 0.2), -87.7 + rng.uniform(-0.2, 0.2)
    fleet = []
    for i in range(nodes + reference_sites):
        source_type = CLARITY_NODE if i < nodes else REFERENCE_SITE
        prefix = "A" if source_type == CLARITY_NODE else "R"
        fleet.append(
            Datasource(
                datasource_id="D"
                + "".join(rng.choices(upper, k=4))
                + "".join(rng.choices("0123456789", k=4)),
                source_id=prefix + "".join(rng.choices(alnum, k=7)),
                source_type=source_type,
                latitude=round(lat0 + rng.uniform(-0.1, 0.1), 5),
                longitude=round(lon0 + rng.uniform(-0.1, 0.1), 5),
            )
        )
    return tuple(fleet)


# -- the request --------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportSpec:
    """Everything that defines a report's files.

    :param report: ``datasource-measurements``, ``node-measurements`` or ``reference-site-measurements``.
    :param output_frequency: ``minute``, ``hour`` or ``day``.
    :param start: window start (inclusive), timezone-aware.
    :param end: window end (exclusive), timezone-aware.
    :param sources: the datasources whose rows the report holds, in row order (for node and
        reference-site reports, the datasources holding those sources).
    :param metric_label_style: ``canonical``, ``english`` or ``legacy``.
    :param file_format: ``csv-wide`` (gzip CSV) or ``parquet-wide``.
    :param metric_select: optional ``metricSelect`` expression, e.g. ``only pm2_5* + :internal``.
    :param qc_assessment: add ``<metric>.qcAssessment`` columns.
    :param qc_flags: add ``<metric>.qcFlags`` columns.
    """

    report: str
    output_frequency: str
    start: datetime
    end: datetime
    sources: tuple[Datasource, ...]
    metric_label_style: str = "canonical"
    file_format: str = "csv-wide"
    metric_select: str | None = None
    qc_assessment: bool = False
    qc_flags: bool = False

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("report", self.report, REPORT_TYPES),
            ("output_frequency", self.output_frequency, OUTPUT_FREQUENCIES),
            ("metric_label_style", self.metric_label_style, LABEL_STYLES),
            ("file_format", self.file_format, FILE_FORMATS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        for name, moment in (("start", self.start), ("end", self.end)):
            if moment.tzinfo is None or moment.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware, got {moment.isoformat()}")
        if self.start >= self.end:
            raise ValueError(f"start ({self.start.isoformat()}) must be before end ({self.end.isoformat()})")
        wanted = {"node-measurements": CLARITY_NODE, "reference-site-measurements": REFERENCE_SITE}.get(
            self.report
        )
        for position, source in enumerate(self.sources):
            if wanted is not None and source.source_type != wanted:
                raise ValueError(
                    f"sources[{position}] ({source.source_id!r}) is a {source.source_type}, "
                    f"a {self.report} report needs {wanted}"
                )
        if self.metric_select is not None:
            parse_metric_select(self.metric_select)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The report's metrics (canonical names, alphabetical, after ``metric_select``)."""
        return select_metrics(METRICS[self.output_frequency], self.metric_select)


# -- metric selection ---------------------------------------------------------------------
# Group keywords: the grammar is unconfirmed upstream (reference §5.4 shows ``:pm25`` and
# ``:internal`` only); the others follow the same idea.
_GROUPS: dict[str, tuple[str, ...]] = {
    ":pm25": ("pm2_5*",),
    ":pm1": ("pm1c*",),
    ":pm10": ("pm10*",),
    ":no2": ("no2*",),
    ":o3": ("o3*",),
    ":bc": ("bc*",),
    ":internal": ("*internal*",),
    ":ambient": ("*ambient*",),
    ":aqi": ("*aqi",),
    ":met": ("temperature*", "relhumid*", "atmpressure*", "wind*"),
}
_ONLY = re.compile(r"\s*only(?:\s+(?P<terms>.*))?\s*", re.IGNORECASE | re.DOTALL)
_GLOB = re.compile(r"[A-Za-z0-9_*?]+")


def parse_metric_select(expression: str) -> tuple[str, ...]:
    """The case-insensitive glob patterns of ``only <term> + <term> ...``.

    Terms are globs over canonical metric names (``pm2_5*``, ``*nowcast*``) or group keywords
    (``:pm25``, ``:internal``, ...). A leading ``+`` is allowed (``only + :pm25``).

    :param expression: the ``metricSelect`` string.
    :raises MetricSelectError: when the expression does not follow that grammar.
    """
    match = _ONLY.fullmatch(expression)
    if match is None:
        raise MetricSelectError(f"metricSelect must look like 'only <metric> + <metric>', got {expression!r}")
    terms = [term.strip() for term in (match.group("terms") or "").split("+")]
    patterns: list[str] = []
    for term in filter(None, terms):
        if term.startswith(":"):
            if term.lower() not in _GROUPS:
                raise MetricSelectError(
                    f"metricSelect group {term!r} is unknown (known: {', '.join(sorted(_GROUPS))})"
                )
            patterns.extend(_GROUPS[term.lower()])
        elif _GLOB.fullmatch(term):
            patterns.append(term)
        else:
            raise MetricSelectError(f"metricSelect term {term!r} is not a metric name, glob or :group")
    if not patterns:
        raise MetricSelectError(f"metricSelect selects nothing: {expression!r}")
    return tuple(patterns)


def select_metrics(metrics: Sequence[str], expression: str | None) -> tuple[str, ...]:
    """``metrics`` filtered by a ``metricSelect`` expression (all of them when it is ``None``).

    :param metrics: canonical metric names, in output order.
    :param expression: the ``metricSelect`` string, or ``None``.
    """
    if expression is None:
        return tuple(metrics)
    regexes = [re.compile(translate(p), re.IGNORECASE) for p in parse_metric_select(expression)]
    return tuple(m for m in metrics if any(r.match(m) for r in regexes))


# -- column labels ------------------------------------------------------------------------
_QUANTITY_ENGLISH = {
    "atmPressure": "Atmospheric pressure",
    "bcAllSources": "Black carbon, all sources",
    "bcBiomass": "Black carbon, biomass",
    "bcFossilFuel": "Black carbon, fossil fuel",
    "bcSpectralB": "Black carbon, spectral B",
    "bcSpectralG": "Black carbon, spectral G",
    "bcSpectralIR": "Black carbon, spectral IR",
    "bcSpectralR": "Black carbon, spectral R",
    "bcSpectralUV": "Black carbon, spectral UV",
    "no2Conc": "NO2 concentration",
    "o3Conc": "O3 concentration",
    "pm10ConcMass": "PM 10 mass concentration",
    "pm10ConcNum": "PM 10 number concentration",
    "pm1ConcMass": "PM 1 mass concentration",
    "pm1ConcNum": "PM 1 number concentration",
    "pm2_5ConcMass": "PM 2.5 mass concentration",
    "pm2_5ConcNum": "PM 2.5 number concentration",
    "relHumidAmbient": "Relative humidity ambient",
    "relHumidInternal": "Relative humidity internal",
    "temperatureAmbient": "Temperature ambient",
    "temperatureInternal": "Temperature internal",
    "windDirection": "Wind direction",
    "windSpeed": "Wind speed",
}
_AGGREGATION_ENGLISH = {
    "Individual": "individual",
    "1HourMean": "1-hour mean",
    "1HourMeanUsEpaAqi": "1-hour mean, UsEpaAqi",
    "24HourRollingMean": "24-hour rolling mean",
    "Nowcast": "Nowcast",
    "NowcastUsEpaAqi": "Nowcast, UsEpaAqi",
    "24HourMean": "24-hour mean",
    "24HourMeanUsEpaAqi": "24-hour mean, UsEpaAqi",
}
_ATTRIBUTE_ENGLISH = {
    "qcAssessment": "QC assessment",
    "qcFlags": "QC flags",
    "raw": "raw",
    "status": "status",
    "value": "value",
}
# Seen in a real english node report (reference §3.1); "Time" for minute reports is unconfirmed.
_LEADING_ENGLISH = {
    "sourceId": "Source Id",
    "sourceType": "Source Type",
    "outputFrequency": "Output Frequency",
    "time": "Time",
    "startOfPeriod": "Start of Period",
    "endOfPeriod": "End of Period",
    "locationLatitude": "Location Latitude [deg]",
    "locationLongitude": "Location Longitude [deg]",
}
# Legacy (v1-style) names drop the frequency's main aggregation: unconfirmed upstream (§3.3).
_LEGACY_DROPPED = {"minute": "Individual", "hour": "1HourMean", "day": "24HourMean"}


def split_metric(metric: str) -> tuple[str, str]:
    """``(quantity, aggregation)`` of a canonical metric name, e.g. ``("pm2_5ConcMass", "Nowcast")``.

    :param metric: canonical metric name.
    :raises ValueError: for a name outside the sandbox's dictionary.
    """
    for quantity in sorted(_QUANTITY_ENGLISH, key=len, reverse=True):
        aggregation = metric[len(quantity) :]
        if metric.startswith(quantity) and aggregation in _AGGREGATION_ENGLISH:
            return quantity, aggregation
    raise ValueError(f"unknown metric {metric!r}")


def leading_columns(report: str, output_frequency: str) -> tuple[str, ...]:
    """Canonical names of the columns before the metrics.

    :param report: the report type.
    :param output_frequency: ``minute``, ``hour`` or ``day``.
    """
    times = ("time",) if output_frequency == "minute" else ("startOfPeriod", "endOfPeriod")
    return (
        ID_COLUMNS[report],
        "sourceId",
        "sourceType",
        "outputFrequency",
        *times,
        "locationLatitude",
        "locationLongitude",
    )


def metric_attributes(qc_assessment: bool, qc_flags: bool) -> tuple[str, ...]:
    """The attributes written for every metric, in file order.

    :param qc_assessment: whether ``qcAssessment`` was requested.
    :param qc_flags: whether ``qcFlags`` was requested.
    """
    return (
        *(("qcAssessment",) if qc_assessment else ()),
        *(("qcFlags",) if qc_flags else ()),
        "raw",
        "status",
        "value",
    )


def column_labels(spec: ReportSpec) -> list[str]:
    """The header of the report's files, in the spec's label style.

    :param spec: the report.
    """
    style = spec.metric_label_style
    labels = list(leading_columns(spec.report, spec.output_frequency))
    if style == "english":
        labels = [labels[0], *(_LEADING_ENGLISH[name] for name in labels[1:])]
    for metric in spec.metrics:
        quantity, aggregation = split_metric(metric)
        for attribute in metric_attributes(spec.qc_assessment, spec.qc_flags):
            if style == "english":
                labels.append(
                    f"{_QUANTITY_ENGLISH[quantity]}, {_AGGREGATION_ENGLISH[aggregation]} "
                    f"{_ATTRIBUTE_ENGLISH[attribute]}"
                )
            elif style == "legacy":
                dropped = _LEGACY_DROPPED[spec.output_frequency]
                rest = aggregation[len(dropped) :] if aggregation.startswith(dropped) else aggregation
                labels.append(f"{quantity}{rest}.{attribute}")
            else:
                labels.append(f"{metric}.{attribute}")
    return labels


def report_schema(spec: ReportSpec) -> pa.Schema:
    """The typed schema of the report (Parquet files use it as is).

    Times are ``timestamp[ms, tz=UTC]``, locations and numeric attributes ``float64`` (AQIs
    ``int64``), everything else ``string``. Clarity's Parquet types are unconfirmed upstream.

    :param spec: the report.
    """
    names = leading_columns(spec.report, spec.output_frequency)
    types: list[pa.DataType] = []
    for name in names:
        if name in ("time", "startOfPeriod", "endOfPeriod"):
            types.append(pa.timestamp("ms", tz="UTC"))
        elif name in ("locationLatitude", "locationLongitude"):
            types.append(pa.float64())
        else:
            types.append(pa.string())
    for metric in spec.metrics:
        number = pa.int64() if metric.endswith("Aqi") else pa.float64()
        for attribute in metric_attributes(spec.qc_assessment, spec.qc_flags):
            types.append(number if attribute in ("raw", "value") else pa.string())
    return pa.schema(list(zip(column_labels(spec), types, strict=True)))


def report_file_names(report_id: str, file_format: str, files: int = 1) -> list[str]:
    """Object names of a report's files: ``<id>.csv.gz`` or ``<id>-1.csv.gz``, ``<id>-2.csv.gz``, ...

    :param report_id: the report id.
    :param file_format: ``csv-wide`` or ``parquet-wide``.
    :param files: how many files the report is split into.
    """
    if files < 1:
        raise ValueError(f"files must be >= 1, got {files}")
    extension = ".parquet" if file_format == "parquet-wide" else ".csv.gz"
    if files == 1:
        return [report_id + extension]
    return [f"{report_id}-{n}{extension}" for n in range(1, files + 1)]


# -- deterministic numbers ----------------------------------------------------------------
_U64 = np.uint64


def _salt(*parts: str) -> np.uint64:
    return _U64(int.from_bytes(hashlib.blake2b("/".join(parts).encode(), digest_size=8).digest(), "little"))


def _mix(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """The splitmix64 finaliser, element-wise (uint64 arithmetic wraps)."""
    x = x + _U64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def _uniform(keys: NDArray[np.uint64], salt: np.uint64, ticks: NDArray[np.int64]) -> NDArray[np.float64]:
    """A uniform number in [0, 1) for each (key, salt, tick), the same on every call."""
    mixed = _mix(keys ^ _mix(ticks.view(np.uint64) ^ salt))
    return (mixed >> _U64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class _Quantity:
    mean: float  # level at Clarity nodes
    amplitude: float  # daily cycle
    noise: float
    node: str | None  # "calibrated" | "missing" | "sensor" | None (not measured by nodes)
    ref_mean: float | None = None  # level at reference sites (None: not measured there)
    low: float | None = 0.0
    high: float | None = None
    gain: float = 1.0  # calibrated value = gain * raw + offset
    offset: float = 0.0
    error_rate: float = 0.0  # share of calibration-error among calibrated values


# Nine quantities measured by Clarity nodes, three by reference sites (reference §3, sample).
_QUANTITIES = {
    "pm2_5ConcMass": _Quantity(14.0, 6.0, 2.5, "calibrated", ref_mean=10.0, gain=0.72, offset=1.0),
    "pm2_5ConcNum": _Quantity(16.0, 7.0, 3.0, "sensor"),
    "pm1ConcMass": _Quantity(9.0, 4.0, 2.0, "missing"),
    "pm1ConcNum": _Quantity(15.0, 7.0, 3.0, "sensor"),
    "pm10ConcMass": _Quantity(19.0, 8.0, 4.0, "missing"),
    "pm10ConcNum": _Quantity(16.5, 7.0, 3.0, "sensor"),
    "no2Conc": _Quantity(
        -8.0, 9.0, 6.0, "calibrated", ref_mean=15.0, low=None, gain=0.35, offset=15.0, error_rate=0.06
    ),
    "o3Conc": _Quantity(30.0, 12.0, 2.0, None, ref_mean=30.0),
    "temperatureInternal": _Quantity(29.0, 5.0, 0.4, "sensor", low=None),
    "relHumidInternal": _Quantity(38.0, 10.0, 1.0, "sensor", high=100.0),
}
# (daily-cycle scale, noise scale) per aggregation.
_AGGREGATIONS = {
    "Individual": (1.0, 1.0),
    "1HourMean": (1.0, 0.35),
    "Nowcast": (0.9, 0.3),
    "24HourRollingMean": (0.25, 0.15),
    "24HourMean": (0.0, 0.2),
}
# US EPA breakpoints (concentration -> index), interpolated linearly: an approximation of the
# official truncation rules, good enough for test data.
_AQI_BREAKPOINTS = {
    "pm2_5ConcMass": ((0.0, 9.0, 35.4, 55.4, 125.4, 225.4, 325.4), (0, 50, 100, 150, 200, 300, 500)),
    "pm10ConcMass": ((0.0, 54, 154, 254, 354, 424, 604), (0, 50, 100, 150, 200, 300, 500)),
    "no2Conc": ((0.0, 53, 100, 360, 649, 1249, 2049), (0, 50, 100, 150, 200, 300, 500)),
}


# -- rows ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Sources:
    first_ids: pa.Array
    source_ids: pa.Array
    source_types: pa.Array
    latitudes: pa.Array
    longitudes: pa.Array
    keys: NDArray[np.uint64]
    is_node: NDArray[np.bool_]
    factors: NDArray[np.float64]  # per-source level
    phases: NDArray[np.float64]  # per-source daily phase, radians
    offsets_ms: NDArray[np.int64]  # per-source second-of-minute of the readings

    @classmethod
    def of(cls, spec: ReportSpec) -> _Sources:
        sources = spec.sources
        keys = np.array([_salt("source", s.source_id) for s in sources], dtype=np.uint64)
        zero = np.zeros(len(sources), dtype=np.int64)
        first = [
            s.datasource_id if spec.report == "datasource-measurements" else s.source_id for s in sources
        ]
        return cls(
            first_ids=pa.array(first, pa.string()),
            source_ids=pa.array([s.source_id for s in sources], pa.string()),
            source_types=pa.array([s.source_type for s in sources], pa.string()),
            latitudes=pa.array([s.latitude for s in sources], pa.float64()),
            longitudes=pa.array([s.longitude for s in sources], pa.float64()),
            keys=keys,
            is_node=np.array([s.source_type == CLARITY_NODE for s in sources], dtype=np.bool_),
            factors=0.7 + 0.6 * _uniform(keys, _salt("level"), zero),
            phases=2 * math.pi * _uniform(keys, _salt("phase"), zero),
            offsets_ms=(_uniform(keys, _salt("offset"), zero) * 20_000).astype(np.int64),
        )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _row_chunks(
    spec: ReportSpec, sources: _Sources, batch_rows: int
) -> Iterator[tuple[NDArray[np.intp], NDArray[np.int64]]]:
    """``(source index, time in ms)`` of the report's rows, in file order, at most ``batch_rows`` a chunk.

    Minute rows are interleaved across sources by reading time; hour and day rows are grouped
    per source in ascending time, with only the periods that lie fully inside the window.
    """
    count = len(spec.sources)
    start, end = _ms(spec.start), _ms(spec.end)
    if count == 0:
        return
    if spec.output_frequency == "minute":
        minutes_per_chunk = max(1, batch_rows // count)
        first_minute, stop_minute = start // 60_000, (end - 1) // 60_000 + 1
        for chunk_start in range(first_minute, stop_minute, minutes_per_chunk):
            chunk_stop = min(chunk_start + minutes_per_chunk, stop_minute)
            minutes = np.repeat(np.arange(chunk_start, chunk_stop, dtype=np.int64), count)
            src = np.tile(np.arange(count, dtype=np.intp), chunk_stop - chunk_start)
            keys = sources.keys[src]
            # One reading per source and minute at an irregular millisecond, a few minutes without.
            jitter = (_uniform(keys, _salt("jitter"), minutes) * 40_000).astype(np.int64)
            times = minutes * 60_000 + sources.offsets_ms[src] + jitter
            keep = (times >= start) & (times < end) & (_uniform(keys, _salt("skip"), minutes) >= _SKIP_RATE)
            src, times = src[keep], times[keep]
            order = np.argsort(times, kind="stable")
            src, times = src[order], times[order]
            for offset in range(0, len(times), batch_rows):
                yield src[offset : offset + batch_rows], times[offset : offset + batch_rows]
        return
    # Day periods start at UTC midnight (site-local alignment is unconfirmed upstream).
    period = _PERIOD_MS[spec.output_frequency]
    first = -(-start // period) * period
    periods = max(0, (end // period) * period - first) // period
    total = count * periods
    for offset in range(0, total, batch_rows):
        flat = np.arange(offset, min(offset + batch_rows, total), dtype=np.int64)
        yield (flat // periods).astype(np.intp), first + (flat % periods) * period


def count_report_rows(spec: ReportSpec, *, batch_rows: int = DEFAULT_BATCH_ROWS) -> int:
    """How many rows the report has (without generating its values).

    :param spec: the report.
    :param batch_rows: rows per chunk while counting minute readings.
    """
    return sum(len(times) for _, times in _row_chunks(spec, _Sources.of(spec), batch_rows))


def _metric_arrays(
    metric: str,
    spec: ReportSpec,
    sources: _Sources,
    src: NDArray[np.intp],
    times: NDArray[np.int64],
) -> list[pa.Array]:
    """The attribute columns of one metric for the given rows."""
    attributes = metric_attributes(spec.qc_assessment, spec.qc_flags)
    is_aqi = metric.endswith("UsEpaAqi")
    number_type = pa.int64() if is_aqi else pa.float64()
    types = [number_type if a in ("raw", "value") else pa.string() for a in attributes]
    quantity_name, aggregation = split_metric(metric.removesuffix("UsEpaAqi"))
    quantity = _QUANTITIES.get(quantity_name)
    rows = len(src)
    is_node = sources.is_node[src]
    measured = np.zeros(rows, dtype=np.bool_)
    if quantity is not None and quantity.node is not None:
        measured |= is_node
    if quantity is not None and quantity.ref_mean is not None:
        measured |= ~is_node
    if quantity is None or not measured.any():
        return [pa.nulls(rows, t) for t in types]

    # Salts come from the base metric, so an AQI column matches its concentration column.
    base = metric.removesuffix("UsEpaAqi")
    keys = sources.keys[src]
    cycle_scale, noise_scale = _AGGREGATIONS[aggregation]
    period = _PERIOD_MS[spec.output_frequency] if spec.output_frequency != "minute" else 0
    when = (times + period // 2).astype(np.float64) / _DAY_MS  # days since the epoch, period middle
    phase = sources.phases[src]
    mean = np.where(is_node, quantity.mean, quantity.ref_mean if quantity.ref_mean is not None else 0.0)
    level = sources.factors[src] * (
        mean * (1 + 0.25 * np.sin(2 * math.pi * when / 5.3 + 1.7 * phase))
        + quantity.amplitude * cycle_scale * np.sin(2 * math.pi * when + phase)
    )
    noise = _uniform(keys, _salt(base, "noise1"), times) + _uniform(keys, _salt(base, "noise2"), times) - 1
    raw = np.clip(level + quantity.noise * noise_scale * noise, quantity.low, quantity.high)
    raw = np.round(raw, 2) + 0.0  # + 0.0 turns -0.0 into 0.0

    present = measured & (_uniform(keys, _salt(base, "gap"), times) >= _GAP_RATE)
    status = np.full(rows, _SENSOR_READY, dtype=np.int8)
    value = raw
    if quantity.node == "calibrated":
        value = np.where(is_node, np.round(np.maximum(quantity.gain * raw + quantity.offset, 0.0), 2), raw)
        errors = _uniform(keys, _salt(base, "calibration"), times) < quantity.error_rate
        status[is_node] = _CALIBRATED_READY
        status[is_node & errors] = _CALIBRATION_ERROR
    elif quantity.node == "missing":
        status[is_node] = _CALIBRATION_MISSING
    has_value = present & ((status == _SENSOR_READY) | (status == _CALIBRATED_READY))

    if is_aqi:
        concentrations, indexes = _AQI_BREAKPOINTS[quantity_name]
        raw = np.rint(np.interp(np.maximum(raw, 0.0), concentrations, indexes)).astype(np.int64)
        value = np.rint(np.interp(np.maximum(value, 0.0), concentrations, indexes)).astype(np.int64)

    invalid = is_node & (_uniform(keys, _salt(base, "qc"), times) < _INVALID_RATE)
    flag = np.where(invalid, np.where(_uniform(keys, _salt(base, "flag"), times) < 0.7, 1, 2), 0)
    columns = {
        "qcAssessment": pc.take(_ASSESSMENTS, pa.array(invalid.astype(np.int8), mask=~present)),
        "qcFlags": pc.take(_FLAGS, pa.array(flag.astype(np.int8), mask=~present)),
        "raw": pa.array(raw, number_type, mask=~present),
        "status": pc.take(_STATUSES, pa.array(status, mask=~present)),
        "value": pa.array(value, number_type, mask=~has_value),
    }
    return [columns[a] for a in attributes]


def _batch(
    spec: ReportSpec, schema: pa.Schema, sources: _Sources, src: NDArray[np.intp], times: NDArray[np.int64]
) -> pa.RecordBatch:
    index = pa.array(src)
    timestamp = pa.timestamp("ms", tz="UTC")
    if spec.output_frequency == "minute":
        time_columns = [pa.array(times, timestamp)]
    else:
        time_columns = [
            pa.array(times, timestamp),
            pa.array(times + _PERIOD_MS[spec.output_frequency], timestamp),
        ]
    arrays = [
        sources.first_ids.take(index),
        sources.source_ids.take(index),
        sources.source_types.take(index),
        pc.take(pa.array([spec.output_frequency]), pa.array(np.zeros(len(src), dtype=np.int8))),
        *time_columns,
        sources.latitudes.take(index),
        sources.longitudes.take(index),
    ]
    for metric in spec.metrics:
        arrays.extend(_metric_arrays(metric, spec, sources, src, times))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def iter_report_batches(
    spec: ReportSpec, *, batch_rows: int = DEFAULT_BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """The report's rows as typed record batches of at most ``batch_rows`` rows (none empty).

    :param spec: the report.
    :param batch_rows: the largest batch.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    schema = report_schema(spec)
    sources = _Sources.of(spec)
    for src, times in _row_chunks(spec, sources, batch_rows):
        yield _batch(spec, schema, sources, src, times)


# -- text and files -----------------------------------------------------------------------
def text_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with every column as ``string`` (the CSV view).

    :param schema: a report schema.
    """
    return pa.schema([(name, pa.string()) for name in schema.names])


def to_text(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch as the CSV file spells it: all strings, empty cells as nulls.

    Times become ``2023-11-01T01:00:00.000Z``, numbers their shortest decimal (``12.64``, ``38``).

    :param batch: a typed report batch.
    """
    columns = []
    for column in batch.columns:
        if column.null_count == len(column):
            columns.append(pa.nulls(len(column), pa.string()))
        elif pa.types.is_timestamp(column.type):
            # Casting the naive timestamp ("2023-11-01 01:00:00.000") is much faster than strftime.
            text = pc.cast(column.cast(pa.timestamp(column.type.unit)), pa.string())
            columns.append(pc.binary_join_element_wise(pc.utf8_replace_slice(text, 10, 11, "T"), "Z", ""))
        elif pa.types.is_string(column.type):
            columns.append(column)
        else:
            columns.append(pc.cast(column, pa.string()))
    return pa.RecordBatch.from_arrays(columns, schema=text_schema(batch.schema))


def _csv_field(column: pa.Array) -> pa.Array:
    """Quote the values that contain a quote, comma or line break (RFC 4180)."""
    needs = pc.match_substring_regex(column, r'[",\r\n]')
    if not pc.any(needs).as_py():
        return column
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(column, '"', '""'), '"', "")
    return pc.if_else(needs, quoted, column)


def csv_header(labels: Sequence[str]) -> bytes:
    """The CSV header line (labels quoted only when needed).

    :param labels: the column labels.
    """
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerow(labels)
    return text.getvalue().encode()


def csv_rows(batch: pa.RecordBatch) -> pa.Buffer:
    """The CSV lines of a batch (no header), one ``\\n``-terminated line per row.

    :param batch: a typed report batch (at least one row).
    """
    # Runs of empty columns (metrics a fleet does not measure) become one constant piece of
    # commas, which keeps the join cheap for the mostly empty wide layout.
    pieces: list[pa.Array | str] = []
    empty_run = 0
    for column, original in zip(to_text(batch).columns, batch.columns, strict=True):
        if column.null_count == len(column):
            empty_run += 1
            continue
        if empty_run:
            pieces.append("," * (empty_run - 1))
            empty_run = 0
        pieces.append(_csv_field(column) if pa.types.is_string(original.type) else column)
    if empty_run:
        pieces.append("," * (empty_run - 1))
    last = pieces.pop()
    if isinstance(last, str):
        pieces.append(last + "\n")
    else:
        pieces.append(pc.binary_join_element_wise(last, "\n", "", null_handling="replace"))
    lines = pc.binary_join_element_wise(*pieces, ",", null_handling="replace", null_replacement="")
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)
    first, last_offset = int(offsets[lines.offset]), int(offsets[lines.offset + len(lines)])
    data = lines.buffers()[2]
    assert data is not None
    return data.slice(first, last_offset - first)


class _CsvGzipWriter(AbstractContextManager["_CsvGzipWriter"]):
    """A ``.csv.gz`` file: zlib's gzip framing (mtime 0, no name) keeps the bytes reproducible."""

    def __init__(self, path: Path, labels: Sequence[str]) -> None:
        self._file = path.open("wb")
        self._zlib = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        self._file.write(self._zlib.compress(csv_header(labels)))

    def write(self, batch: pa.RecordBatch) -> None:
        self._file.write(self._zlib.compress(memoryview(csv_rows(batch))))

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None:
                self._file.write(self._zlib.flush())
        finally:
            self._file.close()


class _ParquetWriter(AbstractContextManager["_ParquetWriter"]):
    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self._writer = pq.ParquetWriter(path, schema, compression="snappy")

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._writer.close()


def write_report_files(
    spec: ReportSpec,
    directory: Path,
    report_id: str,
    *,
    files: int = 1,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    cancel: threading.Event | None = None,
) -> list[Path]:
    """Write the report into ``files`` complete files (each with a header), rows split evenly in order.

    :param spec: the report.
    :param directory: existing folder to write into.
    :param report_id: names the files (:func:`report_file_names`); the content does not depend on it.
    :param files: how many files to split the rows into.
    :param batch_rows: rows generated and written at a time.
    :param cancel: when set, generation stops between batches with :class:`RuntimeError`.
    """
    paths = [directory / name for name in report_file_names(report_id, spec.file_format, files)]
    total = count_report_rows(spec, batch_rows=batch_rows)
    bounds = [total * k // files for k in range(files + 1)]
    schema = report_schema(spec)
    batches = iter_report_batches(spec, batch_rows=batch_rows)
    pending: pa.RecordBatch | None = None
    for k, path in enumerate(paths):
        writer: _CsvGzipWriter | _ParquetWriter
        writer = (
            _ParquetWriter(path, schema)
            if spec.file_format == "parquet-wide"
            else _CsvGzipWriter(path, schema.names)
        )
        with writer:
            remaining = bounds[k + 1] - bounds[k]
            while remaining > 0:
                if cancel is not None and cancel.is_set():
                    raise RuntimeError(f"generation of report {report_id} was cancelled")
                if pending is None:
                    pending = next(batches)
                size = min(remaining, pending.num_rows)
                writer.write(pending.slice(0, size))
                remaining -= size
                pending = pending.slice(size) if size < pending.num_rows else None
    return paths


def read_report_table(paths: Sequence[Path]) -> pa.Table:
    """The rows of report files as one table with CSV-text semantics (strings, empty = null).

    :param paths: the report's files, in order (``.csv.gz`` or ``.parquet``).
    """
    tables = []
    for path in paths:
        if path.name.endswith(".parquet"):
            parquet = pq.ParquetFile(path)
            schema = text_schema(parquet.schema_arrow)
            batches = [to_text(batch) for batch in parquet.iter_batches()]
            tables.append(pa.Table.from_batches(batches, schema=schema))
            continue
        with gzip.open(path, "rt", newline="") as text:
            names = next(csv.reader(text))
        tables.append(
            pa_csv.read_csv(
                path,
                convert_options=pa_csv.ConvertOptions(
                    column_types=dict.fromkeys(names, pa.string()),
                    strings_can_be_null=True,
                    null_values=[""],
                ),
            )
        )
    return pa.concat_tables(tables)
