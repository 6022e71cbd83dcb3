"""Lifecycle: delivery reports, one deadline, exit, garbage collection, signals, serverless helpers.

Every situation runs for real: a local collector over HTTP on 127.0.0.1, and a fresh interpreter
(subprocess) wherever interpreter exit or signals are involved.
"""

from __future__ import annotations

import gc
import logging
import signal
import subprocess
import sys
import threading
import time
import types
import weakref
from typing import Any

import pytest

import cdp_batcher._route as route_module
import cdp_batcher._senders as senders_module
from cdp_batcher import CDPClient, DeliveryReport
from cdp_batcher.testing import Collector

from conftest import (
    API_KEY,
    FAST,
    MakeClient,
    assert_accounted,
    run_python,
    sockets_connected_to,
    unused_port,
)

pytestmark = pytest.mark.timeout(60)

#: Slack allowed past a deadline (thread wake-ups and a loaded 2-core CI machine).
SLACK = 0.4


def opencdp(report: DeliveryReport) -> Any:
    return report.destinations["opencdp"]


# ------------------------------------------------------------------------------ the report
def test_flush_report_counts_deliveries_and_is_truthy(collector: Collector, make_client: MakeClient) -> None:
    """flush() returns a frozen report: delivered per destination, nothing pending, deadline met."""
    client = make_client(flush_interval=60.0)
    for i in range(25):
        client.track("u1", "e", {"i": i})
    report = client.flush(timeout=10)
    assert report and report.deadline_met
    assert opencdp(report).delivered == 25 and opencdp(report).pending == 0
    assert report.delivered == 25 and report.failed == 0 and report.dropped == 0
    assert collector.count() == 25
    with pytest.raises(AttributeError):
        report.deadline_met = False  # type: ignore[misc]


def test_flush_report_splits_failures_by_reason(collector: Collector, make_client: MakeClient) -> None:
    """A rejected request (400) is failed with its reason; the report is falsy and says why."""
    client = make_client(flush_interval=60.0, max_concurrent_requests=1)
    collector.fail_next(2, 400, path="/v1/persons/track")
    for i in range(5):
        client.track("u1", "e", {"i": i})
    report = client.flush(timeout=10)
    assert not report and report.deadline_met
    assert dict(opencdp(report).failed) == {"http_400": 2}
    assert opencdp(report).delivered == 3 and opencdp(report).pending == 0
    assert_accounted(client.stats())


def test_flush_deadline_bounds_the_wait_not_the_retries(
    collector: Collector, make_client: MakeClient
) -> None:
    """With the gateway down, flush(0.5) returns at its deadline with the events still pending; the
    retries go on in the background and deliver once the gateway is back."""
    client = make_client(max_retries=50, retry_max_time=60.0, flush_interval=60.0)
    collector.go_down()
    for i in range(3):
        client.track("u1", "e", {"i": i})
    start = time.monotonic()
    report = client.flush(timeout=0.5)
    elapsed = time.monotonic() - start
    assert 0.45 <= elapsed < 0.5 + SLACK, elapsed
    assert not report.deadline_met and opencdp(report).pending == 3 and not report
    collector.come_back()
    assert collector.wait_for(3, timeout=15)
    assert client.flush(timeout=10)
    stats = client.stats().destinations["opencdp"]
    assert stats.delivered == 3 and stats.retried >= 1
    assert_accounted(client.stats())


def test_shutdown_with_every_host_down_returns_by_its_one_deadline(make_client: MakeClient) -> None:
    """Primary and fallback refuse connections and retries could last a minute: shutdown(1.0)
    returns within its deadline, resolves every event (failed or dropped, with reasons) and stops
    every thread (the leak check would fail otherwise)."""
    hosts = [f"http://127.0.0.1:{unused_port()}" for _ in range(2)]
    client = make_client(
        cdp_endpoint=hosts[0], cdp_fallback_endpoints=hosts[1:], max_retries=50, retry_max_time=60.0
    )
    for i in range(300):
        client.track("u1", "e", {"i": i})
    start = time.monotonic()
    report = client.shutdown(timeout=1.0)
    elapsed = time.monotonic() - start
    assert elapsed < 1.0 + SLACK, elapsed
    dest = opencdp(report)
    assert dest.pending == 0, report
    assert dest.delivered == 0 and sum(dest.failed.values()) + sum(dest.dropped.values()) == 300
    assert set(dest.failed) <= {"connection_error", "deadline"}, dest.failed
    assert set(dest.dropped) <= {"shutdown_timeout"}, dest.dropped
    stats = client.stats()
    assert stats.destinations["opencdp"].queued == 0
    assert_accounted(stats)


def test_shutdown_cuts_a_slow_request_to_the_deadline(collector: Collector, make_client: MakeClient) -> None:
    """A gateway slower than the deadline (timeout_ms 30 s): a request sent during shutdown is cut
    at the deadline and its event failed; one already in flight before shutdown() (with the full
    30 s timeout) cannot be cut, so the report says it is pending, and shutdown still returns on time."""
    collector.set_latency(10)
    client = make_client(timeout_ms=30_000, flush_interval=60.0)
    client.track("u1", "e")
    start = time.monotonic()
    report = client.shutdown(timeout=0.8)
    assert time.monotonic() - start < 0.8 + SLACK
    assert opencdp(report).pending == 0 and set(opencdp(report).failed) <= {"timeout", "deadline"}
    assert not report.deadline_met or report.failed == 1
    assert_accounted(client.stats())

    client = make_client(timeout_ms=30_000)
    client.track("u1", "e")
    assert not client.flush(timeout=0.2)  # now in flight, with a 30 s timeout
    start = time.monotonic()
    report = client.shutdown(timeout=0.5)
    assert time.monotonic() - start < 0.5 + SLACK
    assert opencdp(report).pending == 1 and not report.deadline_met and not report
    assert_accounted(client.stats())


def test_shutdown_leaves_no_thread_or_socket_and_the_client_is_collected(collector: Collector) -> None:
    """After shutdown() the client's threads have ended and its sockets are closed; once the last
    reference goes the client is garbage-collected (nothing else, atexit included, holds it)."""
    client = CDPClient(cdp_api_key=API_KEY, cdp_endpoint=collector.url, **FAST)
    client.track("u1", "e")
    assert client.flush(timeout=10)
    assert sockets_connected_to(collector.port) >= 1  # a pooled keep-alive connection
    threads = [t for t in threading.enumerate() if t.name.startswith("cdp_batcher")]
    assert threads
    assert client.shutdown(timeout=5)
    assert sockets_connected_to(collector.port) == 0
    for thread in threads:
        thread.join(2)
        assert not thread.is_alive(), thread.name
    ref = weakref.ref(client)
    del client
    gc.collect()
    assert ref() is None


def test_shutdown_unregisters_the_exit_hook(collector: Collector) -> None:
    """After shutdown() interpreter exit does not call the client again; without it, exit does."""
    code = f"""
        import sys
        from cdp_batcher import CDPClient
        client = CDPClient(cdp_api_key={API_KEY!r}, cdp_endpoint={collector.url!r}, cdp_fallback_endpoints=[])
        if sys.argv[1] == "shutdown":
            client.shutdown(5)
        client.shutdown = lambda *args: print("exit hook ran", flush=True)
        """
    proc, _ = run_python(code, "shutdown")
    assert proc.returncode == 0 and "exit hook ran" not in proc.stdout, proc.stdout + proc.stderr
    proc, _ = run_python(code, "keep")
    assert proc.returncode == 0 and "exit hook ran" in proc.stdout, proc.stdout + proc.stderr


def test_calls_after_shutdown_are_dropped_counted_and_warned_once(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """After shutdown() every call is counted as dropped (reason shutdown), warned about once,
    never raised and never sent."""
    client = make_client()
    client.shutdown(timeout=2)
    with caplog.at_level(logging.WARNING, logger="cdp_batcher"):
        for i in range(3):
            client.track("u1", "late", {"i": i})
        client.identify("u1", {"plan": "pro"})
        client.register_device("u1", device_id="d1", platform="ios", apn_token="tok")
    stats = client.stats().destinations["opencdp"]
    assert dict(stats.dropped) == {"shutdown": 5} and stats.delivered == 0
    assert_accounted(client.stats())
    warnings = [r for r in caplog.records if "after shutdown" in r.getMessage()]
    assert len(warnings) == 1
    assert client.shutdown() is client.shutdown()  # idempotent: the first report


def test_client_holds_no_reference_cycle_through_itself() -> None:
    """A dropped client (single and dual-write) is freed by reference counting alone, at once:
    nothing it owns points back at it, so the GC finalizer runs without waiting for a collection."""
    code = """
    import gc, sys, weakref
    from cdp_batcher import CDPClient, CustomerIoConfig
    gc.disable()
    for cio in (None, CustomerIoConfig(site_id="s", api_key="k", url="http://127.0.0.1:9")):
        client = CDPClient(cdp_api_key="k", cdp_endpoint="http://127.0.0.1:9", cdp_fallback_endpoints=[],
                           send_to_customer_io=cio is not None, customer_io=cio)
        ref = weakref.ref(client)
        del client
        print("freed" if ref() is None else "kept", flush=True)
    """
    proc, _ = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["freed", "freed"], proc.stdout + proc.stderr


def test_abandoned_client_delivers_then_its_threads_end(collector: Collector) -> None:
    """A client dropped without shutdown() still delivers what it queued, then every one of its
    threads ends (the leak check fails otherwise)."""
    client = CDPClient(cdp_api_key=API_KEY, cdp_endpoint=collector.url, **{**FAST, "flush_interval": 60.0})
    for i in range(20):
        client.track("u1", "abandoned", {"i": i})
    ref = weakref.ref(client)
    del client
    gc.collect()
    assert ref() is None
    assert collector.wait_for(20, timeout=10)


def test_client_created_inside_a_thread(collector: Collector) -> None:
    """A client built in a short-lived thread keeps working after that thread ended."""
    box: list[CDPClient] = []
    maker = threading.Thread(
        target=lambda: box.append(CDPClient(cdp_api_key=API_KEY, cdp_endpoint=collector.url, **FAST))
    )
    maker.start()
    maker.join(10)
    client = box[0]
    try:
        client.track("u1", "from_main")
        worker = threading.Thread(target=client.track, args=("u2", "from_thread"))
        worker.start()
        worker.join(10)
        assert client.flush(timeout=10)
        assert sorted(e["body"]["eventName"] for e in collector.events()) == ["from_main", "from_thread"]
    finally:
        client.shutdown(timeout=2)


def test_no_thread_possible_sends_inline(
    collector: Collector, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When no thread can start (as at interpreter shutdown), flush and shutdown send from the
    calling thread."""

    class NoStart(threading.Thread):
        def start(self) -> None:
            raise RuntimeError("can't create new thread at interpreter shutdown")

    before = set(threading.enumerate())
    fake = types.SimpleNamespace(**{**vars(threading), "Thread": NoStart})
    monkeypatch.setattr(route_module, "threading", fake)
    monkeypatch.setattr(senders_module, "threading", fake)
    client = make_client(flush_interval=60.0)
    for i in range(30):
        client.track("u1", "inline", {"i": i})
    assert client.flush(timeout=10)
    client.track("u1", "inline", {"i": 30})
    assert client.shutdown(timeout=5)
    assert collector.count() == 31
    assert not [t for t in threading.enumerate() if t.name.startswith("cdp_batcher") and t not in before]


# ----------------------------------------------------------------------- serverless helpers
def test_flushing_context_manager_flushes_at_the_end_of_each_invocation(
    collector: Collector, make_client: MakeClient
) -> None:
    """``with client.flushing(timeout=...)``: everything tracked inside is delivered when the
    block ends, even when it raises (the pattern for serverless handlers)."""
    client = make_client(flush_interval=60.0)
    with client.flushing(timeout=10):
        client.track("u1", "invocation", {"n": 1})
    assert collector.count() == 1
    with pytest.raises(ValueError), client.flushing(timeout=10):
        client.track("u1", "invocation", {"n": 2})
        raise ValueError("handler failed")
    assert collector.count() == 2


def test_flush_after_decorator(collector: Collector, make_client: MakeClient) -> None:
    """``@client.flush_after(timeout=...)`` flushes after every call of the handler, returning
    its value; an async handler is awaited and flushed the same way."""
    import asyncio

    client = make_client(flush_interval=60.0)

    @client.flush_after(timeout=10)
    def handler(event: dict[str, Any], context: object) -> str:
        client.track(event["user"], "invoked")
        return "ok"

    @client.flush_after(timeout=10)
    async def ahandler(user: str) -> int:
        client.track(user, "invoked_async")
        return 7

    assert handler.__name__ == "handler"
    assert handler({"user": "u1"}, None) == "ok"
    assert collector.count() == 1
    assert asyncio.run(ahandler("u2")) == 7
    assert collector.count() == 2


# ------------------------------------------------------------------------- real interpreters
def test_client_created_at_import_time_delivers_at_exit(collector: Collector, tmp_path: Any) -> None:
    """A module that builds the client when imported; the script tracks and just ends."""
    (tmp_path / "analytics.py").write_text(
        "from cdp_batcher import CDPClient\n"
        f"client = CDPClient(cdp_api_key={API_KEY!r}, cdp_endpoint={collector.url!r},\n"
        "                   cdp_fallback_endpoints=[], flush_interval=60.0)\n"
    )
    proc, _ = run_python(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from analytics import client
        for i in range(10):
            client.track("import-user", "e", {{"i": i}})
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert collector.count() == 10


def test_event_tracked_by_a_later_atexit_handler_is_delivered_inline(collector: Collector) -> None:
    """An atexit handler registered before the client runs after the client's exit flush: what it
    tracks is sent from its own thread within the exit deadline; after the deadline it is
    dropped with reason ``shutdown`` (never lost silently, never raised, never a hang)."""
    proc, _ = run_python(
        f"""
        import atexit, time
        from cdp_batcher import CDPClient

        def last_words():
            client.track("exit-user", "process_exiting")
            client.identify("exit-user", {{"state": "gone"}})
            s = client.stats().destinations["opencdp"]
            print("delivered", s.delivered, "dropped", dict(s.dropped), "queued", s.queued, flush=True)

        atexit.register(last_words)   # registered first, so it runs after the client's hook
        client = CDPClient(cdp_api_key={API_KEY!r}, cdp_endpoint={collector.url!r},
                           cdp_fallback_endpoints=[], shutdown_timeout=3.0)
        client.track("exit-user", "main_done")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "delivered 3 dropped {} queued 0" in proc.stdout, (proc.stdout, proc.stderr)
    names = [e["call"] + ":" + e["body"].get("eventName", "") for e in collector.events()]
    assert sorted(names) == ["identify:", "track:main_done", "track:process_exiting"]


def test_event_tracked_after_the_exit_deadline_is_dropped_as_shutdown(collector: Collector) -> None:
    """The exit window is the exit flush's deadline: past it, a late call is counted as dropped."""
    proc, _ = run_python(
        f"""
        import atexit, time
        from cdp_batcher import CDPClient

        def last_words():
            time.sleep(0.6)   # past the 0.3 s exit deadline
            client.track("exit-user", "too_late")
            s = client.stats().destinations["opencdp"]
            print("delivered", s.delivered, "dropped", dict(s.dropped), flush=True)

        atexit.register(last_words)
        client = CDPClient(cdp_api_key={API_KEY!r}, cdp_endpoint={collector.url!r},
                           cdp_fallback_endpoints=[], shutdown_timeout=0.3)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "delivered 0 dropped {'shutdown': 1}" in proc.stdout, (proc.stdout, proc.stderr)
    assert collector.count() == 0


def test_library_installs_no_signal_handlers(collector: Collector) -> None:
    """Importing, building, using and shutting down a client leaves every signal handler as it was."""
    proc, _ = run_python(
        f"""
        import signal
        def handlers():
            return {{s: signal.getsignal(s) for s in signal.valid_signals()
                    if s not in (signal.SIGKILL, signal.SIGSTOP)}}
        before = handlers()
        from cdp_batcher import CDPClient
        import cdp_batcher.testing
        client = CDPClient(cdp_api_key={API_KEY!r}, cdp_endpoint={collector.url!r}, cdp_fallback_endpoints=[])
        client.track("u", "e")
        assert client.flush(10)
        assert handlers() == before
        client.shutdown(5)
        assert handlers() == before, {{s: h for s, h in handlers().items() if before[s] != h}}
        print("unchanged")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "unchanged" in proc.stdout


SIGTERM_SERVICE = """
import signal, sys, time
from cdp_batcher import CDPClient

url, timeout, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3]
client = CDPClient(cdp_api_key="test-key", cdp_endpoint=url, cdp_fallback_endpoints=[],
                   flush_interval=0.05, max_queue_size=500, timeout_ms=30000,
                   max_retries=50, retry_max_time=60.0)

def on_sigterm(signum, frame):
    start = time.monotonic()
    report = client.shutdown(timeout=timeout)
    print(f"shutdown took {time.monotonic() - start:.3f} ok={bool(report)}", flush=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, on_sigterm)
print("ready", flush=True)
i = 0
while True:
    client.track("svc", "tick", {"i": i})
    i += 1
    if mode == "idle":
        time.sleep(0.01)
"""


def _run_service(url: str, timeout: float, mode: str) -> tuple[str, float]:
    """Start the service, SIGTERM it once it runs; (its output, seconds from signal to exit)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_SERVICE, url, str(timeout), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        ready = threading.Event()
        ready.wait(0.3)  # let it run: a full queue, requests in flight
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=timeout + 10)
        return out + err, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_sigterm_handler_shutdown_is_bounded_with_a_slow_gateway(collector: Collector) -> None:
    """A service's SIGTERM handler calls shutdown(1.0) while the gateway takes 20 s per request:
    the process exits about one second after the signal."""
    collector.set_latency(20)
    out, elapsed = _run_service(collector.url, 1.0, "idle")
    assert "shutdown took" in out, out
    assert elapsed < 1.0 + 1.5, (elapsed, out)


@pytest.mark.slow  # make test runs it; the matrix cells skip it (CI time)
def test_sigterm_while_tracking_in_a_tight_loop_never_hangs(collector: Collector) -> None:
    """The signal lands anywhere, including inside track() while it holds the queue's lock: the
    handler's shutdown() must still return within its timeout (repeated to catch the race)."""
    for _ in range(6):
        out, elapsed = _run_service(collector.url, 1.0, "busy")
        assert elapsed < 1.0 + 2.0, (elapsed, out)
        assert "Traceback" not in out, out


REENTRY_SCRIPT = """
import collections, signal, sys, time
from cdp_batcher import CDPClient

url, where = sys.argv[1], sys.argv[2]
client = CDPClient(cdp_api_key="test-key", cdp_endpoint=url, cdp_fallback_endpoints=[],
                   flush_interval=60.0, shutdown_timeout=2.0)
for i in range(5):
    client.track("reentry", "before", {"i": i})

def on_signal(signum, frame):
    start = time.monotonic()
    report = client.shutdown(timeout=2.0)
    print(f"handler shutdown returned in {time.monotonic() - start:.3f}", flush=True)
    sys.exit(0)

signal.signal(signal.SIGUSR1, on_signal)

class SignalOnAppend(collections.deque):
    # The signal arrives while put() holds the queue lock (deterministically).
    def append(self, item):
        super().append(item)
        signal.raise_signal(signal.SIGUSR1)

if where == "put":
    queue = client._routes[0].queue
    queue._items = SignalOnAppend(queue._items)
    client.track("reentry", "interrupted")
elif where == "shutdown":
    import threading
    threading.Timer(0.3, signal.raise_signal, (signal.SIGUSR1,)).start()  # delivered to main
    client.shutdown(timeout=3.0)
print("not reached", flush=True)
"""


@pytest.mark.parametrize("where", ["put", "shutdown"])
def test_signal_handler_calling_shutdown_inside_the_library_never_deadlocks(
    collector: Collector, where: str
) -> None:
    """A handler interrupting the main thread inside the library (put() holding the queue lock, or
    a shutdown() in progress) calls shutdown(): it returns at once instead of deadlocking, the
    events are still delivered (exit waits for the deferred shutdown), and the process exits."""
    if where == "shutdown":
        collector.set_latency(0.5)
    proc, _ = run_python(REENTRY_SCRIPT, collector.url, where, timeout=20)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "handler shutdown returned" in proc.stdout and "not reached" not in proc.stdout
    assert collector.count() == (6 if where == "put" else 5)
