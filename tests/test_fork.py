"""Fork safety, for real: os.fork(), multiprocessing (fork and spawn), a gunicorn-style preload.

A forked child starts with an empty queue and its own lock, thread and connections, and delivers
what it tracks; the parent keeps delivering its own; nothing is sent twice. Children report back
through a pipe and exit with os._exit; every wait on a child is bounded.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest

from cdp_batcher import CDPClient, _concurrency
from cdp_batcher import _queue as _queue_module
from cdp_batcher.testing import Collector

from conftest import API_KEY, MakeClient, assert_accounted, run_python

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]

CHILD_TIMEOUT = 20.0


def _wait_child(pid: int, timeout: float) -> int:
    """waitpid with a bound: the child's exit code; kills it and fails the test when it hangs."""
    deadline = time.monotonic() + timeout
    pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"child {pid} still running after {timeout} s")
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                threading.Event().wait(min(left, 0.01))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _read_pipe(fd: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return b"".join(chunks)
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def in_child(body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Fork; the child runs ``body`` and sends its JSON result through a pipe, then os._exit.
    Returns the result (with the child's exit code under ``"exit"``)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(int(CHILD_TIMEOUT) + 5)  # a hung child dies even if the parent is gone
            os.write(write_end, json.dumps(body()).encode())
            code = 0
        except BaseException as exc:
            os.write(write_end, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        data = _read_pipe(read_end, CHILD_TIMEOUT)
    finally:
        os.close(read_end)
    code = _wait_child(pid, CHILD_TIMEOUT)
    result: dict[str, Any] = json.loads(data) if data else {"error": "no result"}
    result["exit"] = code
    return result


def by_identifier(collector: Collector) -> Counter[str]:
    return Counter(e["body"]["identifier"] for e in collector.events())


def test_forked_child_starts_empty_and_delivers_its_own(
    collector: Collector, make_client: MakeClient
) -> None:
    """Events queued in the parent at fork time stay the parent's: the child's queue is empty, the
    child delivers what it tracks, the parent delivers its own, each exactly once."""
    client = make_client(flush_interval=60.0)
    for i in range(5):
        client.track("parent", "before_fork", {"i": i})
    assert client.stats().destinations["opencdp"].queued == 5

    def child() -> dict[str, Any]:
        start = client.stats().destinations["opencdp"]
        for i in range(7):
            client.track("child", "in_child", {"i": i})
        report = client.flush(timeout=10)
        return {
            "queued_at_start": start.queued,
            "enqueued_at_start": start.enqueued,
            "ok": bool(report),
            "delivered": report.delivered,
            "pid": os.getpid(),
        }

    result = in_child(child)
    assert result["exit"] == 0, result
    assert result["queued_at_start"] == 0 and result["enqueued_at_start"] == 0
    assert result["ok"] and result["delivered"] == 7 and result["pid"] != os.getpid()
    for i in range(3):
        client.track("parent", "after_fork", {"i": i})
    report = client.flush(timeout=10)
    assert report and report.delivered == 8
    assert by_identifier(collector) == {"parent": 8, "child": 7}
    assert_accounted(client.stats())


def test_fork_while_parent_requests_are_in_flight(collector: Collector, make_client: MakeClient) -> None:
    """Forking while the parent's senders wait on slow answers: the child uses its own connections
    and threads, and the parent's in-flight events still arrive once."""
    client = make_client()
    collector.set_latency(0.4)
    for i in range(10):
        client.track("parent", "slow", {"i": i})
    assert not client.flush(timeout=0.1)  # requests are now in flight

    def child() -> dict[str, Any]:
        client.track("child", "during_parent_flight")
        report = client.flush(timeout=10)
        return {"ok": bool(report), "delivered": report.delivered}

    result = in_child(child)
    assert result["exit"] == 0 and result["ok"] and result["delivered"] == 1, result
    assert client.flush(timeout=10)
    assert by_identifier(collector) == {"parent": 10, "child": 1}


def test_fork_while_a_parent_thread_holds_the_log_limiter(
    collector: Collector, make_client: MakeClient
) -> None:
    """A parent thread was logging a failure (holding the rate limiter's lock) at the moment of the
    fork: the child can still report and count its own failures."""
    client = make_client(flush_interval=60.0)
    collector.fail_next(1, 400)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with client._limiter._lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(5)

        def child() -> dict[str, Any]:
            client.track("child", "rejected")
            report = client.flush(timeout=5)
            return {"failed": dict(report.destinations["opencdp"].failed), "met": report.deadline_met}

        result = in_child(child)
    finally:
        release.set()
        holder.join(5)
    assert result["exit"] == 0 and result["failed"] == {"http_400": 1} and result["met"], result


MP_SCRIPT = """
import multiprocessing as mp, sys
from cdp_batcher import CDPClient

url, method = sys.argv[1], sys.argv[2]
# Module level: built in the parent before forking (fork), or again in each child (spawn).
client = CDPClient(cdp_api_key="test-key", cdp_endpoint=url, cdp_fallback_endpoints=[],
                   flush_interval=60.0, shutdown_timeout=5.0)

def work(n):
    # No flush: with flush_interval=60 only the exit flush can deliver these.
    for i in range(4):
        client.track(f"{method}-proc-{n}", "mp_event", {"i": i})
    return n

if __name__ == "__main__":
    ctx = mp.get_context(method)
    client.track("mp-parent", "queued_at_fork")
    procs = [ctx.Process(target=work, args=(n,)) for n in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    print("process exit codes", [p.exitcode for p in procs], flush=True)
    pool = ctx.Pool(2)
    assert pool.map_async(work, range(10, 14)).get(timeout=30) == [10, 11, 12, 13]
    pool.close()
    pool.join()
    print("pool done", flush=True)
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_children_deliver_without_flush(
    collector: Collector, method: str, tmp_path: Path
) -> None:
    """multiprocessing Process and Pool children track and just return: a fork child exits with
    os._exit (no atexit), so the exit flush runs from multiprocessing's finalizers; a spawn child
    builds its own client and exits normally. Every event arrives exactly once."""
    script = tmp_path / "mp_app.py"  # spawn children import the main module from its file
    script.write_text(MP_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), collector.url, method], capture_output=True, text=True, timeout=50
    )
    assert proc.returncode == 0, proc.stderr
    assert "process exit codes [0, 0, 0]" in proc.stdout and "pool done" in proc.stdout, proc.stdout
    counts = by_identifier(collector)
    expected = {f"{method}-proc-{n}": 4 for n in [0, 1, 2, 10, 11, 12, 13]}
    expected["mp-parent"] = 1
    assert counts == expected


PRELOAD_SCRIPT = """
import os, sys, threading, time
from cdp_batcher import CDPClient

url, workers, per_thread = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# The "app", preloaded in the master before the workers are forked (gunicorn --preload).
client = CDPClient(cdp_api_key="test-key", cdp_endpoint=url, cdp_fallback_endpoints=[],
                   flush_interval=60.0, shutdown_timeout=5.0)
client.track("master", "booted")          # still queued when the workers fork

def serve(n):
    def handle(t):
        for i in range(per_thread):
            client.track(f"worker-{n}", "request", {"thread": t, "i": i})
    threads = [threading.Thread(target=handle, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    sys.exit(0)                           # as a gunicorn worker ends: atexit runs

pids = []
for n in range(workers):
    pid = os.fork()
    if pid == 0:
        serve(n)
    pids.append(pid)
deadline = time.monotonic() + 30
codes = []
for pid in pids:
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            codes.append(os.waitstatus_to_exitcode(status))
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
        time.sleep(0.01)                  # the master polls its children (a process, not a thread)
client.track("master", "workers_done")
print("worker exit codes", codes, flush=True)
"""


def test_gunicorn_style_preloaded_app(collector: Collector) -> None:
    """A client built in a master that forks 4 workers; each worker tracks from 2 threads and exits
    normally: every worker's events arrive exactly once, and the master's own, queued before the
    fork, arrive once (from the master only)."""
    workers, per_thread = 4, 15
    proc, _ = run_python(PRELOAD_SCRIPT, collector.url, str(workers), str(per_thread), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"worker exit codes {[0] * workers}" in proc.stdout, proc.stdout
    expected = {f"worker-{n}": 2 * per_thread for n in range(workers)}
    expected["master"] = 2
    assert by_identifier(collector) == expected
    keys = [
        (e["body"]["identifier"], e["body"]["eventName"], json.dumps(e["body"]["properties"], sort_keys=True))
        for e in collector.events()
    ]
    assert len(keys) == len(set(keys))  # no event twice


def test_client_shut_down_before_fork_stays_closed_in_child(collector: Collector) -> None:
    """A client shut down before the fork is closed in the child too: calls are dropped, counted."""
    client = CDPClient(cdp_api_key=API_KEY, cdp_endpoint=collector.url, cdp_fallback_endpoints=[])
    client.shutdown(timeout=2)

    def child() -> dict[str, Any]:
        client.track("child", "after_shutdown")
        return {"dropped": dict(client.stats().destinations["opencdp"].dropped)}

    result = in_child(child)
    assert result["exit"] == 0 and result["dropped"] == {"shutdown": 1}, result
    assert collector.count() == 0


# ------------------------------------------------------------------- forks without fork hooks
def _libc_fork() -> int:
    """fork() called from C, as uWSGI does: Python's at-fork hooks (os.register_at_fork) do not
    run. PyDLL keeps the GIL held across the call, as uWSGI's master holds it when it forks."""
    import ctypes

    return int(ctypes.PyDLL(None).fork())


def in_unhooked_child(body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """:func:`in_child` with a fork that runs no Python fork hook."""
    read_end, write_end = os.pipe()
    pid = _libc_fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(int(CHILD_TIMEOUT) + 5)
            os.write(write_end, json.dumps(body()).encode())
            code = 0
        except BaseException as exc:
            os.write(write_end, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        data = _read_pipe(read_end, CHILD_TIMEOUT)
    finally:
        os.close(read_end)
    code = _wait_child(pid, CHILD_TIMEOUT)
    result: dict[str, Any] = json.loads(data) if data else {"error": "no result"}
    result["exit"] = code
    return result


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(params=["fork_guard", "pid_fallback"])
def guard_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """With the MADV_WIPEONFORK guard, and without it (other platforms: the PID is compared at
    the empty-to-non-empty branch instead)."""
    if request.param == "pid_fallback":
        monkeypatch.setattr(_queue_module, "fork_guard", lambda: bytearray(b"\x01"))
    else:
        probe = _concurrency.fork_guard()
        if not _concurrency.fork_guard_works(probe):
            pytest.skip("no MADV_WIPEONFORK on this kernel/platform")
    return str(request.param)


@pytest.mark.parametrize("first_call", ["track", "stats"])
def test_fork_without_hooks_behaves_like_os_fork(
    collector: Collector, make_client: MakeClient, guard_mode: str, first_call: str
) -> None:
    """uWSGI's default: a C fork() that runs no Python fork hook. The child's first call (a
    track, or stats) resets the client once: it starts empty, delivers what it tracks with its
    own thread and connections, logs one INFO line; the parent's queued events are never sent by
    the child."""
    client = make_client(flush_interval=60.0)
    # Without a guard a child's track() into a non-empty copy of the queue is not seen (no
    # empty-to-non-empty branch) until flush: the fallback is tested with an empty queue at fork.
    queued_in_parent = 0 if guard_mode == "pid_fallback" else 5
    for i in range(queued_in_parent):
        client.track("parent", "before_fork", {"i": i})
    lines = _Lines()
    logger = logging.getLogger("cdp_batcher")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(lines)

    def child() -> dict[str, Any]:
        lines.records.clear()
        start = None
        if first_call == "stats":
            start = client.stats().destinations["opencdp"].as_dict()
        for i in range(7):
            client.track("child", "in_child", {"i": i})
        report = client.flush(timeout=10)
        info = [r.getMessage() for r in lines.records if "without Python's fork hooks" in r.getMessage()]
        return {"start": start, "ok": bool(report), "delivered": report.delivered, "info": info}

    try:
        result = in_unhooked_child(child)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    assert result["exit"] == 0, result
    assert result["ok"] and result["delivered"] == 7, result
    if first_call == "stats":
        assert result["start"]["enqueued"] == 0 and result["start"]["queued"] == 0, result
    assert len(result["info"]) == 1 and "forked from" in result["info"][0], result
    assert client.flush(timeout=10)
    # Counter(a=0) equals Counter() only from Python 3.10 on: leave a zero count out.
    expected = Counter({"child": 7, "parent": queued_in_parent})
    assert by_identifier(collector) == +expected


def test_fork_without_hooks_while_a_parent_thread_holds_the_queue_lock(
    collector: Collector, make_client: MakeClient
) -> None:
    """The parent's dispatcher held the queue's lock at the moment of the fork: the child's track()
    reads the fork guard before that lock and never blocks on it."""
    probe = _concurrency.fork_guard()
    if not _concurrency.fork_guard_works(probe):
        pytest.skip("no MADV_WIPEONFORK on this kernel/platform")
    client = make_client(flush_interval=60.0)
    client.track("parent", "queued")
    route = client._routes[0]
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with route.queue.lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(5)

        def child() -> dict[str, Any]:
            client.track("child", "while_lock_held")
            report = client.flush(timeout=5)
            return {"ok": bool(report), "delivered": report.delivered}

        result = in_unhooked_child(child)
    finally:
        release.set()
        holder.join(5)
    assert result["exit"] == 0 and result["ok"] and result["delivered"] == 1, result
    assert client.flush(timeout=10)
    assert by_identifier(collector) == {"parent": 1, "child": 1}


def test_shutdown_in_an_idle_child_forked_without_hooks(
    collector: Collector, make_client: MakeClient
) -> None:
    """uwsgi.atexit in a worker that never tracked: shutdown() resets first, reports success, and
    neither sends nor drops the parent's queued events (it used to drop them as shutdown_timeout)."""
    client = make_client(flush_interval=60.0)
    for i in range(3):
        client.track("parent", "before_fork", {"i": i})

    def child() -> dict[str, Any]:
        report = client.shutdown(timeout=3)
        stats = client.stats().destinations["opencdp"]
        return {"ok": bool(report), "dropped": dict(stats.dropped), "enqueued": stats.enqueued}

    result = in_unhooked_child(child)
    assert result["exit"] == 0, result
    assert result == {"ok": True, "dropped": {}, "enqueued": 0, "exit": 0}
    assert client.flush(timeout=10)
    assert by_identifier(collector) == {"parent": 3}


def test_spooled_client_forked_without_hooks(
    collector: Collector, make_client: MakeClient, tmp_path: Any
) -> None:
    """uWSGI's default with a spool_dir: the parent's records are on disk in its own files when
    a C fork() runs no Python hook. The child's first track() resets the client, spool included
    (its own owner and segment files), so the child delivers only what it tracked and the parent
    delivers its own: each event once."""
    probe = _concurrency.fork_guard()
    if not _concurrency.fork_guard_works(probe):
        pytest.skip("no MADV_WIPEONFORK on this kernel/platform")
    client = make_client(flush_interval=60.0, spool_dir=str(tmp_path / "spool"))
    for i in range(5):
        client.track("parent", "before_fork", {"i": i})

    def child() -> dict[str, Any]:
        for i in range(7):
            client.track("child", "in_child", {"i": i})
        report = client.flush(timeout=10)
        return {"ok": bool(report), "delivered": report.delivered}

    result = in_unhooked_child(child)
    assert result["exit"] == 0 and result["ok"] and result["delivered"] == 7, result
    assert client.flush(timeout=10)
    assert client.stats().destinations["opencdp"].delivered == 5
    assert by_identifier(collector) == Counter({"child": 7, "parent": 5})
