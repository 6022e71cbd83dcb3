# The two commands: `make demo` (examples against the local collector) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench stress clean venv import-check

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/run_demo.py

lint: $(STAMP)
	$(PY) -m ruff check cdp_batcher tests examples
	$(PY) -m ruff format --check cdp_batcher tests examples
	$(PY) -m mypy cdp_batcher

unit: $(STAMP)
	$(PY) -m pytest

test: lint unit

bench: $(STAMP)
	$(PY) bench/bench.py

# The CLI import on a generated 1,000,000-row file: throughput and peak RSS (takes a while).
import-check: $(STAMP)
	$(PY) scripts/import_check.py

clean:
	rm -rf $(VENV) build dist *.egg-info
