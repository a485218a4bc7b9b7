"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point.

This module is imported while Airflow itself is being configured, so it must not import Airflow
(or anything heavy). The connection form declared here (``conn-fields`` and ``ui-field-behaviour``)
is what Airflow 3.2+ shows; Airflow 3.1 asks the hooks' ``get_connection_form_widgets`` and
``get_ui_field_behaviour`` instead, which build the same form from :data:`CONNECTION_FORMS`.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_clarify import __version__

PACKAGE = "airflow_provider_clarify"

#: Connection type -> extra form fields and field behaviour. Single source for both Airflow APIs.
CONNECTION_FORMS: dict[str, dict[str, Any]] = {
    "clarify": {
        "hook-class-name": f"{PACKAGE}.hooks.clarify.ClarifyHook",
        "hook-name": "Clarify",
        "ui-field-behaviour": {
            "hidden-fields": ["schema", "port"],
            "relabeling": {
                "host": "API URL",
                "login": "Integration ID",
                "password": "Password or OAuth client secret",
            },
            "placeholders": {
                "host": "https://api.clarify.io/v1/",
                "login": "20-character integration ID",
                "password": "Basic-auth password, or the client secret when Client ID is set",
            },
        },
        "conn-fields": {
            "client_id": {
                "label": "OAuth client ID",
                "description": "Set to use OAuth 2.0 client credentials; "
                "the password is then the client secret.",
                "schema": {"type": ["string", "null"]},
            },
            "credentials": {
                "label": "Credentials file (JSON)",
                "description": "The whole credentials JSON downloaded from Clarify's admin panel; "
                "when set it wins over the fields above.",
                "schema": {"type": ["string", "null"], "format": "password"},
            },
            "api_version": {
                "label": "API version",
                "description": "Sent as X-API-Version.",
                "schema": {"type": ["string", "null"], "default": "1.1"},
            },
            "timeout": {
                "label": "Timeout (s)",
                "description": "HTTP timeout per request.",
                "schema": {"type": ["number", "null"], "default": 30},
            },
        },
    },
    "clarity": {
        "hook-class-name": f"{PACKAGE}.hooks.clarity.ClarityHook",
        "hook-name": "Clarity",
        "ui-field-behaviour": {
            "hidden-fields": ["schema", "port"],
            "relabeling": {"host": "API URL", "login": "Organization", "password": "API key"},
            "placeholders": {
                "host": "https://clarity-data-api.clarity.io",
                "login": "default organization, e.g. myorgVD43",
                "password": "API key (sent as x-api-key)",
            },
        },
        "conn-fields": {
            "timeout": {
                "label": "Timeout (s)",
                "description": "HTTP timeout per request.",
                "schema": {"type": ["number", "null"], "default": 30},
            },
        },
    },
}


def get_provider_info() -> dict[str, Any]:
    """Return the provider description Airflow's ProvidersManager expects."""
    return {
        "package-name": "airflow-provider-clarify",
        "name": "Clarify and Clarity",
        "description": "Load air-quality reports from Clarity and any time series into Clarify.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Clarify",
                "external-doc-url": "https://docs.clarify.io/api/1.1/",
                "tags": ["service"],
            },
            {
                "integration-name": "Clarity",
                "external-doc-url": "https://api-guide.clarity.io/",
                "tags": ["service"],
            },
        ],
        "connection-types": [
            {"connection-type": conn_type, **form} for conn_type, form in CONNECTION_FORMS.items()
        ],
        "hooks": [
            {"integration-name": "Clarify", "python-modules": [f"{PACKAGE}.hooks.clarify"]},
            {"integration-name": "Clarity", "python-modules": [f"{PACKAGE}.hooks.clarity"]},
        ],
        "operators": [
            {"integration-name": "Clarify", "python-modules": [f"{PACKAGE}.operators.clarify"]},
            {"integration-name": "Clarity", "python-modules": [f"{PACKAGE}.operators.clarity"]},
        ],
        "sensors": [{"integration-name": "Clarity", "python-modules": [f"{PACKAGE}.sensors.clarity"]}],
        "triggers": [{"integration-name": "Clarity", "python-modules": [f"{PACKAGE}.triggers.clarity"]}],
        "transfers": [
            {
                "source-integration-name": "Clarity",
                "target-integration-name": "Clarify",
                "python-module": f"{PACKAGE}.transfers.clarity_to_clarify",
            },
            {
                "source-integration-name": "Clarity",
                "target-integration-name": "Clarify",
                "python-module": f"{PACKAGE}.transfers.clarity_recent_to_clarify",
            },
            {
                "source-integration-name": "Clarity",
                "target-integration-name": "Common IO",
                "python-module": f"{PACKAGE}.transfers.clarity_to_object_storage",
            },
        ],
    }
