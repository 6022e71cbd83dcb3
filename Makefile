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

# The benchmark gets its own venv: the comparison libraries never enter .venv.
BENCH_VENV := .bench/venv
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): pyproject.toml bench/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install -q --upgrade pip
	$(BENCH_PY) -m pip install -q -e . -r bench/requirements.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_PY) bench/bench.py

# 32 producers for 10 s against a collector flipping between healthy and failing (make test runs 3 s).
stress: $(STAMP)
	CDP_STRESS_SECONDS=10 $(PY) -m pytest -q -s tests/test_stress.py

# The CLI import on a generated 1,000,000-row file: throughput and peak RSS (takes a while).
import-check: $(STAMP)
	$(PY) scripts/import_check.py

clean:
	rm -rf $(VENV) build dist *.egg-info
