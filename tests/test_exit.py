"""Interpreter exit, for real, in a subprocess: pending events are flushed; a dead gateway never hangs."""

from __future__ import annotations

import pytest

from cdp_batcher.testing import Collector

from conftest import API_KEY, run_python, unused_port

pytestmark = pytest.mark.timeout(60)


def baseline() -> float:
    """How long starting Python, importing the package and exiting takes right now (load varies)."""
    _, elapsed = run_python("from cdp_batcher import CDPClient; CDPClient(cdp_api_key='k', send=False)")
    return elapsed


def test_exit_flushes_pending_events(collector: Collector) -> None:
    """A script that tracks and simply ends: the atexit hook delivers every pending event."""
    proc, _ = run_python(
        f"""
        from cdp_batcher import CDPClient
        client = CDPClient(cdp_api_key={API_KEY!r}, cdp_endpoint={collector.url!r},
                           cdp_fallback_endpoints=[], flush_interval=60.0, max_batch_size=1000)
        for i in range(50):
            client.track("exit-user", "tracked_before_exit", {{"i": i}})
        assert client.stats().destinations["opencdp"].queued == 50
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert collector.count() == 50
    assert sorted(e["body"]["properties"]["i"] for e in collector.events()) == list(range(50))


def test_exit_with_every_host_down_is_bounded_by_shutdown_timeout() -> None:
    """Every host refuses connections and retries could last a minute: exit still takes ~shutdown_timeout."""
    hosts = [f"http://127.0.0.1:{unused_port()}", f"http://127.0.0.1:{unused_port()}"]
    proc, elapsed = run_python(
        f"""
        import time
        from cdp_batcher import CDPClient
        client = CDPClient(cdp_api_key="k", cdp_endpoint={hosts[0]!r}, cdp_fallback_endpoints={hosts[1:]!r},
                           shutdown_timeout=1.0, retry_max_time=60.0, max_retries=50)
        for i in range(200):
            client.track("u", "e", {{"i": i}})
        print("tracked", flush=True)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "tracked" in proc.stdout
    # Interpreter start-up plus the 1 s deadline (+ margin); far below the 60 s retry budget.
    assert elapsed < baseline() + 1.0 + 1.5, elapsed


def test_exit_with_slow_gateway_is_bounded(collector: Collector) -> None:
    """A gateway slower than the deadline: requests are cut to the deadline, exit stays bounded."""
    collector.set_latency(20)
    proc, elapsed = run_python(
        f"""
        from cdp_batcher import CDPClient
        client = CDPClient(cdp_api_key={API_KEY!r}, cdp_endpoint={collector.url!r}, cdp_fallback_endpoints=[],
                           shutdown_timeout=1.0, timeout_ms=30000)
        client.track("u", "e")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert elapsed < baseline() + 1.0 + 1.5, elapsed
