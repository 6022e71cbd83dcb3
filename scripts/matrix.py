"""The version matrix: the test suite on the oldest and on the newest supported versions.

``make matrix`` runs this (standard library only; any Python >= 3.9 can run it). Each cell is a
virtual environment under ``.matrix/<cell>/`` with an editable install of the repository and its
``test`` and ``frameworks`` extras, and runs ``pytest -m "not servers and not dist and not slow"``
(the real-server cells, the release build and the slow outage, proxy and spool-torture tests run
once, in ``make test``; lint and type checks too):

- ``oldest``: the oldest supported Python (``requires-python`` in pyproject.toml) with every
  runtime dependency at its floor: the ``>=`` bounds of ``[project] dependencies`` (urllib3
  among them) as ``==`` pins.
- ``newest``: the newest supported Python with the newest release of everything.

After installing, the versions actually installed are read back; a floor cell whose versions
differ from its pins fails. A cell whose interpreter cannot be found is skipped with a message;
with ``CI`` set (``CI=true``, as CI runs) or ``--require-all`` a skipped cell fails the run. Exit
status: 0 when every cell that ran passed (and, under CI, every cell ran), 1 otherwise; a cell
whose pytest exits non-zero (5: no tests collected) or passes no test has failed.

The cells install at the same time (pip mostly waits on the disk and the index); their suites
run one after the other unless ``--jobs`` says otherwise, because some timing tests assume a core
each. Logs: ``.matrix/<cell>/install.log`` and ``.matrix/<cell>/pytest.log``.

    python scripts/matrix.py                  # every cell, one after the other
    python scripts/matrix.py --cells oldest   # some cells
    python scripts/matrix.py --list           # what would run, with the pins
    python scripts/matrix.py --jobs 2         # both suites at once (faster, less reliable on 2 cores)
    python scripts/matrix.py --python 3.9=/opt/py39/bin/python3.9   # an interpreter by hand
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
MATRIX_DIR = ROOT / ".matrix"

#: The newest Python the package supports and the matrix tests (the oldest is requires-python).
NEWEST_PYTHON = "3.13"
#: The packages whose versions the summary shows (and a floor cell checks).
TRACKED = ("requests", "urllib3", "msgspec", "backoff")
#: Deselected in every cell: they run once, in ``make test``.
MARKERS = "not servers and not dist and not slow"
#: Upper bound on one cell's test run (the suite takes about 2 minutes on a busy 2-core machine).
CELL_TIMEOUT = 900

_COUNTS = re.compile(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)")


class Cell:
    """One row of the matrix: a name, a Python version and the pins (empty: newest of all)."""

    def __init__(self, name: str, python: str, pins: Dict[str, str], what: str) -> None:
        self.name = name
        self.python = python
        self.pins = pins
        self.what = what
        self.venv = MATRIX_DIR / name

    def __repr__(self) -> str:
        return f"Cell({self.name!r}, python={self.python!r}, pins={self.pins!r})"


class Outcome:
    """What a cell did: result (PASS, FAIL, SKIP), versions, a note, the pytest counts, time."""

    def __init__(self, cell: Cell) -> None:
        self.cell = cell
        self.result = "SKIP"
        self.python = "-"
        self.versions: Dict[str, str] = {}
        self.note = ""
        self.counts: Dict[str, int] = {}
        self.install_seconds = 0.0
        self.test_seconds = 0.0


# ----------------------------------------------------------------------------- the cells


def _pyproject() -> str:
    return (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def oldest_python(text: str) -> str:
    """``requires-python = ">=3.9"`` -> ``"3.9"``."""
    found = re.search(r'^requires-python\s*=\s*">=\s*(\d+\.\d+)"', text, re.M)
    if found is None:
        raise SystemExit('matrix: pyproject.toml has no requires-python = ">=X.Y"')
    return found.group(1)


def floors(text: str) -> Dict[str, str]:
    """The ``>=`` bound of every entry of ``[project] dependencies``, by package name."""
    block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.M | re.S)
    if block is None:
        raise SystemExit("matrix: pyproject.toml has no [project] dependencies list")
    pins: Dict[str, str] = {}
    for entry in re.findall(r'"([^"]+)"', block.group(1)):
        found = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*(?:,.*)?", entry)
        if found is None:
            raise SystemExit(f"matrix: dependency {entry!r} has no >= floor to test")
        pins[found.group(1).lower()] = found.group(2)
    return pins


def cells() -> List[Cell]:
    text = _pyproject()
    pins = floors(text)
    return [
        Cell("oldest", oldest_python(text), pins, "every runtime dependency at its floor"),
        Cell("newest", NEWEST_PYTHON, {}, "the newest release of everything"),
    ]


# ----------------------------------------------------------------------------- interpreters


def _version_of(python: str) -> Optional[str]:
    """``"3.9.18"`` when ``python`` runs, else None (a pyenv shim for an inactive version fails)."""
    try:
        done = subprocess.run(
            [python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def find_python(version: str, given: Dict[str, str]) -> Tuple[Optional[str], List[str]]:
    """An interpreter for ``version`` ("3.9") and the places looked at (for the skip message).

    Order: ``--python X.Y=PATH``; pyenv's versions (``$PYENV_ROOT`` or ``~/.pyenv``; the newest
    patch release); ``pythonX.Y`` on PATH.
    """
    looked: List[str] = []
    candidates: List[str] = []
    if version in given:
        candidates.append(given[version])
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    looked.append(f"{root}/{version}.*")
    if root.is_dir():
        found = []
        for path in root.iterdir():
            parts = re.fullmatch(re.escape(version) + r"\.(\d+)", path.name)
            exe = path / "bin" / f"python{version}"
            if parts and exe.exists():
                found.append((int(parts.group(1)), str(exe)))
        candidates += [exe for _, exe in sorted(found, reverse=True)]
    looked.append(f"python{version} on PATH")
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(on_path)
    for candidate in candidates:
        full = _version_of(candidate)
        if full is not None and full.startswith(version + "."):
            return candidate, looked
        looked.append(f"{candidate} (does not run as Python {version})")
    return None, looked


# ----------------------------------------------------------------------------- one cell


def _run_logged(argv: List[str], log: Path, timeout: float, env: Optional[Dict[str, str]] = None) -> int:
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        try:
            return subprocess.run(
                argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, env=env
            ).returncode
        except subprocess.TimeoutExpired:
            out.write(f"timed out after {timeout:.0f} s\n")
            return 124


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def _venv_python(cell: Cell) -> Path:
    return cell.venv / "bin" / "python"


def _make_venv(cell: Cell, python: str, full_version: str, log: Path) -> bool:
    """A venv for the cell, reused when it was made by the same interpreter version."""
    cfg = cell.venv / "pyvenv.cfg"
    if cfg.exists() and _venv_python(cell).exists():
        made = re.search(r"^version(?:_info)?\s*=\s*(\S+)", cfg.read_text(), re.M)
        if made and made.group(1) == full_version:
            return True
        shutil.rmtree(cell.venv)
    cell.venv.parent.mkdir(parents=True, exist_ok=True)
    return _run_logged([python, "-m", "venv", str(cell.venv)], log, 300) == 0


def _install(cell: Cell, extras: str, log: Path) -> bool:
    argv = [str(_venv_python(cell)), "-m", "pip", "install", "--disable-pip-version-check"]
    if cell.pins:
        constraints = cell.venv / "constraints.txt"
        constraints.write_text("".join(f"{name}=={v}\n" for name, v in sorted(cell.pins.items())))
        argv += ["-c", str(constraints)]
    else:
        argv += ["--upgrade", "--upgrade-strategy", "eager"]
    argv += ["-e", f".[{extras}]"]
    return _run_logged(argv, log, 900) == 0


def _installed_versions(cell: Cell) -> Dict[str, str]:
    code = (
        "import importlib.metadata as m, json; "
        f"print(json.dumps({{n: m.version(n) for n in {list(TRACKED)!r}}}))"
    )
    done = subprocess.run(
        [str(_venv_python(cell)), "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        return {}
    versions: Dict[str, str] = json.loads(done.stdout)
    return versions


def _same_version(pinned: str, installed: str) -> bool:
    """``2.26`` pins ``2.26.0``: compare release numbers with trailing zeros dropped."""

    def norm(v: str) -> List[str]:
        parts = v.split(".")
        while len(parts) > 1 and parts[-1] == "0":
            parts.pop()
        return parts

    return norm(pinned) == norm(installed)


def prepare(cell: Cell, given: Dict[str, str], must_run: bool) -> Tuple[Outcome, Optional[List[str]]]:
    """Find the interpreter, make the venv and install; (the outcome, pytest's extra arguments),
    the arguments None when the cell ends here (skipped, or failed)."""
    outcome = Outcome(cell)
    started = time.monotonic()
    try:
        return outcome, _prepare(cell, given, must_run, outcome)
    finally:
        outcome.install_seconds = time.monotonic() - started


def _prepare(cell: Cell, given: Dict[str, str], must_run: bool, outcome: Outcome) -> Optional[List[str]]:
    python, looked = find_python(cell.python, given)
    if python is None:
        outcome.result = "FAIL" if must_run else "SKIP"
        outcome.note = f"Python {cell.python} not found (looked at: {'; '.join(looked)})"
        print(f"matrix: {outcome.result} cell {cell.name}: {outcome.note}", flush=True)
        return None
    full = _version_of(python) or cell.python
    outcome.python = full
    cell.venv.mkdir(parents=True, exist_ok=True)
    log = cell.venv / "install.log"
    log.write_text("")
    print(f"matrix: cell {cell.name}: Python {full} ({python}), {cell.what}", flush=True)
    if not _make_venv(cell, python, full, log):
        outcome.result, outcome.note = "FAIL", f"could not create the venv (see {log})"
        print(f"matrix: FAIL cell {cell.name}: {outcome.note}\n{_tail(log)}", flush=True)
        return None
    deselect: List[str] = []
    if not _install(cell, "test,frameworks", log):
        # The framework recipes need the frameworks; the rest of the suite does not.
        print(
            f"matrix: cell {cell.name}: the frameworks extra did not install (see {log});"
            " installing without it and deselecting tests/test_recipes.py",
            flush=True,
        )
        if not _install(cell, "test", log):
            outcome.result, outcome.note = "FAIL", f"pip install failed (see {log})"
            print(f"matrix: FAIL cell {cell.name}: {outcome.note}\n{_tail(log)}", flush=True)
            return None
        deselect = ["--deselect", "tests/test_recipes.py"]
        outcome.note = "test_recipes.py deselected: frameworks did not install"
    outcome.versions = _installed_versions(cell)
    wrong = [
        f"{name} {outcome.versions.get(name, 'missing')} (pinned {pin})"
        for name, pin in sorted(cell.pins.items())
        if not _same_version(pin, outcome.versions.get(name, ""))
    ]
    if not outcome.versions or wrong:
        outcome.result = "FAIL"
        outcome.note = "installed versions differ from the pins: " + (", ".join(wrong) or "unreadable")
        print(f"matrix: FAIL cell {cell.name}: {outcome.note}", flush=True)
        return None
    shown = ", ".join(f"{n} {outcome.versions[n]}" for n in TRACKED)
    print(f"matrix: cell {cell.name}: installed {shown}", flush=True)
    return deselect


def run_tests(outcome: Outcome, deselect: List[str]) -> Outcome:
    """pytest in the cell's venv from the repository root; PASS needs exit 0 and a test passed."""
    cell = outcome.cell
    started = time.monotonic()
    print(f"matrix: cell {cell.name}: running pytest -m {MARKERS!r}", flush=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    report = cell.venv / "pytest.log"
    argv = [str(_venv_python(cell)), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", MARKERS, *deselect]
    rc = _run_tee(argv, report, env, cell.name)
    outcome.test_seconds = time.monotonic() - started
    summary = _last_summary(report)
    outcome.counts = {kind: int(n) for n, kind in _COUNTS.findall(summary)}
    if rc == 0 and outcome.counts.get("passed", 0) > 0:
        outcome.result = "PASS"
    else:
        outcome.result = "FAIL"
        why = {5: "pytest collected no tests (exit 5)", 124: f"timed out after {CELL_TIMEOUT} s"}
        outcome.note = why.get(rc, f"pytest exit {rc}" if rc else "no test passed")
    print(f"matrix: {outcome.result} cell {cell.name}: {summary or outcome.note}", flush=True)
    return outcome


def _run_tee(argv: List[str], log: Path, env: Dict[str, str], name: str) -> int:
    """Run ``argv``, print its lines prefixed with the cell's name and keep them in ``log``.

    A watchdog kills the run after ``CELL_TIMEOUT`` seconds (exit 124), output or not.
    """
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        expired = threading.Event()

        def kill() -> None:
            expired.set()
            proc.kill()

        watchdog = threading.Timer(CELL_TIMEOUT, kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                print(f"[{name}] {line}", end="", flush=True)
            rc = proc.wait()
        finally:
            watchdog.cancel()
        return 124 if expired.is_set() else rc


def _last_summary(log: Path) -> str:
    """pytest's closing line (``608 passed, 11 deselected in 95.28s``) without the ``=`` rule."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if _COUNTS.search(line) or "no tests ran" in line:
            return line.strip(" =")
    return ""


# ----------------------------------------------------------------------------- the summary


def table(outcomes: List[Outcome]) -> str:
    head = ["cell", "python", *TRACKED, "result", "tests", "install s", "tests s"]
    rows = [head]
    for o in outcomes:
        tests = ", ".join(f"{n} {k}" for k, n in o.counts.items()) if o.counts else o.note
        rows.append(
            [
                o.cell.name,
                o.python,
                *(o.versions.get(n, "-") for n in TRACKED),
                o.result,
                tests,
                f"{o.install_seconds:.0f}",
                f"{o.test_seconds:.0f}",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {o.cell.name}: {o.note}" for o in outcomes if o.note and o.counts]
    return "\n".join(lines + (["notes:", *notes] if notes else []))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/matrix.py", description=__doc__.split("\n")[0])
    parser.add_argument("--cells", help="comma-separated cell names (default: all)")
    parser.add_argument("--list", action="store_true", help="print the cells and exit")
    parser.add_argument(
        "--python", action="append", default=[], metavar="X.Y=PATH", help="the interpreter for X.Y"
    )
    parser.add_argument("--jobs", type=int, default=1, help="cells whose suites run at once (default 1)")
    parser.add_argument(
        "--require-all", action="store_true", help="a missing interpreter fails (default under CI)"
    )
    args = parser.parse_args(argv)
    given = dict(item.split("=", 1) for item in args.python)
    chosen = cells()
    if args.cells:
        names = [n.strip() for n in args.cells.split(",") if n.strip()]
        unknown = sorted(set(names) - {c.name for c in chosen})
        if unknown:
            parser.error(f"unknown cell(s) {', '.join(unknown)}; cells: {', '.join(c.name for c in chosen)}")
        chosen = [c for c in chosen if c.name in names]
    if args.list:
        for cell in chosen:
            pins = ", ".join(f"{n}=={v}" for n, v in sorted(cell.pins.items())) or "newest"
            print(f"{cell.name}: Python {cell.python}; {pins}")
        return 0
    on_ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    must_run = args.require_all or on_ci
    started = time.monotonic()
    # Installing is mostly waiting on pip: every cell installs at once. The suites run one at a
    # time by default (--jobs): several timing tests assume a core to themselves.
    with ThreadPoolExecutor(max_workers=max(1, len(chosen))) as pool:
        prepared = list(pool.map(lambda cell: prepare(cell, given, must_run), chosen))
    ready = [(outcome, extra) for outcome, extra in prepared if extra is not None]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(lambda item: run_tests(*item), ready))
    outcomes = [outcome for outcome, _ in prepared]
    print(f"\nmatrix: {len(outcomes)} cell(s) in {time.monotonic() - started:.0f} s\n{table(outcomes)}")
    skipped = [o for o in outcomes if o.result == "SKIP"]
    failed = [o for o in outcomes if o.result == "FAIL"]
    if skipped:
        print(
            f"matrix: {len(skipped)} cell(s) SKIPPED, not tested: {', '.join(o.cell.name for o in skipped)}"
            " (an interpreter is missing; under CI=true or --require-all this fails)"
        )
    ok = not failed and any(o.result == "PASS" for o in outcomes)
    print(
        f"matrix: {'OK' if ok else 'FAILED'}: {sum(o.result == 'PASS' for o in outcomes)} cell(s) passed,"
        f" {len(failed)} failed, {len(skipped)} skipped"
    )
    # The tests run across the cells, as the closing line.
    total = {
        k: sum(o.counts.get(k, 0) for o in outcomes)
        for k in ("passed", "failed", "error", "errors", "skipped")
    }
    closing = f"matrix: {total['passed']} passed, {total['failed'] + total['error'] + total['errors']} failed"
    print(closing + (f", {total['skipped']} skipped" if total["skipped"] else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
