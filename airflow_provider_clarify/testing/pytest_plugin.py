"""Pytest fixtures that start the sandboxes (registered through the ``pytest11`` entry point).

Each fixture starts fresh servers for one test, sets the matching ``AIRFLOW_CONN_*`` environment
variable so that hooks with the default connection id talk to the sandbox, and stops the servers
afterwards. Nothing is imported until a fixture is used, so the plugin costs nothing otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow_provider_clarify.testing.clarify import ClarifySandbox
    from airflow_provider_clarify.testing.clarity import ClaritySandbox
    from airflow_provider_clarify.testing.sandbox import Sandbox


@pytest.fixture
def clarify_sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[ClarifySandbox]:
    """A running Clarify sandbox; ``clarify_default`` points at it (Basic auth)."""
    from airflow_provider_clarify.testing.clarify import ClarifySandbox

    with ClarifySandbox() as server:
        monkeypatch.setenv("AIRFLOW_CONN_CLARIFY_DEFAULT", server.connection_json())
        yield server


@pytest.fixture
def clarity_sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[ClaritySandbox]:
    """A running Clarity sandbox; ``clarity_default`` points at it."""
    from airflow_provider_clarify.testing.clarity import ClaritySandbox

    with ClaritySandbox() as server:
        monkeypatch.setenv("AIRFLOW_CONN_CLARITY_DEFAULT", server.connection_json())
        yield server


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    """Both sandboxes; ``clarify_default`` and ``clarity_default`` point at them."""
    from airflow_provider_clarify.testing.sandbox import Sandbox

    with Sandbox() as both:
        for name, value in both.env().items():
            monkeypatch.setenv(name, value)
        yield both
