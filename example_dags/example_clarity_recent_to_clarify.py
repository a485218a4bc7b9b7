"""Every 15 minutes, load the Clarity measurements that arrived since the last run into Clarify.

Built on Clarity's recent-measurements API, which has no quota: this DAG never requests a report, so it
leaves the organization's ~30 reports a day to others. The first run loads the last hour; every later run
continues where the previous one stopped (a continuation token kept in an Airflow Variable), so each
measurement is loaded once. After a pause longer than Clarity's cache (24 h of minute data) the run logs the
lost period and how to backfill it with a report.

Runs unchanged against the sandbox (``python -m airflow_provider_clarify.testing`` or the pytest fixture
``sandbox``) or the real services: it needs the connections ``clarity_default`` (API key as password,
organization as login) and ``clarify_default``.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag

from airflow_provider_clarify.transfers.clarity_recent_to_clarify import ClarityRecentToClarifyOperator


@dag(
    schedule="*/15 * * * *",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["example", "clarity", "clarify"],
    default_args={"retries": 3, "retry_delay": timedelta(minutes=1)},
)
def example_clarity_recent_to_clarify() -> None:
    """Minute readings of every datasource: calibrated PM2.5 and NO2, invalid values dropped."""
    ClarityRecentToClarifyOperator(
        task_id="sync_recent_measurements",
        all_datasources=True,
        output_frequency="minute",
        metrics=["pm2_5ConcMassIndividual", "no2ConcIndividual"],
    )


example_clarity_recent_to_clarify()
