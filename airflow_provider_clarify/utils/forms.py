"""Connection-form hook methods for Airflow 3.1, built from :data:`~..get_provider_info.CONNECTION_FORMS`.

Airflow 3.2+ reads the form from the provider info; 3.1 asks the hook's ``get_connection_form_widgets``
and ``get_ui_field_behaviour``. Both hooks delegate here so the form is declared once. The wtforms and
Flask-AppBuilder imports happen only when Airflow's UI asks (they ship with the FAB UI, not with core).
"""

from __future__ import annotations

from typing import Any

from airflow_provider_clarify.get_provider_info import CONNECTION_FORMS


def ui_field_behaviour(conn_type: str) -> dict[str, Any]:
    """``get_ui_field_behaviour()`` for a connection type: hidden fields, relabeling, placeholders.

    :param conn_type: a key of :data:`CONNECTION_FORMS` (``"clarify"`` or ``"clarity"``).
    """
    behaviour = CONNECTION_FORMS[conn_type]["ui-field-behaviour"]
    return {
        "hidden_fields": list(behaviour.get("hidden-fields", [])),
        "relabeling": dict(behaviour.get("relabeling", {})),
        "placeholders": dict(behaviour.get("placeholders", {})),
    }


def connection_form_widgets(conn_type: str) -> dict[str, Any]:
    """``get_connection_form_widgets()`` for a connection type: one wtforms field per extra field.

    Fields whose schema says ``format: password`` become password fields (masked in the UI), integers
    and booleans get their own field classes, everything else is a text field with the declared default.

    :param conn_type: a key of :data:`CONNECTION_FORMS`.
    """
    from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
    from flask_babel import lazy_gettext
    from wtforms import BooleanField, IntegerField, PasswordField, StringField

    widgets: dict[str, Any] = {}
    for name, spec in CONNECTION_FORMS[conn_type]["conn-fields"].items():
        schema = spec.get("schema", {})
        label = lazy_gettext(spec.get("label", name))
        description = spec.get("description", "")
        default = schema.get("default")
        declared = schema.get("type", "string")
        kinds = [declared] if isinstance(declared, str) else list(declared)
        kind = next((k for k in kinds if k != "null"), "string")
        if schema.get("format") == "password":
            widgets[name] = PasswordField(label, widget=BS3PasswordFieldWidget(), description=description)
        elif kind == "boolean":
            widgets[name] = BooleanField(label, description=description, default=default)
        elif kind == "integer":
            widgets[name] = IntegerField(
                label, widget=BS3TextFieldWidget(), description=description, default=default
            )
        else:  # strings and numbers (Airflow's UI accepts no FloatField): the hook parses the text
            widgets[name] = StringField(
                label,
                widget=BS3TextFieldWidget(),
                description=description,
                default=None if default is None else str(default),
            )
    return widgets
