"""Test set-up: a throwaway Airflow home, created before anything imports Airflow.

Every pytest session gets a fresh ``AIRFLOW_HOME`` in a temporary folder, with the example DAGs as
the DAGs folder. Tests that need the metadata database (Variables, ``dag.test()``) ask for the
``airflow_db`` fixture, which migrates it once per session.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.fernet import Fernet
from moto_s3 import moto_endpoint_fixture, moto_s3_fixture  # noqa: F401 - fixtures for every module

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
_HOME = tempfile.mkdtemp(prefix="clarify-af-home-")
os.environ.update(
    AIRFLOW_HOME=_HOME,
    AIRFLOW__CORE__LOAD_EXAMPLES="False",
    AIRFLOW__CORE__UNIT_TEST_MODE="True",
    # One key for the session, so that processes started by tests (the CLI) read what others wrote.
    AIRFLOW__CORE__FERNET_KEY=Fernet.generate_key().decode(),
    AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "example_dags"),
    AIRFLOW__CORE__ALLOWED_DESERIALIZATION_CLASSES_REGEXP="airflow_provider_clarify\\..*",
    AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
    # Keep any S3 client away from real AWS, whatever a test forgets to set.
    AWS_EC2_METADATA_DISABLED="true",
)
for _name in [n for n in os.environ if n.startswith("AIRFLOW_CONN_")]:
    del os.environ[_name]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[None]:
    """A migrated metadata database (SQLite in the throwaway home), once per session."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.utils import db

    db.resetdb()
    DagBundlesManager().sync_bundles_to_db()
    return


@pytest.fixture
def run_example_dag(airflow_db: None, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """Run an example DAG with ``dag.test()``: tasks in-process, deferrable triggers inline.

    Returns the finished DagRun. Extra keyword arguments become environment variables for the run
    (for example ``AIRFLOW_CONN_CLARIFY_DEFAULT``).
    """

    def run(dag_id: str, *, conf: dict[str, Any] | None = None, **env: str) -> Any:
        from dag_helpers import dagbag_api

        dagbag, sync_bag_to_db = dagbag_api()
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        bag = dagbag(dag_folder=str(REPO / "example_dags"))
        assert not bag.import_errors, bag.import_errors
        dag = bag.get_dag(dag_id)
        assert dag is not None, f"example DAG {dag_id!r} not found"
        sync_bag_to_db(bag, "dags-folder", None)
        return dag.test(run_conf=conf)

    return run
