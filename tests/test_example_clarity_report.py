"""The example DAG runs end to end against the Clarity sandbox under dag.test(), the trigger inline."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import pytest
from dag_helpers import rendered_fields, task_result

if TYPE_CHECKING:
    from airflow_provider_clarify.testing.clarity import ClaritySandbox


@pytest.mark.dag
def test_example_clarity_report(
    run_example_dag: Any, clarity_sandbox: ClaritySandbox, caplog: pytest.LogCaptureFixture
) -> None:
    # Still in progress at the sensor's first check, even with a slow start-up: the sensor defers.
    clarity_sandbox.report_delay = 8.0
    caplog.set_level(logging.INFO)
    dag_run = run_example_dag("example_clarity_report")
    assert dag_run.state == "success"

    state, tries, report_id = task_result(dag_run, "request_report")
    assert (state, tries) == ("success", 1)
    assert [r["reportId"] for r in clarity_sandbox.reports] == [report_id]
    state, _, summary = task_result(dag_run, "wait_for_report")
    assert state == "success"
    assert summary == {
        "report_id": report_id,
        "status": "succeeded",
        "report": "datasource-measurements",
        "urls_expire_at": summary["urls_expire_at"],
    }
    assert summary["urls_expire_at"].endswith("Z")
    state, _, rows = task_result(dag_run, "count_rows")
    assert state == "success"
    assert rows == clarity_sandbox.report_table(report_id).num_rows > 0
    assert "[DAG TEST] running trigger in line" in caplog.text

    query = clarity_sandbox.report(report_id)["query"]
    assert (query["outputFrequency"], query["format"], query.get("allDatasources")) == (
        "hour",
        "csv-wide",
        True,
    )
    everything = json.dumps([report_id, summary, rows]) + rendered_fields(dag_run)
    assert clarity_sandbox.api_key not in everything
    assert "X-Amz" not in everything
