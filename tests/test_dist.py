"""The release installs: the sdist and the wheel build, pass ``twine check`` and carry what they
should, and the wheel works in a fresh venv with no source tree on the path.

Run alone with ``pytest -m dist``. The dist is built here (``python -m build``: the sdist, then
the wheel from the sdist), into a temporary folder; the venv takes its dependencies from the
package index (or pip's cache) and every command runs from an empty temporary folder.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
import zipfile
from pathlib import Path
from typing import NamedTuple

import pytest

from cdp_batcher import __version__

from conftest import ENV_VARS

pytestmark = [pytest.mark.dist, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "dist-key"


class Dist(NamedTuple):
    sdist: Path
    wheel: Path


class Venv(NamedTuple):
    python: Path
    bin: Path
    cwd: Path  # an empty folder: nothing of the source tree is importable from it
    env: dict[str, str]


def _clean_env() -> dict[str, str]:
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", *ENV_VARS}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _run(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _source_files(top: str) -> set[str]:
    """Files under ``top`` in the source tree, relative to the root (no byte code)."""
    return {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / top).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".pyo"}
    }


#: Never part of a build: environments, caches and earlier build output. A stale
#: ``*.egg-info/SOURCES.txt`` would put its files in the sdist whatever MANIFEST.in says.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", ".matrix", ".bench", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".*_cache"
)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """``python -m build`` (the sdist, then the wheel from it) on a copy of the tree without
    build leftovers, as ``make dist`` does after its clean."""
    source = tmp_path_factory.mktemp("source") / "cdp_batcher"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", out, source], cwd=source, env=_clean_env(), timeout=240)
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in out.iterdir())
    return Dist(sdists[0], wheels[0])


@pytest.fixture(scope="module")
def venv(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    base = tmp_path_factory.mktemp("wheel-venv")
    cwd = tmp_path_factory.mktemp("elsewhere")
    env = _clean_env()
    _run([sys.executable, "-m", "venv", base / "venv"], cwd=cwd, env=env)
    bin_dir = base / "venv" / "bin"
    python = bin_dir / "python"
    _run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", dist.wheel],
        cwd=cwd,
        env=env,
        timeout=240,
    )
    return Venv(python, bin_dir, cwd, env)


def test_twine_check_passes(dist: Dist) -> None:
    """``twine check --strict`` accepts both files' metadata (README renders, fields valid)."""
    out = _run(
        [sys.executable, "-m", "twine", "check", "--strict", dist.sdist, dist.wheel],
        cwd=ROOT,
        env=_clean_env(),
    )
    assert out.count("PASSED") == 2, out


def test_files_are_named_for_the_one_version(dist: Dist) -> None:
    """Both files carry the version of cdp_batcher/_version.py, the one place it is written."""
    assert dist.sdist.name == f"cdp_batcher-{__version__}.tar.gz"
    assert dist.wheel.name == f"cdp_batcher-{__version__}-py3-none-any.whl"


def test_changelog_has_an_entry_for_this_version() -> None:
    """CHANGELOG.md has a section for the version in _version.py: ``## [X.Y.Z]`` once released,
    until then the ``Unreleased`` section saying it will be X.Y.Z."""
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    released = re.search(rf"^## \[{re.escape(__version__)}\]", text, re.M)
    unreleased = re.search(r"^## \[Unreleased\]\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert released or (unreleased and f"will be {__version__}" in unreleased.group(1))


def test_wheel_carries_every_module_and_py_typed(dist: Dist) -> None:
    """Every module of the package (subpackages too) and the ``py.typed`` marker; no tests."""
    with zipfile.ZipFile(dist.wheel) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read(f"cdp_batcher-{__version__}.dist-info/METADATA").decode()
    assert "cdp_batcher/py.typed" in names
    modules = {n for n in _source_files("cdp_batcher") if n.endswith(".py")}
    assert modules, "no modules found in the source tree"
    assert modules - names == set()
    assert not any(n.startswith("tests/") for n in names)
    requires = sorted(re.findall(r"^Requires-Dist: ([^;\n]+)$", metadata, re.M))
    assert requires == ["backoff>=2.0.0", "msgspec>=0.18.0", "requests>=2.32.2", "urllib3>=1.26.0"], requires
    assert re.search(r"^Requires-Python: >=3\.9$", metadata, re.M)


def test_sdist_carries_the_tests_and_their_data(dist: Dist) -> None:
    """The sdist holds the whole test suite, its data and the examples the recipe tests run."""
    prefix = f"cdp_batcher-{__version__}/"
    with tarfile.open(dist.sdist) as sdist:
        names = {n[len(prefix) :] for n in sdist.getnames() if n.startswith(prefix)}
    assert {
        "tests/data/opencdp-conformance-vectors.json",
        "tests/data/customerio-track-api-openapi.json",
    } <= names
    for top in ("tests", "examples", "cdp_batcher"):
        assert _source_files(top) - names == set(), top
    assert {"pyproject.toml", "README.md", "CHANGELOG.md", "Makefile"} <= names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_installed_package_is_the_wheel_not_the_source_tree(venv: Venv) -> None:
    """``import cdp_batcher`` in the fresh venv loads the installed copy, of this version."""
    out = _run(
        [
            venv.python,
            "-c",
            "import cdp_batcher, json; print(json.dumps([cdp_batcher.__file__, cdp_batcher.__version__]))",
        ],
        cwd=venv.cwd,
        env=venv.env,
    )
    where, version = json.loads(out)
    assert version == __version__
    assert "site-packages" in Path(where).parts
    assert not Path(where).resolve().is_relative_to(ROOT)


def test_console_script_runs(venv: Venv) -> None:
    """The ``cdp-batcher`` console script is installed and answers ``--help`` and ``--version``."""
    help_text = _run([venv.bin / "cdp-batcher", "--help"], cwd=venv.cwd, env=venv.env)
    for command in ("import", "ping", "collector"):
        assert command in help_text
    assert _run([venv.bin / "cdp-batcher", "--version"], cwd=venv.cwd, env=venv.env).strip() == (
        f"cdp-batcher {__version__}"
    )


def test_testing_module_runs(venv: Venv) -> None:
    """``python -m cdp_batcher.testing --help`` describes the collector's options."""
    out = _run([venv.python, "-m", "cdp_batcher.testing", "--help"], cwd=venv.cwd, env=venv.env)
    assert "--port" in out and "--api-key" in out


_TRACK_AND_FLUSH = """
import json, sys
from cdp_batcher import CDPClient
from cdp_batcher.testing import Collector

def send(url):
    client = CDPClient(cdp_api_key=KEY, cdp_endpoint=url, cdp_fallback_endpoints=[])
    client.track("u1", "wheel_installed", {"n": 1})
    report = client.flush(timeout=20)
    client.shutdown(timeout=5)
    return bool(report)

KEY = sys.argv[1]
if len(sys.argv) > 2:  # a collector that runs elsewhere
    print(json.dumps({"delivered": send(sys.argv[2])}))
else:
    with Collector(api_key=KEY) as collector:
        delivered = send(collector.url)
        print(json.dumps({"delivered": delivered, "events": collector.events()}))
"""


def test_track_and_flush_reach_the_collector(venv: Venv) -> None:
    """From the installed wheel: ``track()`` + ``flush()`` deliver to ``testing.Collector``."""
    out = _run([venv.python, "-c", textwrap.dedent(_TRACK_AND_FLUSH), API_KEY], cwd=venv.cwd, env=venv.env)
    result = json.loads(out)
    assert result["delivered"] is True
    bodies = [e["body"] for e in result["events"]]
    assert bodies == [{"identifier": "u1", "eventName": "wheel_installed", "properties": {"n": 1}}]


def test_track_and_flush_reach_python_m_testing(venv: Venv) -> None:
    """From the installed wheel: the collector run as ``python -m cdp_batcher.testing --port 0``
    receives a tracked event, prints its arrival, and stops cleanly on SIGTERM."""
    proc = subprocess.Popen(
        [str(venv.python), "-m", "cdp_batcher.testing", "--port", "0", "--api-key", API_KEY],
        cwd=venv.cwd,
        env=venv.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    reader = threading.Thread(target=pump, name="dist-collector-reader", daemon=True)
    reader.start()
    try:
        first = lines.get(timeout=30)
        found = re.search(r"http://127\.0\.0\.1:\d+", first)
        assert found, first
        out = _run(
            [venv.python, "-c", textwrap.dedent(_TRACK_AND_FLUSH), API_KEY, found.group(0)],
            cwd=venv.cwd,
            env=venv.env,
        )
        assert json.loads(out) == {"delivered": True}
        arrival = lines.get(timeout=10)
        assert "track u1 wheel_installed" in arrival, arrival
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        reader.join(timeout=10)
    assert not reader.is_alive()
