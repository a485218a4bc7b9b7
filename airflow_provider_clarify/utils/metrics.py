"""Canonical Clarity metric names: the one table of readable names and units (pure logic, stdlib only).

A canonical metric name is ``<quantity><aggregation>[<AQI scale>]`` (reference/clarity-api.md §3.3), e.g.
``pm2_5ConcMass1HourMean``, ``pm2_5ConcMassNowcastUsEpaAqi``, ``no2ConcIndividual``. Report columns are
``<metric>.<attribute>`` (:func:`metric_and_attribute`).

The full dictionary is unconfirmed upstream, so :func:`parse_metric` accepts any *well-formed* name: an
unknown quantity gets a readable name derived from its camelCase spelling and no unit, an unknown AQI scale
is spelled out the same way, and aggregations follow a small grammar (``Individual``, ``Nowcast``,
``<n><Minute|Hour|Day>[Rolling]<Mean|Max|Min|Median|Sum>``). A name without an aggregation (``pm2_5ConcMass``,
the v1-style "legacy" labels) or with spaces (the "english" labels) is not canonical: ``ValueError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Output frequency -> the RFC 3339 sample interval of its signals. Minute readings are irregular (one
#: reading at an arbitrary millisecond, some minutes without), so they get no fixed interval.
SAMPLE_INTERVALS: dict[str, str | None] = {"minute": None, "hour": "PT1H", "day": "P1D"}

_MICRO = "µg/m³"
#: Quantity -> (readable name, engineering unit).
QUANTITIES: dict[str, tuple[str, str]] = {
    "pm1ConcMass": ("PM1 mass concentration", _MICRO),
    "pm2_5ConcMass": ("PM2.5 mass concentration", _MICRO),
    "pm10ConcMass": ("PM10 mass concentration", _MICRO),
    # Number-concentration unit: (unconfirmed) upstream; particles per cm³ is what optical counters report.
    "pm1ConcNum": ("PM1 number concentration", "#/cm³"),
    "pm2_5ConcNum": ("PM2.5 number concentration", "#/cm³"),
    "pm10ConcNum": ("PM10 number concentration", "#/cm³"),
    "no2Conc": ("NO2 concentration", "ppb"),
    "o3Conc": ("O3 concentration", "ppb"),
    "temperatureAmbient": ("Temperature (ambient)", "°C"),
    "temperatureInternal": ("Temperature (internal)", "°C"),
    "relHumidAmbient": ("Relative humidity (ambient)", "%"),
    "relHumidInternal": ("Relative humidity (internal)", "%"),
    "windSpeed": ("Wind speed", "m/s"),
    "windDirection": ("Wind direction", "°"),
    # Pressure unit: (unconfirmed) upstream; hPa is the usual unit of weather sensors.
    "atmPressure": ("Atmospheric pressure", "hPa"),
    # Black-carbon units: (unconfirmed) upstream; µg/m³ like the other mass concentrations.
    "bcAllSources": ("Black carbon (all sources)", _MICRO),
    "bcBiomass": ("Black carbon (biomass)", _MICRO),
    "bcFossilFuel": ("Black carbon (fossil fuel)", _MICRO),
    "bcSpectralUV": ("Black carbon (spectral UV)", _MICRO),
    "bcSpectralB": ("Black carbon (spectral blue)", _MICRO),
    "bcSpectralG": ("Black carbon (spectral green)", _MICRO),
    "bcSpectralR": ("Black carbon (spectral red)", _MICRO),
    "bcSpectralIR": ("Black carbon (spectral infrared)", _MICRO),
}
#: AQI scale suffix -> readable name (others are spelled out from their camelCase).
AQI_SCALES: dict[str, str] = {"UsEpaAqi": "US EPA AQI", "WaDwerAqi": "WA DWER AQI"}

# The quantity ends with a letter, so "pm2_5ConcMass24HourMean" cannot split as "...Mass2" + "4HourMean".
_METRIC = re.compile(
    r"(?P<quantity>[a-z][A-Za-z0-9_]*?[A-Za-z])"
    r"(?P<aggregation>Individual|Nowcast|(?P<n>[1-9][0-9]*)(?P<unit>Minute|Hour|Day)(?P<rolling>Rolling)?"
    r"(?P<statistic>Mean|Max|Min|Median|Sum))"
    r"(?P<scale>[A-Z][A-Za-z]*Aqi)?",
    re.ASCII,
)
_WORD = re.compile(r"[A-Z]{2,}(?=[A-Z][a-z]|[0-9]|$)|[A-Z]?[a-z]+|[A-Z]+|[0-9_]+", re.ASCII)


@dataclass(frozen=True)
class MetricInfo:
    """What a canonical metric name says.

    :param name: the canonical name, e.g. ``pm2_5ConcMassNowcastUsEpaAqi``.
    :param quantity: e.g. ``pm2_5ConcMass``.
    :param aggregation: e.g. ``Individual``, ``1HourMean``, ``24HourRollingMean``, ``Nowcast``.
    :param aqi_scale: e.g. ``UsEpaAqi``, or ``None`` for a physical quantity.
    :param readable: e.g. ``PM2.5 mass concentration, NowCast, US EPA AQI``.
    :param unit: the engineering unit; ``""`` for AQIs and unknown quantities.
    """

    name: str
    quantity: str
    aggregation: str
    aqi_scale: str | None
    readable: str
    unit: str

    @property
    def source_type(self) -> str:
        """Clarify's ``sourceType``: ``measurement`` for individual readings, ``aggregation`` for means,
        NowCast and AQIs (all computed from several readings)."""
        if self.aggregation == "Individual" and self.aqi_scale is None:
            return "measurement"
        return "aggregation"


def _words(camel: str) -> str:
    """``"fooBarUV"`` -> ``"Foo bar UV"``: a readable fallback for names outside the table."""
    words = _WORD.findall(camel)
    text = " ".join(w if w.isupper() else w.lower() for w in words)
    return text[:1].upper() + text[1:] if text else camel


def _aggregation_text(match: re.Match[str]) -> str:
    aggregation = match["aggregation"]
    if aggregation == "Individual":
        return ""
    if aggregation == "Nowcast":
        return "NowCast"
    rolling = "rolling " if match["rolling"] else ""
    return f"{match['n']}-{match['unit'].lower()} {rolling}{match['statistic'].lower()}"


def parse_metric(name: str) -> MetricInfo:
    """Read a canonical metric name.

    :param name: e.g. ``pm2_5ConcMass1HourMean``.
    :raises ValueError: when the name is not ``<quantity><aggregation>[<AQI scale>]``.
    """
    match = _METRIC.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise ValueError(
            f"{name!r} is not a canonical Clarity metric name (<quantity><aggregation>[<AQI scale>], "
            "e.g. 'pm2_5ConcMass1HourMean')"
        )
    quantity, scale = match["quantity"], match["scale"]
    readable, unit = QUANTITIES.get(quantity, (_words(quantity), ""))
    parts = [readable, _aggregation_text(match)]
    if scale is not None:
        parts.append(AQI_SCALES.get(scale, _words(scale.removesuffix("Aqi")) + " AQI"))
        unit = ""
    return MetricInfo(
        name=name,
        quantity=quantity,
        aggregation=match["aggregation"],
        aqi_scale=scale,
        readable=", ".join(p for p in parts if p),
        unit=unit,
    )


def is_canonical_metric(name: str) -> bool:
    """Whether ``name`` is a well-formed canonical metric name (see :func:`parse_metric`).

    :param name: a metric name.
    """
    return isinstance(name, str) and _METRIC.fullmatch(name) is not None


def metric_and_attribute(column: str) -> tuple[str, str]:
    """Split a report column ``<metric>.<attribute>`` on its last dot.

    :param column: e.g. ``pm2_5ConcMass1HourMean.value``.
    :raises ValueError: when there is no dot or either part is empty.
    """
    metric, dot, attribute = column.rpartition(".")
    if not dot or not metric or not attribute:
        raise ValueError(f"column {column!r} is not <metric>.<attribute>")
    return metric, attribute


def sample_interval(frequency: str) -> str | None:
    """The sample interval of signals of a report's output frequency (``None`` for irregular minutes).

    :param frequency: ``minute``, ``hour`` or ``day``.
    :raises ValueError: for another frequency.
    """
    if frequency not in SAMPLE_INTERVALS:
        raise ValueError(f"output frequency must be one of {', '.join(SAMPLE_INTERVALS)}, got {frequency!r}")
    return SAMPLE_INTERVALS[frequency]
