"""The repository is self-contained: nothing it runs reads a file outside the clone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Ways a path leaves the repository: a parent of the root, or the steering repo's shared/ folder.
_ESCAPES = re.compile(
    r"""\.\./shared|parents\[[2-9]\]|parents\[1\]\.parent|\.parent\.parent\.parent|["'/]shared["'/]"""
)
_SCANNED = ("cdp_batcher", "tests", "examples", "scripts", "bench", ".ci")


def _files() -> list[Path]:
    found = [ROOT / "Makefile", ROOT / "pyproject.toml"]
    for top in _SCANNED:
        found += [
            p for p in (ROOT / top).rglob("*") if p.is_file() and p.suffix in {".py", ".sh", ".toml", ""}
        ]
    return [p for p in found if p.resolve() != Path(__file__).resolve() and "__pycache__" not in p.parts]


def test_no_file_reads_outside_the_repository() -> None:
    """No test, script, example, Makefile target or CI step names a path outside the clone."""
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if _ESCAPES.search(line)
    ]
    assert offenders == []


def test_test_data_is_in_the_repository() -> None:
    """The conformance vectors and Customer.io's OpenAPI document ship under tests/data."""
    data = ROOT / "tests" / "data"
    assert (data / "opencdp-conformance-vectors.json").stat().st_size > 0
    assert (data / "customerio-track-api-openapi.json").stat().st_size > 100_000
