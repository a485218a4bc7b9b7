"""The 15-minute recent-measurements example DAG runs against both sandboxes under dag.test(), twice."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from dag_helpers import dagbag_api, rendered_fields, task_result

from airflow_provider_clarify.testing.reports import ReportSpec, iter_report_batches, to_text

if TYPE_CHECKING:
    from airflow_provider_clarify.testing.sandbox import Sandbox

DAG_ID = "example_clarity_recent_to_clarify"
TASK_ID = "sync_recent_measurements"
METRICS = ("pm2_5ConcMassIndividual", "no2ConcIndividual")


def expected(sandbox: Sandbox, start: datetime, until: datetime) -> dict[str, dict[datetime, float]]:
    """Calibrated values of valid readings taken in ``[start, until)``, from the sandbox's generator."""
    spec = ReportSpec(
        report="datasource-measurements",
        output_frequency="minute",
        start=start,
        end=until,
        sources=sandbox.clarity.fleet(),
        qc_assessment=True,
    )
    out: dict[str, dict[datetime, float]] = {}
    for batch in iter_report_batches(spec):
        for row in to_text(batch).to_pylist():
            for metric in METRICS:
                if row[f"{metric}.qcAssessment"] != "invalid" and row[f"{metric}.value"] is not None:
                    key = f"{row['datasourceId']}.{metric}"
                    out.setdefault(key, {})[datetime.fromisoformat(row["time"])] = float(
                        row[f"{metric}.value"]
                    )
    return out


@pytest.mark.dag
def test_example_clarity_recent_to_clarify(run_example_dag: Any, sandbox: Sandbox) -> None:
    clarity, clarify = sandbox.clarity, sandbox.clarify
    clarity.recent_now = datetime.now(UTC).replace(microsecond=0)

    first_run = run_example_dag(DAG_ID)
    assert first_run.state == "success"
    state, tries, first = task_result(first_run, TASK_ID)
    assert (state, tries, first["mode"]) == ("success", 1, "query")
    # No start_time: the first run starts at its data interval's start, or an hour back when it is empty.
    start = datetime.fromisoformat(first["queried_from"])
    interval = (first_run.data_interval_start, first_run.data_interval_end)
    if interval[0] is not None and interval[0] < interval[1]:
        assert start == interval[0]
    else:
        assert timedelta(minutes=59) < clarity.recent_now - start < timedelta(hours=1, minutes=1)

    clarity.advance_recent_clock(timedelta(minutes=15))  # the next scheduled run, 15 minutes later
    second_run = run_example_dag(DAG_ID)
    state, _, second = task_result(second_run, TASK_ID)
    assert (state, second["mode"]) == ("success", "continuation")

    want = expected(sandbox, start, clarity.recent_now - clarity.recent_ingest_lag)
    assert first["points"] + second["points"] == sum(len(p) for p in want.values()) > 0
    assert set(clarify.signals()) == set(want)
    for key, points in want.items():
        assert clarify.points(key) == dict(sorted(points.items()))
    assert clarify.signal(f"{clarity.datasource_ids[0]}.{METRICS[0]}")["engUnit"] == "µg/m³"

    assert clarity.reports == []  # the whole point: no report quota spent
    assert [r.info["recent"] for r in clarity.recent_calls()] == ["query", "continuation"]
    shown = json.dumps([first, second]) + rendered_fields(first_run) + rendered_fields(second_run)
    for secret in [*clarity.continuation_tokens, clarity.api_key, clarify.password]:
        assert secret not in shown


def test_example_dag_is_scheduled_every_15_minutes() -> None:
    from pathlib import Path

    dagbag, _ = dagbag_api()
    folder = Path(__file__).resolve().parent.parent / "example_dags"
    bag = dagbag(dag_folder=str(folder / f"{DAG_ID}.py"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.get_dag(DAG_ID)
    assert dag is not None
    assert dag.max_active_runs == 1
    assert dag.schedule == "*/15 * * * *"
    (task,) = dag.tasks
    assert task.task_type == "ClarityRecentToClarifyOperator"
    assert task.max_active_tis_per_dag == 1
