"""Delivery against a real HTTP server on 127.0.0.1: triggers, flush, failover, retries, limits."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from cdp_batcher import CDPClient, DeliveryError, DestinationStats, FailedEvent
from cdp_batcher.testing import Collector

from conftest import API_KEY, MakeClient, RecordingControl

pytestmark = pytest.mark.timeout(60)


def assert_invariant(stats: DestinationStats) -> None:
    total = (
        stats.delivered
        + sum(stats.failed.values())
        + sum(stats.dropped.values())
        + stats.queued
        + stats.in_flight
    )
    assert stats.enqueued == total, stats


def test_batch_size_triggers_a_flush(collector: Collector, make_client: MakeClient) -> None:
    """max_batch_size waiting events are sent without flush() and long before flush_interval."""
    client = make_client(max_batch_size=10, flush_interval=60.0)
    for i in range(9):
        client.track("u", "e", {"i": i})
    assert not collector.wait_for(1, timeout=0.3)  # 9 < batch size, interval far away
    client.track("u", "e", {"i": 9})
    assert collector.wait_for(10, timeout=5)


def test_flush_interval_triggers_a_flush(collector: Collector, make_client: MakeClient) -> None:
    """A lone event is sent once flush_interval has passed, without flush()."""
    client = make_client(max_batch_size=100, flush_interval=0.2)
    start = time.monotonic()
    client.track("u", "lonely")
    assert collector.wait_for(1, timeout=5)
    assert time.monotonic() - start >= 0.15


def test_flush_waits_for_delivery(collector: Collector, make_client: MakeClient) -> None:
    """flush() returns only once every event enqueued before it has been delivered."""
    collector.set_latency(0.2)
    client = make_client(flush_interval=60.0)
    for i in range(5):
        client.track("u", "e", {"i": i})
    report = client.flush(timeout=10)
    assert report and report.deadline_met
    assert collector.count() == 5
    assert report.destinations["opencdp"].delivered == 5


def test_flush_honours_its_timeout(collector: Collector, make_client: MakeClient) -> None:
    """flush(timeout) returns by its deadline with the event reported pending; a later flush delivers it."""
    collector.set_latency(1.5)
    client = make_client(flush_interval=60.0, timeout_ms=5000)
    client.track("u", "slow")
    start = time.monotonic()
    report = client.flush(timeout=0.3)
    assert time.monotonic() - start < 1.2
    assert not report and not report.deadline_met
    assert report.destinations["opencdp"].pending == 1
    collector.set_latency(0)
    assert client.flush(timeout=10)
    assert collector.count() == 1


def test_failover_when_primary_answers_5xx(
    collector: Collector, fallback: Collector, make_client: MakeClient
) -> None:
    """A 5xx from the primary moves the request to the fallback host; each event arrives once."""
    collector.fail_for(30, status=503)
    client = make_client(cdp_fallback_endpoints=[fallback.url])
    for i in range(5):
        client.track("u", "e", {"i": i})
    assert client.flush(timeout=10)
    assert fallback.count() == 5 and collector.count() == 0
    assert sorted(e["body"]["properties"]["i"] for e in fallback.events()) == list(range(5))


def test_failover_when_primary_is_down(
    collector: Collector, fallback: Collector, make_client: MakeClient
) -> None:
    """Connection refused at the primary: events go to the fallback; ping says which host answered."""
    collector.go_down()
    client = make_client(cdp_fallback_endpoints=[fallback.url])
    client.track("u", "e")
    client.identify("u", {"a": 1})
    assert client.flush(timeout=10)
    assert fallback.count() == 2
    assert client.ping().host == fallback.url


@pytest.mark.parametrize("fault", ["5xx", "drop"])
def test_retry_without_loss_or_duplicates(collector: Collector, make_client: MakeClient, fault: str) -> None:
    """5xx answers and dropped connections are retried: every event arrives exactly once."""
    if fault == "5xx":
        collector.fail_next(6, status=500)
    else:
        collector.drop_next(6)
    client = make_client(max_retries=8, retry_max_time=20.0, max_concurrent_requests=2)
    for i in range(20):
        client.track("u", "e", {"i": i})
    assert client.flush(timeout=30)
    seen = Counter(e["body"]["properties"]["i"] for e in collector.events())
    assert seen == Counter(range(20))
    stats = client.stats().destinations["opencdp"]
    assert stats.delivered == 20 and stats.retried == 6
    assert_invariant(stats)


@pytest.mark.parametrize("retry_after", ["1", "date"])
def test_retry_after_is_respected(collector: Collector, make_client: MakeClient, retry_after: str) -> None:
    """429 with Retry-After (seconds or HTTP date) delays the retry by at least that long."""
    import email.utils

    value = "1" if retry_after == "1" else email.utils.formatdate(time.time() + 2, usegmt=True)
    collector.rate_limit_next(1, retry_after=value)
    client = make_client(max_retries=3, retry_max_time=10.0)
    start = time.monotonic()
    client.track("u", "limited")
    assert client.flush(timeout=15)
    assert time.monotonic() - start >= 0.9
    times = [r.time for r in collector.requests if r.path == "/v1/persons/track"]
    assert len(times) == 2 and times[1] - times[0] >= 0.9
    assert collector.count() == 1


def test_400_is_not_retried_and_reported(collector: Collector, make_client: MakeClient) -> None:
    """A 400 fails the event at once: one request, on_error gets the records, stats count it."""
    calls: list[tuple[BaseException, Sequence[FailedEvent]]] = []
    got = threading.Event()

    def on_error(error: BaseException, events: Sequence[FailedEvent]) -> None:
        calls.append((error, events))
        got.set()

    collector.fail_next(1, status=400, body={"error": "bad payload"})
    client = make_client(on_error=on_error, max_retries=5)
    client.track("user-9", "checkout", {"total": 5})
    report = client.flush(timeout=10)
    assert got.wait(5)
    assert not report and report.destinations["opencdp"].failed == {"http_400": 1}
    assert len([r for r in collector.requests if r.path == "/v1/persons/track"]) == 1
    error, events = calls[0]
    assert isinstance(error, DeliveryError) and error.status_code == 400
    assert "bad payload" in (error.server_message or "")
    assert API_KEY not in str(error)
    (event,) = events
    assert (event.destination, event.call, event.identifier, event.event_name) == (
        "opencdp",
        "track",
        "user-9",
        "checkout",
    )
    assert event.properties == {"total": 5} and event.reason == "http_400"
    stats = client.stats().destinations["opencdp"]
    assert stats.failed == {"http_400": 1} and stats.retried == 0
    assert_invariant(stats)


def test_queue_full_drops_are_counted_and_warned(
    collector: Collector, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Beyond max_queue_size new events are dropped and counted (never raised); one warning line."""
    collector.go_down()
    client = make_client(max_queue_size=5, max_batch_size=100, flush_interval=60.0, max_retries=0)
    with caplog.at_level(logging.WARNING, logger="cdp_batcher"):
        for i in range(8):
            client.track("u", "e", {"i": i})
        stats = client.stats().destinations["opencdp"]
        assert stats.dropped == {"queue_full": 3} and stats.queued == 5
        assert_invariant(stats)
        client.flush(timeout=5)
    lines = [r.getMessage() for r in caplog.records if "queue full" in r.getMessage()]
    assert len(lines) == 1 and "3 event(s) dropped" in lines[0]


def test_queue_bytes_limit(make_client: MakeClient, collector: Collector) -> None:
    """max_queue_bytes bounds the encoded bytes waiting; beyond it events are dropped and counted."""
    collector.go_down()
    client = make_client(max_queue_bytes=2048, max_batch_size=100, flush_interval=60.0, max_retries=0)
    for _ in range(10):
        client.track("u", "e", {"blob": "x" * 500})
    stats = client.stats().destinations["opencdp"]
    assert stats.queued == 3 and stats.dropped == {"queue_full": 7}


def test_sync_mode_sends_in_caller_and_raises(collector: Collector, make_client: MakeClient) -> None:
    """sync_mode: the event is delivered before track() returns; a failure raises DeliveryError there."""
    client = make_client(sync_mode=True, max_retries=0)
    client.track("u", "now")
    assert collector.count() == 1
    collector.fail_next(1, status=400)
    with pytest.raises(DeliveryError) as info:
        client.track("u", "refused")
    assert info.value.status_code == 400
    stats = client.stats().destinations["opencdp"]
    assert stats.delivered == 1 and stats.failed == {"http_400": 1}
    assert_invariant(stats)


def test_stats_invariant_holds_at_every_moment(collector: Collector, make_client: MakeClient) -> None:
    """Snapshots taken while events flow through faults always satisfy the accounting invariant.
    (Five 503s in a row: the route backs off as a whole, one probe per step, so five failed
    requests are an outage of five backoff steps, well inside retry_max_time.)"""
    collector.fail_next(5, status=503)
    collector.set_latency(0.005)
    client = make_client(max_retries=4, max_queue_size=300, retry_max_time=10.0)
    stop = threading.Event()
    snapshots: list[DestinationStats] = []

    def sample() -> None:
        while not stop.is_set():
            snapshots.append(client.stats().destinations["opencdp"])

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for i in range(400):
            client.track("u", "e", {"i": i})
        client.flush(timeout=30)
    finally:
        stop.set()
        sampler.join(5)
    assert len(snapshots) > 10
    for snap in snapshots:
        assert_invariant(snap)
    final = client.stats().destinations["opencdp"]
    assert_invariant(final)
    assert final.enqueued == 400 and final.delivered + final.dropped.get("queue_full", 0) == 400


@pytest.mark.slow  # make test runs it; the matrix cells skip it (CI time)
@pytest.mark.timeout(240)
def test_16_threads_x_5000_events_exactly_once(fast_sink: str) -> None:
    """16 producer threads x 5,000 events each: every event delivered exactly once."""
    client = CDPClient(
        cdp_api_key=API_KEY, cdp_endpoint=fast_sink, cdp_fallback_endpoints=[], max_queue_size=100_000
    )
    try:
        errors: list[BaseException] = []

        def produce(n: int) -> None:
            try:
                for i in range(5000):
                    client.track(f"thread-{n}", "load", {"seq": i})
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=produce, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        report = client.flush(timeout=200)
        assert report, report
        stats = client.stats().destinations["opencdp"]
        assert stats.enqueued == 80_000 and stats.delivered == 80_000
        assert_invariant(stats)
    finally:
        client.shutdown(timeout=5)
    with urllib.request.urlopen(f"{fast_sink}/stats", timeout=10) as answer:
        seen: dict[str, Any] = json.load(answer)
    assert seen["requests"] == 80_000
    counts = seen["events"]
    assert len(counts) == 80_000 and set(counts.values()) == {1}
    assert all(f"thread-{n}:{i}" in counts for n in (0, 15) for i in (0, 4999))


def test_a_retrying_event_does_not_hold_up_the_rest_of_its_run(
    collector: Collector, make_client: MakeClient
) -> None:
    """One sender, one run of 10 events: the first gets a 500 (no Retry-After); the other 9 go
    after one short backoff step of the route (its probe succeeds), and the first is resent."""
    collector.fail_next(1, 500)
    client = make_client(
        max_concurrent_requests=1, max_batch_size=10, flush_interval=60.0, retry_max_time=10.0
    )
    for i in range(10):
        client.track("u", "e", {"i": i})
    assert collector.wait_for(10, timeout=1.5), collector.count()
    assert client.flush(timeout=10)
    assert sorted(e["body"]["properties"]["i"] for e in collector.events()) == list(range(10))
    assert client.stats().destinations["opencdp"].retried == 1


def test_retry_after_holds_the_whole_route(collector: Collector, make_client: MakeClient) -> None:
    """A 429 with Retry-After 2 s is the gateway's rate limit: the whole route waits it out
    (one probe after it, then the rest), no event is sent meanwhile and none spends an attempt."""
    collector.rate_limit_next(1, retry_after="2")
    client = make_client(
        max_concurrent_requests=1, max_batch_size=10, flush_interval=60.0, retry_max_time=10.0
    )
    start = time.monotonic()
    for i in range(10):
        client.track("u", "e", {"i": i})
    assert not collector.wait_for(1, timeout=1.5), collector.count()  # nothing during the wait
    assert client.flush(timeout=10)
    assert time.monotonic() - start >= 1.9
    assert sorted(e["body"]["properties"]["i"] for e in collector.events()) == list(range(10))
    assert len(collector.requests) == 11
    assert client.stats().destinations["opencdp"].retried == 1


def test_a_run_of_events_is_resolved_in_groups_not_one_by_one(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-event route resolves its delivered events RESOLVE_EVERY at a time (one ledger
    update and, with a spool, one ack write per group), and a group never waits longer than
    RESOLVE_AFTER for the run to go on; an event it did not deliver is never counted delivered."""
    from cdp_batcher._event import TRACK
    from cdp_batcher._retry import RetryPolicy
    from cdp_batcher.destinations import opencdp

    def run(n: int) -> RecordingControl:
        dest = opencdp.OpenCdpDestination(
            api_key=API_KEY, endpoints=[collector.url], timeout=5.0, concurrency=1, policy=RetryPolicy()
        )
        ctl = RecordingControl()
        items = [(TRACK, dest.encode_track("u", "evt", {"n": i}, 0.0)) for i in range(n)]
        try:
            dest.send(items, ctl)  # type: ignore[arg-type]
        finally:
            dest.close()
        return ctl

    every = opencdp.RESOLVE_EVERY
    monkeypatch.setattr(opencdp, "RESOLVE_AFTER", 600.0)  # groups by count alone
    collector.fail_next(1, 400)  # the first event is refused for good: failed, never delivered
    ctl = run(3 * every + 5)
    assert [(len(items), reason) for items, reason in ctl.failed_calls] == [(1, "http_400")]
    assert [len(items) for items in ctl.delivered_calls] == [every, every, every, 4]
    assert collector.count() == 3 * every + 4
    monkeypatch.setattr(opencdp, "RESOLVE_AFTER", 0.0)  # each group is due at once
    assert [len(items) for items in run(5).delivered_calls] == [1] * 5
