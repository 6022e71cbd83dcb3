"""gevent monkey-patching before or after the client was made: the hub never blocks.

Each case runs in a fresh interpreter (patching cannot be undone). A ticker greenlet counts while
the client delivers: a wait on an object made before the patch (a C ``SimpleQueue``, an unpatched
``Event``) would block the only OS thread and the ticker would stop. ``signal.alarm`` kills a
frozen child; the parent's timeout bounds everything.
"""

from __future__ import annotations

import importlib.util
import json
import threading

import pytest

from cdp_batcher import _concurrency
from cdp_batcher.testing import Collector

from conftest import run_python

pytestmark = pytest.mark.timeout(60)

needs_gevent = pytest.mark.skipif(
    importlib.util.find_spec("gevent") is None, reason="gevent is not installed (the servers extra)"
)

GEVENT_CASE = """
import json, os, signal, sys
signal.alarm(20)                              # a frozen hub cannot answer: die instead of hanging
url, case = sys.argv[1], sys.argv[2]
if case.endswith("_urlopen"):                 # the public path (proxies, a failed check): its watchdog
    case = case[: -len("_urlopen")]
    import cdp_batcher.destinations._http as http
    http.capable = lambda session, url: "the test's stand-in"
if case == "patch_before_import":             # the usual gevent set-up: patch, then import
    from gevent import monkey
    monkey.patch_all()
    assert "cdp_batcher" not in sys.modules

def client():
    from cdp_batcher import CDPClient
    return CDPClient(cdp_api_key="test-key", cdp_endpoint=url, cdp_fallback_endpoints=[],
                     flush_interval=0.05, shutdown_timeout=5.0, max_concurrent_requests=4)

def patched_run(c, tag):
    from gevent import monkey
    monkey.patch_all()
    import gevent
    ticks = [0]
    def tick():
        while True:
            gevent.sleep(0.005)
            ticks[0] += 1
    ticker = gevent.spawn(tick)
    for i in range(40):
        c.track(tag, "greenlet", {"i": i})
    gevent.sleep(0.05)
    before = ticks[0]
    report = c.flush(timeout=5)
    during = ticks[0] - before
    shut = c.shutdown(timeout=5)
    ticker.kill()
    from cdp_batcher import _concurrency
    return {"ok": bool(report), "delivered": report.delivered, "ticks": during, "shutdown_ok": bool(shut),
            "patched": _concurrency.patched()}

if case == "preload_fork":                    # gunicorn -k gevent --preload: made in the master
    c = client()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                              # the worker: fork hook ran, then the worker patches
        signal.alarm(20)                      # alarms are not inherited across fork
        os.close(r)
        os.write(w, json.dumps(patched_run(c, "worker")).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"child": json.loads(data or b"{}"), "exit": os.waitstatus_to_exitcode(status)}))
    c.shutdown(timeout=2)
elif case == "patch_after_import":            # made, then patched, before any call
    c = client()
    print(json.dumps({"child": patched_run(c, "late"), "exit": 0}))
elif case == "patch_before_import":
    c = client()
    print(json.dumps({"child": patched_run(c, "early"), "exit": 0}))
"""


@needs_gevent
@pytest.mark.parametrize(
    "case",
    [
        "preload_fork",
        "patch_after_import",
        "patch_before_import",
        "preload_fork_urlopen",
        "patch_after_import_urlopen",
    ],
)
def test_gevent_hub_keeps_running_while_delivering(collector: Collector, case: str) -> None:
    """Whether the client was made before the patch (in a forking master, or in the same process)
    or after it, its waits are cooperative: the ticker greenlet runs during flush(), all 40 events
    arrive, and shutdown() completes. ``_urlopen``: on the public path, whose deadline watchdog
    (made at import, before the patch) must not block the hub either."""
    proc, _ = run_python(GEVENT_CASE, collector.url, case, timeout=40)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    child = result["child"]
    assert result["exit"] == 0, result
    assert child["ok"] and child["delivered"] == 40 and child["shutdown_ok"], child
    assert child["ticks"] > 0, child  # the hub ran while flush() waited
    assert child["patched"] == "gevent"
    assert collector.count() == 40


def test_token_follows_the_threading_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """stale() turns True once threading.Lock is replaced (what monkey-patching does), and the
    factories then build from the replacement, looked up at call time."""
    made_with = _concurrency.token()
    assert not _concurrency.stale(made_with)
    built: list[object] = []

    def patched_lock() -> object:
        lock = threading.RLock()
        built.append(lock)
        return lock

    monkeypatch.setattr(threading, "Lock", patched_lock)
    assert _concurrency.stale(made_with)
    lock = _concurrency.lock()
    assert built == [lock]
    _concurrency.condition()
    assert len(built) == 2
    assert not _concurrency.stale(_concurrency.token())


def test_patched_names_nothing_without_gevent_or_eventlet() -> None:
    """In this (unpatched) process patched() is None and importing the package imported neither."""
    proc, _ = run_python(
        "import sys, cdp_batcher, cdp_batcher._concurrency as c; "
        "print(c.patched(), 'gevent' in sys.modules, 'eventlet' in sys.modules)"
    )
    assert proc.stdout.split() == ["None", "False", "False"], proc.stderr
