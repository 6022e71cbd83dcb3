"""Pure parts, no threads: the retry policy, Retry-After parsing, the queue, ULIDs, host order."""

from __future__ import annotations

import email.utils
import os
import time

import pytest

from cdp_batcher._event import TRACK, new_ulid
from cdp_batcher._queue import EventQueue
from cdp_batcher._retry import RetryPolicy, parse_retry_after
from cdp_batcher.destinations.opencdp import HostRing

pytestmark = pytest.mark.timeout(10)


def test_delays_are_exponential_and_capped_without_jitter() -> None:
    """jitter off: 0.1, 0.2, 0.4 ... doubling up to max_delay."""
    delays = RetryPolicy(jitter=False, factor=0.1, max_delay=1.0).delays()
    assert [round(next(delays), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_full_jitter_stays_within_the_exponential_envelope() -> None:
    """With full jitter each delay is in [0, factor * 2**n]."""
    policy = RetryPolicy(factor=0.1, max_delay=10.0)
    for _ in range(50):
        delays = policy.delays()
        for n in range(6):
            assert 0.0 <= next(delays) <= 0.1 * 2**n + 1e-9


def test_retry_after_replaces_a_shorter_delay_and_is_capped() -> None:
    """Retry-After wins over a shorter computed delay, never beyond retry_after_cap."""
    policy = RetryPolicy(jitter=False, factor=0.1, retry_after_cap=5.0)
    delays = policy.delays()
    assert policy.next_delay(delays, 2.0) == 2.0
    assert policy.next_delay(delays, 500.0) == 5.0
    assert policy.next_delay(delays, None) == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3.0), (" 1.5 ", 1.5), ("-4", 0.0), ("", None), (None, None), ("soon", None), ("nan", None)],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    """Delta-seconds parse to floats; negative clamps to 0; junk is None."""
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    """An HTTP date parses to the seconds from now (past dates clamp to 0)."""
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 7, usegmt=True), now=now) == pytest.approx(7.0)
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0


def test_may_retry_counts_attempts_and_time_budget() -> None:
    """max_retries counts attempts after the first; max_time bounds time spent plus the next wait."""
    policy = RetryPolicy(max_retries=2, max_time=10.0)
    assert policy.may_retry(1, 0.0, 0.0, 1.0) and policy.may_retry(2, 0.0, 0.0, 1.0)
    assert not policy.may_retry(3, 0.0, 0.0, 1.0)
    assert not policy.may_retry(1, 0.0, 9.5, 1.0)
    assert not RetryPolicy(max_retries=0).may_retry(1, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 522, 524])
def test_retryable_statuses(status: int) -> None:
    assert RetryPolicy.is_retryable_status(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422, 501])
def test_not_retryable_statuses(status: int) -> None:
    assert not RetryPolicy.is_retryable_status(status)


def test_failover_skips_request_errors_only() -> None:
    """Another host is tried on 5xx/429/3xx but not when the request itself was rejected."""
    assert RetryPolicy.should_fail_over(503) and RetryPolicy.should_fail_over(429)
    assert RetryPolicy.should_fail_over(301)
    assert not RetryPolicy.should_fail_over(400) and not RetryPolicy.should_fail_over(401)


def test_queue_bounds_by_count_and_bytes_and_drains_fifo() -> None:
    """put() refuses beyond either bound (counted), drain is FIFO and frees the bytes."""
    q = EventQueue(max_events=3, max_bytes=25, batch_size=10)
    assert q.put((TRACK, b"a" * 10)) and q.put((TRACK, b"b" * 10))
    assert not q.put((TRACK, b"c" * 10))  # 30 bytes > 25
    assert q.put((TRACK, b"d" * 5))
    assert not q.put((TRACK, b"e"))  # 3 events already
    assert (q.offered, q.accepted, q.full_drops, len(q), q.nbytes) == (5, 3, 2, 3, 25)
    with q.lock:
        first = q.drain_locked(2)
    assert [body[:1] for _, body in first] == [b"a", b"b"]
    assert (q.drained, q.nbytes) == (2, 5)


def test_queue_wakes_on_first_event_and_on_full_batch_only() -> None:
    """The producer signals on the empty→non-empty transition, on a full batch and on each further
    batch of growth (the stall check), never per event; a drain starts the count again."""
    q = EventQueue(max_events=100, max_bytes=10_000, batch_size=3)
    firsts: list[int] = []
    batches: list[int] = []
    q.on_first = lambda: firsts.append(len(q))
    q.on_batch = lambda: batches.append(len(q))
    for _ in range(7):
        q.put((TRACK, b"x"))
    assert firsts == [1] and batches == [3, 6]
    with q.lock:
        q.drain_locked(6)
    q.put((TRACK, b"x"))
    q.put((TRACK, b"x"))
    assert batches == [3, 6, 3]


def test_ulid_is_26_crockford_chars_time_ordered() -> None:
    """ULIDs carry the millisecond time first (sortable) and 80 random bits (unique)."""
    now = int(time.time() * 1000)
    a, b = new_ulid(now), new_ulid(now + 1)
    assert len(a) == 26 and set(a) <= set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
    assert a[:10] < b[:10]
    assert new_ulid(1469918176385).startswith("01ARYZ6S41")
    assert len({new_ulid(now) for _ in range(1000)}) == 1000


def test_host_ring_sticks_to_the_host_that_answered() -> None:
    """After a failover the working host is tried first; the primary again after a while."""
    ring = HostRing(["p", "f1", "f2"])
    assert list(ring.order()) == ["p", "f1", "f2"]
    ring.answered("f1")
    assert list(ring.order()) == ["f1", "f2", "p"]
    ring._since -= 3600  # as if the failover happened an hour ago
    assert list(ring.order()) == ["p", "f1", "f2"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_ulid_randomness_differs_after_fork() -> None:
    """A forked child does not repeat its parent's ULIDs (the random source is re-seeded)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.write(write, new_ulid(0).encode())
        os._exit(0)
    os.close(write)
    mine = new_ulid(0)
    _, status = os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert status == 0 and len(child) == 26 and child != mine
