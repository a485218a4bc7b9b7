"""Helpers for tests that run DAGs with ``dag.test()`` and read what the run stored (XCom, rendered fields).

They import Airflow lazily (the conftest must configure Airflow before anything imports it) and cover the
differences between Airflow 3.1 and 3.3.
"""

from __future__ import annotations

import json
from typing import Any


def dagbag_api() -> tuple[Any, Any]:
    """``(DagBag, sync_bag_to_db)`` of the installed Airflow."""
    try:
        from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db  # Airflow 3.2+
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag, sync_bag_to_db
    return DagBag, sync_bag_to_db


def run_dag_test(dag: Any, **kwargs: Any) -> Any:
    """Serialize ``dag`` into the metadata database (as the DAG processor would), then ``dag.test()`` it."""
    dagbag, sync_bag_to_db = dagbag_api()
    bag = dagbag(collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    return dag.test(**kwargs)


def task_result(dag_run: Any, task_id: str) -> tuple[str, int, Any]:
    """``(state, try_number, return value)`` of one task of a finished run."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    (ti,) = [t for t in dag_run.get_task_instances() if t.task_id == task_id]
    with create_session() as session:
        rows = session.scalars(
            XComModel.get_many(
                run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id, key="return_value"
            )
        ).all()
        value = XComModel.deserialize_value(rows[0]) if rows else None
    return str(ti.state), ti.try_number, value


def rendered_fields(dag_run: Any) -> str:
    """Every rendered template field stored for the run, as one JSON text (for secret scans)."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(RenderedTaskInstanceFields).filter_by(run_id=dag_run.run_id).all()
        return json.dumps([r.rendered_fields for r in rows], default=str)
