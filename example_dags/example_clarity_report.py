"""Request a Clarity report for the run's window, wait for it in the triggerer, and count its rows.

Runs unchanged against the sandbox (``python -m airflow_provider_clarify.testing`` or the pytest fixture
``clarity_sandbox``) or the real service: it only needs the connection ``clarity_default`` (API key as
password, default organization as login).

Clarity allows about 30 reports per organization per day. The request task remembers the report it asked
for, so retrying or clearing it does not spend quota again.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
import pyarrow as pa
import pyarrow.csv as pa_csv
from airflow.sdk import dag, task

from airflow_provider_clarify.hooks.clarity import ClarityHook
from airflow_provider_clarify.operators.clarity import ClarityRequestReportOperator
from airflow_provider_clarify.sensors.clarity import ClarityReportSensor


@dag(
    schedule="@daily",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "clarity"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
)
def example_clarity_report() -> None:
    """Hourly measurements of every datasource for the last day, then the number of rows."""
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
        poke_interval=10,
        timeout=timedelta(hours=1),
    )

    @task
    def count_rows(summary: dict[str, str]) -> int:
        """Stream every file of the report (gzip CSV) through Arrow and count the rows."""
        rows = 0
        for report_file in ClarityHook().open_report_files(summary["report_id"]):
            compression = "gzip" if report_file.kind == "gzip" else None
            with pa.input_stream(report_file.stream, compression=compression) as stream:
                # Only the id column is parsed: counting needs no type inference of the metric columns.
                only_ids = pa_csv.ConvertOptions(include_columns=["datasourceId"])
                for batch in pa_csv.open_csv(stream, convert_options=only_ids):
                    rows += batch.num_rows
        print(f"Clarity report {summary['report_id']} has {rows} rows")
        return rows

    count_rows(wait.output)


example_clarity_report()
