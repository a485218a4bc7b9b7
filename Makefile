# Two commands matter: `make demo` and `make test`. Each sets up everything it needs first:
# a virtualenv in .venv (pinned by constraints.txt) and a throwaway Airflow home in .airflow-home.
# `make test` also runs the test suite on the oldest supported Airflow minor (3.1) in .venv-airflow-3.1.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OLD_VENV := .venv-airflow-3.1
OLD_STAMP := $(OLD_VENV)/.installed
export AIRFLOW_HOME := $(CURDIR)/.airflow-home
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/example_dags
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install airflow-home lint typecheck test test-newest test-oldest demo clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable ".[dev,s3]"
	touch $(STAMP)

$(OLD_STAMP): pyproject.toml constraints-airflow-3.1.txt
	test -x $(OLD_VENV)/bin/python || $(PYTHON) -m venv $(OLD_VENV)
	$(OLD_VENV)/bin/python -m pip install --quiet --constraint constraints-airflow-3.1.txt --editable ".[dev,s3]"
	touch $(OLD_STAMP)

airflow-home: $(AIRFLOW_HOME)/.migrated

$(AIRFLOW_HOME)/.migrated: $(STAMP)
	mkdir -p $(AIRFLOW_HOME)
	$(BIN)/airflow db migrate > $(AIRFLOW_HOME)/migrate.log 2>&1 || (cat $(AIRFLOW_HOME)/migrate.log; exit 1)
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck test-newest test-oldest

# The suite on the newest Airflow (the pinned one in constraints.txt).
test-newest: $(STAMP)
	$(BIN)/python -m pytest

# The same suite on the oldest supported minor, Airflow 3.1.
test-oldest: $(OLD_STAMP)
	$(OLD_VENV)/bin/python -m pytest

demo: airflow-home
	$(BIN)/python scripts/demo.py

clean:
	rm -rf $(VENV) $(OLD_VENV) $(AIRFLOW_HOME) .mypy_cache .ruff_cache .pytest_cache dist build docs/_build

# `make docs`: the documentation site in docs/_build/html (Sphinx); any warning fails the build.
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	rm -rf docs/_build
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

# `make dist`: sdist and wheel in dist/, checked with twine; then the wheel is installed into a fresh
# virtualenv under /tmp (deleted afterwards), where `airflow providers list` must show the provider.
RELEASE_STAMP := $(VENV)/.release-installed

$(RELEASE_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable ".[release]"
	touch $(RELEASE_STAMP)

dist: $(RELEASE_STAMP)
	rm -rf dist build
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*
	@set -euo pipefail; \
	check=$$(mktemp -d /tmp/clarify-dist-check-XXXXXX); trap 'rm -rf "$$check"' EXIT; \
	echo "Installing dist/*.whl into a clean virtualenv in $$check"; \
	$(PYTHON) -m venv "$$check/venv"; \
	"$$check/venv/bin/python" -m pip install --quiet --constraint "$(CURDIR)/constraints.txt" "$(CURDIR)"/dist/*.whl; \
	cd "$$check"; \
	AIRFLOW_HOME="$$check/airflow-home" "$$check/venv/bin/airflow" providers list > providers.txt; \
	grep -E '^airflow-provider-clarify ' providers.txt; \
	echo "dist: twine check passed; the wheel installs into a clean virtualenv and Airflow lists the provider"

.PHONY: docs dist
