"""OpenCDP senders in use follow the measured request latency (``concurrency_hint``) and, while
nobody waits, the backlog (``senders_for``).

A slow link keeps every sender busy; a fast one (a sink in another process answering at once)
ends up with about two requests in flight, however many ``max_concurrent_requests`` allows.
Events nobody waits for (no flush, no shutdown) get only the senders it takes to send them
within about a flush interval; a flush gets every sender the link can use.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from cdp_batcher import CDPClient
from cdp_batcher._retry import RetryPolicy
from cdp_batcher._senders import CPU_SAMPLE, TIMED_REQUESTS, ConcurrencyGovernor
from cdp_batcher.destinations.opencdp import OpenCdpDestination
from cdp_batcher.testing import Collector

from conftest import API_KEY, MakeClient

pytestmark = pytest.mark.timeout(60)

LATENCY = 0.05


def _track(client: CDPClient, n: int) -> None:
    for i in range(n):
        client.track(f"user-{i % 50}", "adaptive", {"seq": i})


class _InFlight:
    """Wraps the destination's transport and its send: requests in flight when each one starts
    (a group's requests count one by one), and senders at work when each run starts."""

    def __init__(self, client: CDPClient) -> None:
        dest = client._opencdp
        transport = dest.http
        self._hint = dest.concurrency_hint
        self._real = transport.request
        self._real_group = transport.request_group
        self._real_send = dest.send
        self._lock = threading.Lock()
        self._ended = threading.Condition(self._lock)
        self._now = 0
        self._senders = 0
        self.finished = 0
        self.at_start: list[int] = []  # requests in flight as each request starts
        self.senders: list[int] = []  # senders at work as each run starts
        self.sender_hints: list[int] = []  # the senders' hint when each run started
        transport.request = self._request  # type: ignore[method-assign]
        transport.request_group = self._request_group  # type: ignore[method-assign]
        dest.send = self._send  # type: ignore[method-assign]

    def _started(self, n: int) -> None:
        with self._lock:
            for _ in range(n):
                self._now += 1
                self.at_start.append(self._now)

    def _ended_n(self, n: int) -> None:
        with self._lock:
            self._now -= n
            self.finished += n
            self._ended.notify_all()

    def _request(self, *args: Any, **kwargs: Any) -> Any:
        self._started(1)
        try:
            return self._real(*args, **kwargs)
        finally:
            self._ended_n(1)

    def _request_group(self, method: str, requests_: Any, **kwargs: Any) -> Any:
        self._started(len(requests_))
        try:
            return self._real_group(method, requests_, **kwargs)
        finally:
            self._ended_n(len(requests_))

    def _send(self, items: Any, ctl: Any) -> None:
        hint = self._hint()
        with self._lock:
            self._senders += 1
            self.senders.append(self._senders)
            self.sender_hints.append(hint)
        try:
            self._real_send(items, ctl)
        finally:
            with self._lock:
                self._senders -= 1

    def wait_finished(self, n: int, timeout: float) -> bool:
        with self._ended:
            return self._ended.wait_for(lambda: self.finished >= n, timeout)


def test_slow_link_keeps_every_sender_busy(collector: Collector, make_client: MakeClient) -> None:
    collector.set_latency(LATENCY)
    client = make_client(max_concurrent_requests=10)
    started = time.monotonic()
    _track(client, 20)
    report = client.flush(timeout=20)
    elapsed = time.monotonic() - started
    assert report, report
    assert collector.count() == 20
    # One sender would take 20 x 50 ms = 1 s; ten take about 2 x 50 ms.
    assert elapsed < 0.5, elapsed
    arrivals = sorted(r.time for r in collector.requests)
    together = sum(1 for t in arrivals if t < arrivals[0] + LATENCY * 0.8)
    assert together >= 5, arrivals
    assert client._opencdp.concurrency_hint() == 10


def test_link_turning_slow_gets_every_sender_back(collector: Collector, make_client: MakeClient) -> None:
    client = make_client(max_concurrent_requests=10)
    _track(client, 300)
    assert client.flush(timeout=20)
    assert client._opencdp.concurrency_hint() < 10
    collector.set_latency(LATENCY)
    _track(client, 20)  # cut for the few senders of the fast link; timed slow
    assert client.flush(timeout=20)
    assert client._opencdp.concurrency_hint() == 10
    started = time.monotonic()
    _track(client, 20)
    assert client.flush(timeout=20)
    elapsed = time.monotonic() - started
    assert collector.count() == 340
    assert elapsed < 0.5, elapsed  # one sender: 1 s


def test_fast_link_uses_few_senders(fast_sink: str) -> None:
    client = CDPClient(
        cdp_api_key=API_KEY, cdp_endpoint=fast_sink, cdp_fallback_endpoints=[], max_concurrent_requests=10
    )
    try:
        counted = _InFlight(client)
        _track(client, 500)
        report = client.flush(timeout=30)
        assert report, report
        assert len(counted.at_start) == 500
        hint = client._opencdp.concurrency_hint()
    finally:
        client.shutdown(timeout=5)
    # Never more requests in flight than max_concurrent_requests, groups included.
    assert max(counted.at_start) <= 10, counted.at_start
    # The first runs go out on every sender (nothing timed yet); from then on the senders at
    # work follow the hint, which a fast link keeps low: about 2 on a quiet machine (the hint
    # divides the fastest wall time by the CPU time, so a machine whose CPUs are busy with
    # other work reads as a slower link and gets more senders; the hint's arithmetic itself is
    # tested with injected timings below). A unit already sending when the hint drops finishes,
    # so a run may start with one more sender at work than the hint allows.
    half = len(counted.senders) // 2
    later = counted.senders[half:]
    hints = counted.sender_hints[half:]
    assert later, counted.senders
    excess = [n - h for n, h in zip(later, hints)]
    assert sum(excess) / len(excess) <= 1.0, list(zip(later, hints))
    # Not all ten throughout (a momentary 10 is allowed: under load, as in CI's two matrix cells
    # at once, the hint rightly reaches 10 for a while; ci9 saw it in both cells).
    assert sum(later) / len(later) < 10, later
    assert hint < 10
    assert sum(hints) / len(hints) < 10, hints


def test_events_nobody_waits_for_get_the_senders_their_backlog_needs(
    collector: Collector, make_client: MakeClient
) -> None:
    """A link of 10 ms round trips makes many senders worth running (the hint), yet 100 events
    nobody waits for (four full batches, no flush) need one sender: sent within a flush interval
    one after the other. The same backlog with a flush waiting goes out on many."""
    collector.set_latency(0.01)
    client = make_client(max_concurrent_requests=10, max_batch_size=25, flush_interval=10.0)
    _track(client, 20)
    assert client.flush(timeout=20)  # times the link: 10 ms a request
    assert client._opencdp.concurrency_hint() >= 3
    assert client._opencdp.senders_for(100, 10.0) == 1
    counted = _InFlight(client)
    _track(client, 100)  # four full batches: drained at once, nobody waits
    assert counted.wait_finished(100, timeout=30)
    assert max(counted.senders) == 1, counted.senders
    assert collector.count() == 120
    started = len(counted.senders)
    _track(client, 100)
    assert client.flush(timeout=20)  # somebody waits: every sender the link can use
    assert collector.count() == 220
    assert max(counted.senders[started:]) >= 3, counted.senders[started:]
    assert max(counted.at_start) <= 10, counted.at_start


def test_demand_follows_the_backlog() -> None:
    """senders_for: the senders that send the backlog within the time given at the recent mean
    request time, 1 to concurrency (all of them before any request was timed)."""
    governor = ConcurrencyGovernor(10)
    assert governor.demand(100, 0.5) == 10  # nothing timed
    for _ in range(TIMED_REQUESTS):
        governor.record(1e-3, 100e-6)  # 1 ms a request
    assert governor.demand(0, 0.5) == 1
    assert governor.demand(100, 0.5) == 1  # 0.1 s of requests
    assert governor.demand(1_000, 0.5) == 2  # 1 s: two senders
    assert governor.demand(100_000, 0.5) == 10  # never more than concurrency
    for _ in range(TIMED_REQUESTS // 2):
        governor.record(0.051, 100e-6)  # half the recent requests now take 51 ms: mean 26 ms
    assert governor.demand(100, 0.5) == 6


def test_hint_follows_the_timings() -> None:
    dest = OpenCdpDestination(
        api_key="k", endpoints=["http://127.0.0.1:9"], timeout=1.0, concurrency=10, policy=RetryPolicy()
    )
    try:
        assert dest.concurrency_hint() == 10  # nothing timed: the network is unknown
        for wall in (2e-3, 120e-6) * 5:  # answered at once, some requests slowed by the GIL
            dest.governor.record(wall, 100e-6)
        assert dest.concurrency_hint() == 1
        for _ in range(TIMED_REQUESTS - 1):
            dest.governor.record(0.05, 100e-6)
        assert dest.concurrency_hint() == 1  # one fast request among the last few: still fast
        dest.governor.record(0.05, 100e-6)  # a 50 ms round trip: every sender
        assert dest.concurrency_hint() == 10
        for _ in range(TIMED_REQUESTS):
            dest.governor.record(0.7e-3, 100e-6)  # 0.7 ms: five senders overlap the waits
        assert dest.concurrency_hint() == 5
    finally:
        dest.close()


def test_cpu_is_read_for_one_request_in_cpu_sample() -> None:
    """The thread's CPU clock (a system call) is read for the first request and then one in
    CPU_SAMPLE; every request's wall time is recorded, so the hint follows each of them."""
    governor = ConcurrencyGovernor(10)
    read = []
    for _ in range(4 * CPU_SAMPLE):
        cpu = governor.cpu_start()
        read.append(cpu is not None)
        governor.record_since(0.05, cpu)  # a 50 ms round trip
    assert [i for i, was in enumerate(read) if was] == list(range(0, 4 * CPU_SAMPLE, CPU_SAMPLE))
    assert governor.hint() == 10
    for _ in range(TIMED_REQUESTS):
        governor.record_since(1e-6, governor.cpu_start())  # answered at once: one sender
    assert governor.hint() == 1
