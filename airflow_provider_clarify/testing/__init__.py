"""Sandboxes of the Clarify and Clarity APIs, for tests, benchmarks and demos.

The servers run in-process on ``127.0.0.1`` (a free port each, in background threads) and behave
like the documented services: see :mod:`airflow_provider_clarify.testing.clarify` and
:mod:`airflow_provider_clarify.testing.clarity`. Use them as context managers::

    from airflow_provider_clarify.testing import Sandbox

    with Sandbox() as sandbox:
        os.environ.update(sandbox.env())   # AIRFLOW_CONN_CLARIFY_DEFAULT, AIRFLOW_CONN_CLARITY_DEFAULT
        ...

or through the pytest fixtures ``clarify_sandbox``, ``clarity_sandbox`` and ``sandbox`` that this
package registers as a pytest plugin. Nothing here imports Airflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_clarify.testing.clarify import ClarifySandbox
    from airflow_provider_clarify.testing.clarity import ClaritySandbox
    from airflow_provider_clarify.testing.sandbox import Sandbox

__all__ = ["ClarifySandbox", "ClaritySandbox", "Sandbox"]

_MODULES = {
    "ClarifySandbox": "airflow_provider_clarify.testing.clarify",
    "ClaritySandbox": "airflow_provider_clarify.testing.clarity",
    "Sandbox": "airflow_provider_clarify.testing.sandbox",
}


def __getattr__(name: str) -> Any:
    # Lazy, so that loading the pytest plugin (this package) costs nothing until a sandbox is used.
    if name in _MODULES:
        import importlib

        return getattr(importlib.import_module(_MODULES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
