"""The pandas -> Clarify example DAG runs end to end with dag.test() against the Clarify sandbox."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_clarify.testing.clarify import ClarifySandbox


def _example_module() -> Any:
    path = Path(__file__).resolve().parent.parent / "example_dags" / "example_clarify_insert.py"
    spec = importlib.util.spec_from_file_location("example_clarify_insert_under_test", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.dag
def test_example_clarify_insert(
    run_example_dag: Callable[..., Any], clarify_sandbox: ClarifySandbox, tmp_path: Path
) -> None:
    signals_of_the_dag = _example_module().SIGNALS
    run = run_example_dag(
        "example_clarify_insert",
        AIRFLOW_CONN_CLARIFY_DEFAULT=clarify_sandbox.connection_json("basic"),
        CLARIFY_EXAMPLE_STORAGE=f"file://{tmp_path}/",
    )
    assert run.state == "success"
    files = list(tmp_path.glob("measurements-*.parquet"))
    assert len(files) == 1
    signals = clarify_sandbox.signals()
    assert set(signals) == set(signals_of_the_dag)
    for key, metadata in signals_of_the_dag.items():
        assert signals[key]["name"] == metadata["name"]
        assert signals[key]["engUnit"] == metadata["engUnit"]
        assert signals[key]["sampleInterval"] == "PT1M"
        assert len(clarify_sandbox.points(key)) >= 55  # one hour of minute values (some missing on purpose)
    assert len(clarify_sandbox.points("example-site-1.pm2_5")) == 60
    assert len(clarify_sandbox.rpc_calls("integration.insert")) == 1
    assert len(clarify_sandbox.rpc_calls("integration.saveSignals")) == 1
