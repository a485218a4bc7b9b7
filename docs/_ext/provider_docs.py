"""Sphinx helpers for the provider's docs: the ``template-fields`` directive.

``.. template-fields:: airflow_provider_clarify.operators.clarity.ClarityRequestReportOperator`` renders
a table of the class's ``template_fields`` with the ``:param:`` text of each from the class docstring,
so the list in the docs is the one Airflow renders, never a copy that goes stale. A template field
without a ``:param:`` entry is a build warning (and ``make docs`` treats warnings as errors).
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import TYPE_CHECKING, Any

from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

if TYPE_CHECKING:
    from docutils import nodes
    from sphinx.application import Sphinx

log = logging.getLogger(__name__)

_PARAM = re.compile(r"^:param (?:[^:]+ )?(?P<name>\w+):(?P<text>.*)$")


def param_docs(doc: str) -> dict[str, str]:
    """The ``:param name: text`` entries of a docstring, continuation lines joined.

    :param doc: the cleaned docstring (``inspect.getdoc``).
    """
    found: dict[str, str] = {}
    name: str | None = None
    for line in doc.splitlines():
        match = _PARAM.match(line.strip())
        if match:
            name = match["name"]
            found[name] = match["text"].strip()
        elif name and line.startswith((" ", "\t")) and line.strip():
            found[name] += " " + line.strip()
        else:
            name = None
    return found


class TemplateFields(SphinxDirective):
    """Table of a class's ``template_fields`` with their documentation."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        """Import the class and render its table."""
        path = self.arguments[0]
        module_name, _, class_name = path.rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        fields = list(getattr(cls, "template_fields", ()))
        docs = param_docs(inspect.getdoc(cls) or "")
        rows = ["* - Field", "  - Meaning"]
        for field in fields:
            text = docs.get(field)
            if not text:
                log.warning(
                    "%s: template field %r has no :param: entry", path, field, location=self.get_location()
                )
                text = "(undocumented)"
            rows += [f"* - ``{field}``", f"  - {text}"]
        table = [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 25 75",
            "   :class: template-fields",
            "",
        ]
        table += [f"   {row}" for row in rows]
        return self.parse_text_to_nodes("\n".join(table))


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the directive.

    :param app: the Sphinx application.
    """
    app.add_directive("template-fields", TemplateFields)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
