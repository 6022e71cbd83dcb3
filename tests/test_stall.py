"""No silent blackout: events queued while no dispatcher runs are reported once, from the callers.

The dispatcher is held back deterministically (its thread start is replaced by a no-op, as when
threads never get to run) and the route's clock is moved forward by the test: no waiting.
"""

from __future__ import annotations

import re
import time

import pytest

from cdp_batcher import _route
from cdp_batcher.testing import Collector, RecordingLogger

from conftest import MakeClient

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The route's clock: real time plus an offset the test sets."""
    offset = [0.0]
    monkeypatch.setattr(_route, "_monotonic", lambda: time.monotonic() + offset[0])
    return offset


def test_stall_is_logged_once_and_counted(
    collector: Collector, make_client: MakeClient, clock: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog that keeps growing with no dispatcher run for 5 s: one ERROR naming the causes,
    stats().stalls == 1, however much more is tracked; once the dispatcher runs the events go out
    and a later stall is counted again."""
    log = RecordingLogger()
    client = make_client(flush_interval=0.05, max_batch_size=10, logger=log)
    route = client._routes[0]
    monkeypatch.setattr(route, "_ensure_thread", lambda: True)  # "started", never runs
    for i in range(25):
        client.track("u", "held", {"i": i})
    assert log.at("error") == [] and client.stats().destinations["opencdp"].stalls == 0
    clock[0] = 4.0  # under 5 s: not yet
    for i in range(10):
        client.track("u", "held", {"i": 25 + i})
    assert log.at("error") == []
    clock[0] = 6.0
    for i in range(100):  # crosses several batch marks: checked each time, logged once
        client.track("u", "held", {"i": 35 + i})
    errors = log.at("error")
    assert len(errors) == 1, errors
    found = re.search(r"opencdp: (\d+) event\(s\) queued", errors[0])
    assert found and 35 < int(found.group(1)) <= 45, errors[0]  # at the first batch mark after 5 s
    for phrase in ("no delivery attempt", "forked", "monkey-patching", "event loop", "enable-threads"):
        assert phrase in errors[0], (phrase, errors[0])
    stats = client.stats().destinations["opencdp"]
    assert stats.stalls == 1 and stats.queued == 135
    monkeypatch.undo()  # the dispatcher may run again (the clock is real again too)
    assert client.flush(timeout=10)
    assert collector.count() == 135
    assert len(log.at("error")) == 1 and client.stats().destinations["opencdp"].stalls == 1


def test_stall_seen_by_stats_with_little_traffic(
    make_client: MakeClient, clock: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three events and no batch mark ever reached: stats() (a metrics scrape) finds the stall."""
    log = RecordingLogger()
    client = make_client(flush_interval=0.05, logger=log)
    monkeypatch.setattr(client._routes[0], "_ensure_thread", lambda: True)
    for i in range(3):
        client.track("u", "quiet", {"i": i})
    clock[0] = 6.0
    assert client.stats().destinations["opencdp"].stalls == 1
    assert len(log.at("error")) == 1 and "3 event(s) queued" in log.at("error")[0]


def test_threshold_follows_flush_interval(
    make_client: MakeClient, clock: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With flush_interval=2 the threshold is 10 intervals (20 s), not 5 s."""
    log = RecordingLogger()
    client = make_client(flush_interval=2.0, logger=log)
    monkeypatch.setattr(client._routes[0], "_ensure_thread", lambda: True)
    client.track("u", "slow_interval")
    clock[0] = 15.0
    assert client.stats().destinations["opencdp"].stalls == 0
    clock[0] = 21.0
    assert client.stats().destinations["opencdp"].stalls == 1


def test_no_stall_while_requests_are_in_flight(
    collector: Collector, make_client: MakeClient, clock: list[float]
) -> None:
    """A slow gateway is not a stall: with a request in flight nothing is reported."""
    log = RecordingLogger()
    collector.set_latency(0.5)
    client = make_client(flush_interval=0.05, max_concurrent_requests=1, logger=log)
    for i in range(5):
        client.track("u", "slow", {"i": i})
    assert not client.flush(timeout=0.2)  # the first request is in flight
    clock[0] = 30.0
    assert client.stats().destinations["opencdp"].stalls == 0
    clock[0] = 0.0
    assert client.flush(timeout=10)
    assert log.at("error") == []


def test_a_healthy_client_never_stalls(collector: Collector, make_client: MakeClient) -> None:
    """Delivery as usual: stalls stays 0 and last_delivery_age is small once something arrived."""
    client = make_client()
    assert client.stats().destinations["opencdp"].last_delivery_age is None
    for i in range(50):
        client.track("u", "fine", {"i": i})
    assert client.flush(timeout=10)
    stats = client.stats().destinations["opencdp"]
    assert stats.stalls == 0 and stats.queued_bytes == 0
    assert stats.last_delivery_age is not None and 0 <= stats.last_delivery_age < 10
