"""The ways users start the sandbox: pytest fixtures, the combined context manager, the CLI."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
import requests

from airflow_provider_clarify.testing import ClarifySandbox, ClaritySandbox, Sandbox


def test_pytest_plugin_is_registered() -> None:
    names = {e.value for e in entry_points(group="pytest11")}
    assert "airflow_provider_clarify.testing.pytest_plugin" in names


def _assert_clarify_answers(conn: dict[str, object]) -> None:
    response = requests.post(
        f"{conn['host']}rpc",
        json={
            "jsonrpc": "2.0",
            "method": "integration.insert",
            "id": 1,
            "params": {
                "integration": conn["login"],
                "data": {"times": ["2026-01-01T00:00:00Z"], "series": {"probe": [1.5]}},
            },
        },
        auth=(str(conn["login"]), str(conn["password"])),
        timeout=10,
    )
    assert response.status_code == 200
    assert response.json()["result"]["signalsByInput"]["probe"]["created"] is True


def _assert_clarity_answers(conn: dict[str, object]) -> None:
    response = requests.get(
        f"{conn['host']}/v2/report-request/JB00000000",
        headers={"x-api-key": str(conn["password"])},
        timeout=10,
    )
    assert response.status_code == 404  # authenticated, the report just does not exist
    response = requests.get(f"{conn['host']}/v2/report-request/JB00000000", timeout=10)
    assert response.status_code == 401


def test_sandbox_fixture_sets_both_connections(sandbox: Sandbox) -> None:
    clarify = json.loads(os.environ["AIRFLOW_CONN_CLARIFY_DEFAULT"])
    clarity = json.loads(os.environ["AIRFLOW_CONN_CLARITY_DEFAULT"])
    assert clarify["conn_type"] == "clarify"
    assert clarify["host"] == sandbox.clarify.url
    assert clarity["conn_type"] == "clarity"
    assert clarity["host"] == sandbox.clarity.url
    _assert_clarify_answers(clarify)
    _assert_clarity_answers(clarity)


def test_single_service_fixtures(clarify_sandbox: ClarifySandbox, clarity_sandbox: ClaritySandbox) -> None:
    assert json.loads(os.environ["AIRFLOW_CONN_CLARIFY_DEFAULT"])["host"] == clarify_sandbox.url
    assert json.loads(os.environ["AIRFLOW_CONN_CLARITY_DEFAULT"])["host"] == clarity_sandbox.url
    assert clarify_sandbox.url.startswith("http://127.0.0.1:")
    assert clarity_sandbox.url.startswith("http://127.0.0.1:")


def test_context_manager_stops_servers() -> None:
    with Sandbox() as both:
        url = both.clarity.url
        assert requests.get(f"{url}/v2/report-request/x", timeout=5).status_code == 401
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/v2/report-request/x", timeout=5)


def test_cli_prints_connections_and_stops_by_itself() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_clarify.testing", "--duration", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        exports: dict[str, str] = {}
        while len(exports) < 2:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else "no output"
            if line.startswith("export "):
                name, _, value = line[len("export ") :].strip().partition("=")
                exports[name] = shlex.split(value)[0]
        _assert_clarify_answers(json.loads(exports["AIRFLOW_CONN_CLARIFY_DEFAULT"]))
        _assert_clarity_answers(json.loads(exports["AIRFLOW_CONN_CLARITY_DEFAULT"]))
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cli_duration_ends_the_process() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "airflow_provider_clarify.testing", "--duration", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "AIRFLOW_CONN_CLARIFY_DEFAULT" in done.stdout
