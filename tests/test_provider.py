"""The package registers with Airflow as a provider, with both connection types and their forms."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from airflow_provider_clarify import __version__
from airflow_provider_clarify.get_provider_info import CONNECTION_FORMS, get_provider_info

DIST = "airflow-provider-clarify"


def test_entry_point_points_at_get_provider_info() -> None:
    (ep,) = [e for e in entry_points(group="apache_airflow_provider") if e.dist and e.dist.name == DIST]
    assert ep.load() is get_provider_info


def test_provider_info_is_valid_against_airflow_schema() -> None:
    import jsonschema
    from airflow import providers_manager

    schema_path = Path(providers_manager.__file__).with_name("provider_info.schema.json")
    info = get_provider_info()
    jsonschema.validate(info, json.loads(schema_path.read_text()))
    assert info["package-name"] == DIST
    assert info["versions"] == [__version__]


def test_every_module_named_in_provider_info_imports() -> None:
    info = get_provider_info()
    modules = [
        m
        for key in ("hooks", "operators", "sensors", "triggers")
        for e in info[key]
        for m in e["python-modules"]
    ]
    modules += [t["python-module"] for t in info["transfers"]]
    for name in modules:
        importlib.import_module(name)
    for conn in info["connection-types"]:
        module, _, cls = conn["hook-class-name"].rpartition(".")
        hook = getattr(importlib.import_module(module), cls)
        assert hook.conn_type == conn["connection-type"]
        assert hook.default_conn_name == f"{conn['connection-type']}_default"


_UI_FORMS_SCRIPT = """
import json
from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

hooks, widgets, behaviours = HookMetaService._get_hooks_with_mocked_fab()
fields = {}
for key, info in widgets.items():
    if info.package_name != "airflow-provider-clarify":
        continue
    field = info.field if isinstance(info.field, dict) else info.field.param.dump()
    conn_type = key.split("__")[1]  # extra__<conn type>__<field>
    fields.setdefault(conn_type, {})[info.field_name] = field["schema"]
print(json.dumps({"fields": fields, "behaviours": {k: behaviours.get(k) for k in ("clarify", "clarity")}}))
"""


def test_ui_server_shows_the_declared_connection_forms() -> None:
    """What Airflow's API server shows in the connection form: from provider info on Airflow 3.2+,
    from the hooks' ``get_connection_form_widgets``/``get_ui_field_behaviour`` on 3.1 (run in a
    subprocess: Airflow replaces wtforms and Flask-AppBuilder with stand-ins in ``sys.modules``)."""
    done = subprocess.run(
        [sys.executable, "-c", _UI_FORMS_SCRIPT], capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout.strip().splitlines()[-1])
    for conn_type, form in CONNECTION_FORMS.items():
        fields = shown["fields"][conn_type]
        assert sorted(fields) == sorted(form["conn-fields"])
        for name, spec in form["conn-fields"].items():
            assert fields[name]["title"] == spec["label"]
            assert fields[name].get("format") == spec["schema"].get("format")
        behaviour = form["ui-field-behaviour"]
        assert shown["behaviours"][conn_type] == {
            "hidden_fields": behaviour["hidden-fields"],
            "relabeling": behaviour["relabeling"],
            "placeholders": behaviour["placeholders"],
        }


def test_secret_fields_are_password_fields() -> None:
    assert CONNECTION_FORMS["clarify"]["conn-fields"]["credentials"]["schema"]["format"] == "password"
    assert CONNECTION_FORMS["clarity"]["ui-field-behaviour"]["relabeling"]["password"] == "API key"


def test_providers_manager_registers_both_connection_types() -> None:
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert DIST in manager.providers
    assert manager.providers[DIST].version == __version__
    for conn_type in CONNECTION_FORMS:
        assert conn_type in manager.hooks, f"connection type {conn_type} not registered"
        assert manager.hooks[conn_type] is not None


def _json_output(stdout: str) -> list[dict[str, str]]:
    """The JSON document of a ``--output json`` command (log lines may precede it on stdout)."""
    (document,) = [line for line in stdout.splitlines() if line.startswith("[")]
    return list(json.loads(document))


def _airflow_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airflow", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ},
        check=False,
    )


@pytest.mark.usefixtures("airflow_db")
def test_airflow_cli_lists_provider_and_accepts_both_connection_types() -> None:
    listing = _airflow_cli("providers", "list", "--output", "json")
    assert listing.returncode == 0, listing.stderr
    assert DIST in {p["package_name"] for p in _json_output(listing.stdout)}

    for conn_type, host in (
        ("clarify", "https://api.clarify.io/v1/"),
        ("clarity", "https://clarity-data-api.clarity.io"),
    ):
        conn_id = f"cli_{conn_type}"
        added = _airflow_cli(
            "connections",
            "add",
            conn_id,
            "--conn-type",
            conn_type,
            "--conn-host",
            host,
            "--conn-login",
            "login",
            "--conn-password",
            "not-a-real-secret",
        )
        assert added.returncode == 0, added.stderr
        assert "is invalid" not in added.stdout + added.stderr, added.stdout + added.stderr
        shown = _airflow_cli("connections", "get", conn_id, "--output", "json")
        assert shown.returncode == 0, shown.stderr
        (record,) = _json_output(shown.stdout)
        assert record["conn_type"] == conn_type
