"""The main example DAG end to end under dag.test(): report -> deferred sensor -> Clarify + archive."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import pytest
from dag_helpers import rendered_fields, task_result

if TYPE_CHECKING:
    from pathlib import Path

    from moto_s3 import MotoS3

    from airflow_provider_clarify.testing.sandbox import Sandbox


@pytest.mark.dag
@pytest.mark.parametrize("store", ["file", "s3"])
def test_example_clarity_to_clarify(
    run_example_dag: Any,
    sandbox: Sandbox,
    tmp_path: Path,
    moto_s3: MotoS3,
    caplog: pytest.LogCaptureFixture,
    store: str,
) -> None:
    clarity, clarify = sandbox.clarity, sandbox.clarify
    clarity.report_delay = 8.0  # still in progress at the sensor's first check: it defers
    archive = tmp_path.as_uri() if store == "file" else f"s3://{moto_s3.conn_id}@{moto_s3.bucket}/clarity"
    caplog.set_level(logging.INFO)

    dag_run = run_example_dag(
        "example_clarity_to_clarify", CLARITY_EXAMPLE_ARCHIVE=archive, CLARITY_EXAMPLE_POLL_SECONDS="1"
    )

    assert dag_run.state == "success"
    assert "[DAG TEST] running trigger in line" in caplog.text
    _, _, report_id = task_result(dag_run, "request_report")
    assert [r["reportId"] for r in clarity.reports] == [report_id]

    # Clarify holds exactly what the transfer says it sent, one signal per datasource and metric.
    state, _, loaded = task_result(dag_run, "load_into_clarify")
    assert state == "success"
    table = clarity.report_table(report_id)
    signals = clarify.signals()
    assert loaded["rows"] == table.num_rows > 0
    assert loaded["signals"] == loaded["created"] == len(signals) > 0
    assert loaded["points"] == sum(len(clarify.points(key)) for key in signals)
    assert {key.split(".", 1)[0] for key in signals} == set(table.column("datasourceId").to_pylist())

    # The archive holds the served files byte for byte, under the run's folder.
    state, _, written = task_result(dag_run, "archive_files")
    assert state == "success"
    served = {path.name: path.read_bytes() for path in clarity.report_files(report_id)}
    assert [uri.rsplit("/", 1)[-1] for uri in written] == list(served)
    for uri in written:
        assert f"/{dag_run.run_id}/" in uri
        name = uri.rsplit("/", 1)[-1]
        if store == "file":
            copied = (tmp_path / dag_run.run_id / name).read_bytes()
        else:
            copied = moto_s3.read(f"clarity/{dag_run.run_id}/{name}")
        assert copied == served[name]

    stored = json.dumps([report_id, loaded, written]) + rendered_fields(dag_run) + caplog.text
    assert clarity.api_key not in stored
    assert clarify.password not in stored
    assert "X-Amz-Signature=" not in stored
