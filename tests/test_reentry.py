"""Re-entry into flush()/shutdown() from inside the pipeline: explicit state, one stack check.

The subprocess tests of signal handlers live in ``test_lifecycle.py``; these prove the guard
itself: every module that may hold a pipeline lock is covered (a new one by default), and an
``on_error`` callback calling flush()/shutdown() returns at once instead of waiting for itself.
"""

from __future__ import annotations

import importlib.util
import pkgutil
import re
import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest

import cdp_batcher
from cdp_batcher import _lifecycle
from cdp_batcher.testing import Collector

from conftest import MakeClient

PACKAGE = Path(cdp_batcher.__file__).parent
#: Source that takes or makes a lock, a condition or a thread (directly or through the
#: patch-aware factories of ``_concurrency``): such a module is pipeline code.
LOCKING = re.compile(
    r"threading\.(Lock|RLock|Condition|Thread|Event)\b"
    r"|_concurrency\.(lock|condition|event|simple_queue|local)\("
    r"|\bwith [\w.]*(_lock|lock|_cond)\b"
)
#: Modules known to make or take pipeline locks: the scan above must see every one of them.
KNOWN_LOCKING = {
    "cdp_batcher._queue",
    "cdp_batcher._ledger",
    "cdp_batcher._route",
    "cdp_batcher._senders",
    "cdp_batcher._report",
    "cdp_batcher.destinations._deadline",
    "cdp_batcher.destinations._http",
    "cdp_batcher.destinations._outage",
}
#: Modules outside the pipeline that still use threading, and why that is safe.
OUTSIDE_BUT_LOCKING = {
    "cdp_batcher._client": "its shutdown lock is taken inside pipeline_frame; it starts the deferred-shutdown thread",
    "cdp_batcher._progress": "the CLI progress line's own lock; never held while calling the client",
    "cdp_batcher._lifecycle": "makes the re-entry depth's thread-local (no lock); its hooks call the client's entry points",
}


def _modules() -> list[str]:
    names = ["cdp_batcher"]
    for info in pkgutil.walk_packages(cdp_batcher.__path__, "cdp_batcher."):
        names.append(info.name)
    return names


def _probe(module_name: str) -> bool:
    """inside_pipeline() as seen from a frame that belongs to ``module_name``."""
    namespace: dict[str, Any] = {"__name__": module_name, "check": _lifecycle.inside_pipeline}
    exec(compile("def probe():\n    return check()\n", f"<{module_name}>", "exec"), namespace)
    return bool(namespace["probe"]())


def test_every_module_that_locks_is_covered_by_the_stack_check() -> None:
    """A module whose source takes a lock or starts a thread counts as pipeline for a signal
    handler, unless it is one of the named, justified exceptions."""
    escaped = []
    for name in _modules():
        spec = importlib.util.find_spec(name)  # not imported: a __main__ would run
        assert spec is not None and spec.origin is not None, name
        source = Path(spec.origin).read_text(encoding="utf-8")
        if not LOCKING.search(source):
            continue
        if name.startswith("cdp_batcher.testing") or name in OUTSIDE_BUT_LOCKING:
            continue
        if not _probe(name):
            escaped.append(name)
    assert not escaped, f"pipeline modules the re-entrancy guard does not see: {escaped}"
    assert set(OUTSIDE_BUT_LOCKING) <= _lifecycle.OUTSIDE_PIPELINE


def test_the_scan_sees_locks_made_through_concurrency() -> None:
    """Locks, conditions and queues made by _concurrency's factories (gevent-aware) count as
    locking: a module that holds one cannot slip past the scan above."""
    found = set()
    for name in _modules():
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        if LOCKING.search(Path(spec.origin).read_text(encoding="utf-8")):
            found.add(name)
    assert found >= KNOWN_LOCKING, KNOWN_LOCKING - found
    for name in KNOWN_LOCKING:
        assert _probe(name), name
    assert _probe("cdp_batcher.metrics")  # calls stats() from a scrape: counted as pipeline
    assert _probe("cdp_batcher.destinations._fast")


def test_the_depth_follows_a_monkey_patch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The depth lives in a thread-local of the threading module in force: once gevent/eventlet
    patch threading (seen as a new threading.Lock), it is remade, so that a greenlet does not
    inherit the depth of a dispatcher greenlet sharing its OS thread."""
    before = _lifecycle._local()
    real_lock = threading.Lock
    monkeypatch.setattr(threading, "Lock", lambda: real_lock())
    after = _lifecycle._local()
    assert after is not before
    assert not _lifecycle.inside_pipeline()
    with _lifecycle.pipeline_frame:
        assert _lifecycle.inside_pipeline()
    assert not _lifecycle.inside_pipeline()
    monkeypatch.undo()
    assert _lifecycle._local() is not after  # remade again for the real module


def test_a_new_module_is_covered_without_being_listed() -> None:
    """Default deny: a package module nobody told the guard about counts as pipeline."""
    name = "cdp_batcher._brand_new_module"
    sys.modules[name] = types.ModuleType(name)
    try:
        assert _probe(name)
    finally:
        del sys.modules[name]
    assert not _probe("cdp_batcher._client")
    assert not _probe("someone_elses_module")
    assert not _lifecycle.inside_pipeline()


def test_pipeline_threads_and_frames_are_explicit_state() -> None:
    """The thread-local depth alone (no pipeline frame on the stack) makes a thread count as inside."""
    seen: list[bool] = []
    worker = threading.Thread(
        target=_lifecycle.in_pipeline_thread(lambda: seen.append(_lifecycle.inside_pipeline()))
    )
    worker.start()
    worker.join(5)
    with _lifecycle.pipeline_frame:
        seen.append(_lifecycle.inside_pipeline())
    seen.append(_lifecycle.inside_pipeline())
    assert seen == [True, True, False]


def test_on_error_calling_flush_and_shutdown_returns_at_once(
    collector: Collector, make_client: MakeClient
) -> None:
    """An on_error callback (run by a sender) calling flush(30) and shutdown() gets an unresolved
    report at once instead of waiting on the very delivery it is part of."""
    returned = threading.Event()
    reports: list[Any] = []
    client: Any = None

    def on_error(error: BaseException, events: Any) -> None:
        reports.append(client.flush(timeout=30))
        reports.append(client.shutdown(timeout=30))
        returned.set()

    collector.fail_next(1, 400)
    client = make_client(on_error=on_error, max_retries=0, max_concurrent_requests=2)
    client.track("u1", "rejected")
    assert returned.wait(10), "on_error's flush()/shutdown() waited on the pipeline itself"
    assert len(reports) == 2 and not reports[0]
    client.shutdown(timeout=5)
