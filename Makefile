# The set-up contract: `make run` and `make test` work on a fresh machine with Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run serve test lint typecheck docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamps are keyed on pyproject.toml, so a dependency change reinstalls.
$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[cli,server]"
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(BIN)/memcollect demo

# The server and its dashboard (http://127.0.0.1:8765) over the same store as `make run`.
serve: $(VENV)/.run-installed
	$(BIN)/memcollect serve

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

# Two worker processes, and worksteal keeps both busy to the end (the slow tests are not left
# to one). On the 2-core machine of 2026-12-07, a slow one: 217-266 s of pytest in six runs,
# a third of it loading, exporting and distilling the embedding model (once a run: the workers
# share the model cache), after 66 s of mypy on a clean clone.
test: lint typecheck
	$(BIN)/python -m pytest -n 2 --dist worksteal

# The documentation site, into site/; `make test` builds it too (tests/test_docs.py).
docs: $(VENV)/.dev-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(VENV)/.dev-installed
	$(BIN)/python bench/collect.py
	$(BIN)/python bench/remote.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .memcollect site
