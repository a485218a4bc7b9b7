"""The fault campaign's collector, and the writer of ``docs/reliability.md``.

Each fault test adds one :class:`~faults_support.MatrixRow` to the session's collector. At the end of a
session that ran every fault and passed, ``docs/reliability.md`` is rewritten from those rows -- only when
``CLARIFY_WRITE_RELIABILITY=1`` is set, so an ordinary test run leaves the work tree alone::

    CLARIFY_WRITE_RELIABILITY=1 python -m pytest tests/faults -q
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest
from faults_support import MatrixRow, render_reliability

PAGE = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
COMMAND = "CLARIFY_WRITE_RELIABILITY=1 python -m pytest tests/faults -q"
ROWS = pytest.StashKey[list[MatrixRow]]()
EXPECTED_ROWS = pytest.StashKey[int]()


@pytest.fixture(scope="session")
def reliability_rows(pytestconfig: pytest.Config) -> list[MatrixRow]:
    """The rows of the reliability matrix gathered in this session (one per fault run)."""
    return pytestconfig.stash.setdefault(ROWS, [])


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Counted before -k/-m deselect anything: a partial run of the campaign does not rewrite the page.
    config.stash[EXPECTED_ROWS] = sum(
        1 for item in items if "reliability_rows" in getattr(item, "fixturenames", ())
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CLARIFY_WRITE_RELIABILITY") != "1":
        return
    rows = session.config.stash.get(ROWS, [])
    expected = session.config.stash.get(EXPECTED_ROWS, 0)
    if exitstatus != 0 or not rows or len(rows) != expected:
        print(f"\ndocs/reliability.md not written: {len(rows)} of {expected} faults ran (exit {exitstatus})")
        return
    from airflow import __version__ as airflow_version

    versions = f"Apache Airflow {airflow_version} on Python {platform.python_version()}"
    PAGE.write_text(render_reliability(rows, command=COMMAND, versions=versions), encoding="utf-8")
    print(f"\nwrote {PAGE} ({len(rows)} faults)")
