# The two commands: `make demo` (examples against the local collector) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench bench-host stress clean venv import-check matrix dist

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

# The version matrix (scripts/matrix.py, standard library only): the suite on the oldest Python
# with every runtime dependency at its floor, and on the newest Python with the newest releases.
# Venvs under .matrix/; MATRIX_ARGS="--cells oldest" or "--jobs 2" to change what runs.
matrix:
	$(PYTHON) scripts/matrix.py $(MATRIX_ARGS)

# The sdist and the wheel in dist/, from a tree without earlier build output (a stale
# *.egg-info/SOURCES.txt would add its files to the sdist), checked by twine.
dist: $(STAMP)
	rm -rf build dist *.egg-info
	$(PY) -m build --outdir dist .
	$(PY) -m twine check --strict dist/*

# The benchmark gets its own venv: the comparison libraries never enter .venv.
BENCH_VENV := .bench/venv
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): pyproject.toml bench/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install -q --upgrade pip
	$(BENCH_PY) -m pip install -q -e . -r bench/requirements.txt
	touch $(BENCH_STAMP)

# The host-app rows load the app with wrk (Debian's package, installed here when root has apt-get);
# without it bench.py uses its Python load generator in another process. BENCH_ARGS: e.g. --quick.
WRK_OR_FALLBACK = command -v wrk >/dev/null 2>&1 \
	|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	     && { apt-get install -y -q wrk >/dev/null 2>&1 \
	          || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q wrk >/dev/null 2>&1; }; }; } \
	|| echo "make bench: wrk not available; the host-app rows use bench.py's Python load generator"

bench: $(BENCH_STAMP)
	@$(WRK_OR_FALLBACK)
	$(BENCH_PY) bench/bench.py $(BENCH_ARGS)

# Only the host-app rows (gunicorn + Flask under a bounded load, 3 rounds; about six and a half minutes).
bench-host: $(BENCH_STAMP)
	@$(WRK_OR_FALLBACK)
	$(BENCH_PY) bench/bench.py --host-app-only $(BENCH_ARGS)

# 32 producers for 10 s against a collector flipping between healthy and failing (make test runs 3 s).
stress: $(STAMP)
	CDP_STRESS_SECONDS=10 $(PY) -m pytest -q -s tests/test_stress.py

# The CLI import on a generated 1,000,000-row file: throughput and peak RSS (takes a while).
import-check: $(STAMP)
	$(PY) scripts/import_check.py

clean:
	rm -rf $(VENV) .matrix build dist *.egg-info
