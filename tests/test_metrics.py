"""The canonical metric table: parsing names, readable names, units, sample intervals, column splitting."""

from __future__ import annotations

import pytest

from airflow_provider_clarify.testing.reports import DAY_METRICS, HOUR_METRICS, MINUTE_METRICS
from airflow_provider_clarify.utils.metrics import (
    QUANTITIES,
    is_canonical_metric,
    metric_and_attribute,
    parse_metric,
    sample_interval,
)


@pytest.mark.parametrize(
    ("name", "quantity", "aggregation", "scale", "readable", "unit"),
    [
        (
            "pm2_5ConcMass1HourMean",
            "pm2_5ConcMass",
            "1HourMean",
            None,
            "PM2.5 mass concentration, 1-hour mean",
            "µg/m³",
        ),
        (
            "pm2_5ConcMassNowcastUsEpaAqi",
            "pm2_5ConcMass",
            "Nowcast",
            "UsEpaAqi",
            "PM2.5 mass concentration, NowCast, US EPA AQI",
            "",
        ),
        ("no2ConcIndividual", "no2Conc", "Individual", None, "NO2 concentration", "ppb"),
        ("o3Conc1HourMean", "o3Conc", "1HourMean", None, "O3 concentration, 1-hour mean", "ppb"),
        (
            "no2Conc1HourMeanWaDwerAqi",
            "no2Conc",
            "1HourMean",
            "WaDwerAqi",
            "NO2 concentration, 1-hour mean, WA DWER AQI",
            "",
        ),
        (
            "temperatureInternal24HourMean",
            "temperatureInternal",
            "24HourMean",
            None,
            "Temperature (internal), 24-hour mean",
            "°C",
        ),
        (
            "temperatureAmbientIndividual",
            "temperatureAmbient",
            "Individual",
            None,
            "Temperature (ambient)",
            "°C",
        ),
        (
            "relHumidInternalIndividual",
            "relHumidInternal",
            "Individual",
            None,
            "Relative humidity (internal)",
            "%",
        ),
        ("windSpeedIndividual", "windSpeed", "Individual", None, "Wind speed", "m/s"),
        ("windDirectionIndividual", "windDirection", "Individual", None, "Wind direction", "°"),
        ("atmPressureIndividual", "atmPressure", "Individual", None, "Atmospheric pressure", "hPa"),
        ("bcSpectralUVIndividual", "bcSpectralUV", "Individual", None, "Black carbon (spectral UV)", "µg/m³"),
        (
            "pm10ConcNum24HourRollingMean",
            "pm10ConcNum",
            "24HourRollingMean",
            None,
            "PM10 number concentration, 24-hour rolling mean",
            "#/cm³",
        ),
        (
            "pm2_5ConcMass24HourMean",
            "pm2_5ConcMass",
            "24HourMean",
            None,
            "PM2.5 mass concentration, 24-hour mean",
            "µg/m³",
        ),
    ],
)
def test_known_metrics(
    name: str, quantity: str, aggregation: str, scale: str | None, readable: str, unit: str
) -> None:
    info = parse_metric(name)
    assert (info.name, info.quantity, info.aggregation, info.aqi_scale) == (
        name,
        quantity,
        aggregation,
        scale,
    )
    assert info.readable == readable
    assert info.unit == unit


def test_unknown_but_well_formed_names_fall_back() -> None:
    info = parse_metric("coConcIndividual")
    assert (info.quantity, info.readable, info.unit) == ("coConc", "Co conc", "")
    info = parse_metric("pm2_5ConcMass8HourMaxEuCaqiAqi")
    assert info.aggregation == "8HourMax"
    assert info.readable == "PM2.5 mass concentration, 8-hour max, Eu caqi AQI"
    assert info.unit == ""
    assert parse_metric("pm2_5ConcMass15MinuteMean").readable == "PM2.5 mass concentration, 15-minute mean"


def test_every_sandbox_metric_is_in_the_table() -> None:
    for name in (*MINUTE_METRICS, *HOUR_METRICS, *DAY_METRICS):
        info = parse_metric(name)
        assert info.quantity in QUANTITIES, name  # a table entry, not the fallback
        assert info.unit or info.aqi_scale is not None, name


@pytest.mark.parametrize(
    ("name", "source_type"),
    [
        ("no2ConcIndividual", "measurement"),
        ("pm2_5ConcMass1HourMean", "aggregation"),
        ("pm2_5ConcMass24HourRollingMean", "aggregation"),
        ("pm2_5ConcMassNowcast", "aggregation"),
        ("pm2_5ConcMassNowcastUsEpaAqi", "aggregation"),
    ],
)
def test_source_type(name: str, source_type: str) -> None:
    assert parse_metric(name).source_type == source_type


@pytest.mark.parametrize(
    "name",
    [
        "pm2_5ConcMass",  # legacy: no aggregation
        "PM 2.5 mass concentration, 1-hour mean",  # english
        "pm2_5ConcMass1HourMean.value",  # a column, not a metric
        "Individual",
        "1HourMean",
        "",
        "pm2_5ConcMass2",
    ],
)
def test_not_canonical(name: str) -> None:
    assert not is_canonical_metric(name)
    with pytest.raises(ValueError, match="not a canonical Clarity metric name"):
        parse_metric(name)


def test_not_a_string() -> None:
    assert not is_canonical_metric(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a canonical"):
        parse_metric(None)  # type: ignore[arg-type]


def test_24_hour_mean_is_not_split_inside_the_number() -> None:
    assert parse_metric("pm2_5ConcMass24HourMean").quantity == "pm2_5ConcMass"


def test_metric_and_attribute_splits_on_the_last_dot() -> None:
    assert metric_and_attribute("pm2_5ConcMass1HourMean.value") == ("pm2_5ConcMass1HourMean", "value")
    assert metric_and_attribute("a.b.qcFlags") == ("a.b", "qcFlags")
    for bad in ("time", ".value", "metric."):
        with pytest.raises(ValueError, match=r"not <metric>\.<attribute>"):
            metric_and_attribute(bad)


def test_sample_interval() -> None:
    assert sample_interval("minute") is None
    assert sample_interval("hour") == "PT1H"
    assert sample_interval("day") == "P1D"
    with pytest.raises(ValueError, match="output frequency must be one of minute, hour, day"):
        sample_interval("week")
