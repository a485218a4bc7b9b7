"""Load a pandas DataFrame into Clarify signals, with readable signal metadata.

The first task stands in for any pandas source (a database query, an API, a model): it builds one minute
of values per sensor for the run's hour and writes them as Parquet to object storage. The second task
inserts the file into Clarify -- split into requests under Clarify's size limit, paced to its rate limit,
retried on transient errors -- and saves the signals' names, units and labels when they changed.

Runs unchanged against the sandbox (``python -m airflow_provider_clarify.testing`` or the pytest fixture
``clarify_sandbox``) or the real service: it only needs the connection ``clarify_default``. Where the
Parquet files go is set by the environment variable ``CLARIFY_EXAMPLE_STORAGE`` (any object storage URI;
default ``file:///tmp/clarify-example/``).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
import pendulum
from airflow.sdk import ObjectStoragePath, dag, task

from airflow_provider_clarify.operators.clarify import ClarifyInsertOperator

SENSORS = ("example-site-1", "example-site-2")

#: Signal metadata per input key (Clarify replaces every attribute on save; the operator sends it all).
SIGNALS: dict[str, dict[str, Any]] = {
    f"{sensor}.{metric}": {
        "name": f"{label} — {sensor}",
        "engUnit": unit,
        "labels": {"site": [sensor], "metric": [metric], "source": ["example"]},
        "sampleInterval": timedelta(minutes=1),
        "gapDetection": timedelta(minutes=10),
    }
    for sensor in SENSORS
    for metric, label, unit in (("pm2_5", "PM2.5", "µg/m³"), ("temperature", "Temperature", "°C"))
}


@dag(
    schedule="@hourly",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "clarify"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
)
def example_clarify_insert() -> None:
    """Minute values of two sensors for the last hour, from pandas into Clarify."""

    @task
    def measurements(data_interval_end: pendulum.DateTime | None = None) -> str:
        """Build the hour's DataFrame (one column per input key) and store it as Parquet; return its URI."""
        end = pd.Timestamp(data_interval_end or pendulum.now("UTC")).floor("min")
        index = pd.date_range(end - pd.Timedelta(hours=1), end, freq="min", inclusive="left")
        rng = np.random.default_rng(int(end.timestamp()))
        frame = pd.DataFrame(index=index)
        for sensor in SENSORS:
            frame[f"{sensor}.pm2_5"] = rng.gamma(4.0, 2.5, len(index)).round(1)
            frame[f"{sensor}.temperature"] = (12 + rng.normal(0, 0.3, len(index)).cumsum()).round(2)
        frame.loc[frame.index[::17], f"{SENSORS[1]}.pm2_5"] = np.nan  # a missing value is not a zero
        folder = ObjectStoragePath(os.environ.get("CLARIFY_EXAMPLE_STORAGE", "file:///tmp/clarify-example/"))
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"measurements-{end.strftime('%Y%m%dT%H%M')}.parquet"
        with target.open("wb") as stream:  # the operator reads the times from a "time" column
            frame.rename_axis("time").reset_index().to_parquet(stream, index=False)
        return str(target)

    ClarifyInsertOperator(task_id="insert_into_clarify", data=measurements(), signals=SIGNALS)


example_clarify_insert()
