"""The main job: a Clarity report for the run's window, into Clarify signals and into object storage.

1. ``request_report`` asks Clarity for a report of hourly measurements of every datasource (about 30
   reports per organization per day are allowed: a retried or cleared task reuses the report it already
   requested instead of spending quota again);
2. ``wait_for_report`` waits until the report is ready *in the triggerer*, holding no worker slot;
3. then, in parallel:

   - ``load_into_clarify`` streams the report's files into Clarify, one signal per datasource and metric
     (``<datasource id>.<metric>``), with readable names, units and labels;
   - ``archive_files`` copies the raw report files, byte for byte, to object storage.

Runs unchanged against the sandbox (``make demo``) or the real services. It needs the connections
``clarity_default`` and ``clarify_default``; the archive goes to the folder URI in the environment
variable ``CLARITY_EXAMPLE_ARCHIVE`` (default ``file:///tmp/clarity-archive/``; for S3, for example
``s3://aws_default@my-bucket/clarity/``), one sub-folder per run.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import dag

from airflow_provider_clarify.operators.clarity import ClarityRequestReportOperator
from airflow_provider_clarify.sensors.clarity import ClarityReportSensor
from airflow_provider_clarify.transfers.clarity_to_clarify import ClarityReportToClarifyOperator
from airflow_provider_clarify.transfers.clarity_to_object_storage import (
    ClarityReportToObjectStorageOperator,
)

ARCHIVE = os.environ.get("CLARITY_EXAMPLE_ARCHIVE", "file:///tmp/clarity-archive/").rstrip("/") + "/"
#: Seconds between status checks of the report (Clarity builds reports in minutes, not seconds).
POLL_SECONDS = float(os.environ.get("CLARITY_EXAMPLE_POLL_SECONDS", "60"))


@dag(
    schedule="@daily",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "clarity", "clarify"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
)
def example_clarity_to_clarify() -> None:
    """Yesterday's hourly Clarity measurements into Clarify, and the raw files into an archive."""
    request = ClarityRequestReportOperator(
        task_id="request_report",
        output_frequency="hour",
        all_datasources=True,
        lookback=timedelta(days=1),
        file_format="csv",
    )
    wait = ClarityReportSensor(
        task_id="wait_for_report",
        report_id=request.output,
        poke_interval=POLL_SECONDS,
        timeout=timedelta(hours=2),
    )
    load = ClarityReportToClarifyOperator(task_id="load_into_clarify", report_id=request.output)
    archive = ClarityReportToObjectStorageOperator(
        task_id="archive_files",
        report_id=request.output,
        destination=ARCHIVE + "{{ run_id }}/",
    )
    wait >> [load, archive]


example_clarity_to_clarify()
