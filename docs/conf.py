"""Sphinx configuration of the airflow-provider-clarify documentation (``make docs``)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(ROOT))  # document the working tree, also when the package is not installed

# autodoc imports Airflow, which writes into AIRFLOW_HOME: keep that out of the user's home.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="clarify-docs-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from airflow_provider_clarify import __version__  # noqa: E402 - needs sys.path above

project = "airflow-provider-clarify"
author = "airflow-provider-clarify maintainers"
copyright = "airflow-provider-clarify maintainers, Apache License 2.0"
version = release = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "provider_docs",  # docs/_ext/provider_docs.py: the template-fields directive
    "myst_parser",  # Markdown pages (MyST): troubleshooting.md, and reliability.md written by tests/faults
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
# deflist: "term" / ": definition" lists, as the error entries of troubleshooting.md are written.
myst_enable_extensions = ["deflist"]

exclude_patterns = ["_build"]
templates_path: list[str] = []
root_doc = "index"
default_role = "literal"

# Docstrings use reST field lists (":param x:"), so no napoleon. Cross references stay best effort:
# nitpicky mode would flag every Airflow base-class name that has no inventory here (no network).
nitpicky = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autoclass_content = "class"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_inherit_docstrings = False
add_module_names = False
python_display_short_literal_types = True
python_maximum_signature_line_length = 90  # one parameter per line in long signatures

html_theme = "furo"
html_title = f"airflow-provider-clarify {release}"
html_static_path = ["_static"]
html_css_files = ["provider.css"]
html_theme_options = {
    "sidebar_hide_name": False,
    "light_css_variables": {"color-brand-primary": "#017cee", "color-brand-content": "#017cee"},
    "dark_css_variables": {"color-brand-primary": "#4fb0ff", "color-brand-content": "#4fb0ff"},
}
html_show_sourcelink = False
