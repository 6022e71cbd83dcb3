"""Pure parts, no threads: the retry policy, Retry-After parsing, the queue, ULIDs, host order."""

from __future__ import annotations

import email.utils
import os
import threading
import time

import pytest

from cdp_batcher import _event
from cdp_batcher._event import TRACK, UlidSpeller, format_ulid, new_ulid, ulid_seconds, ulid_value
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


def _reference_ulid_text(value: int) -> str:
    """The ULID spelling the slow, obvious way: 26 characters of 5 bits, most significant first."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    return "".join(alphabet[(value >> (5 * (25 - i))) & 31] for i in range(26))


def test_format_ulid_and_the_speller_match_the_plain_spelling() -> None:
    """format_ulid and UlidSpeller spell every value as the 5-bits-at-a-time reference does,
    including runs that share their first 98 bits, values crossing a 2**30 carry, and new ms."""
    import random as _random

    speller = UlidSpeller()
    rng = _random.Random(7)
    values = [rng.getrandbits(128) for _ in range(500)]
    base = (1_700_000_000_123 << 80) | ((1 << 30) - 3)  # crosses into bit 30 after 3 steps
    values += [base + k for k in range(8)] + [(1_700_000_000_124 << 80) + k for k in range(3)]
    values += [0, (1 << 128) - 1]
    for value in values:
        expected = _reference_ulid_text(value)
        assert format_ulid(value) == expected
        assert speller(value) == (expected, (value >> 80) // 1000)


def test_ulid_value_is_monotonic_carries_the_call_time_and_never_repeats_across_threads() -> None:
    """ulid_value(): strictly increasing in one thread, its time part the call's millisecond,
    and 4 threads calling at once never get the same value."""
    before = int(time.time() * 1000)
    seq = [ulid_value() for _ in range(20_000)]
    after = int(time.time() * 1000)
    assert all(a < b for a, b in zip(seq, seq[1:]))
    assert before <= seq[0] >> 80 <= seq[-1] >> 80 <= after
    assert ulid_seconds(seq[0]) == (seq[0] >> 80) // 1000

    out: list[list[int]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def run(k: int) -> None:
        start.wait(5)
        out[k].extend(ulid_value() for _ in range(20_000))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    every = [v for chunk in out for v in chunk]
    assert len(every) == 80_000 and len(set(every)) == 80_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_ulid_value_in_a_forked_child_draws_its_own_random_part(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parent and child in the same millisecond, with the same counter: the child re-draws the
    random part at fork, so its next ULID differs from the parent's next one."""
    frozen = time.time()
    monkeypatch.setattr(_event, "_time", lambda: frozen)
    ulid_value()  # the parent's prefix for this millisecond
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.write(write, str(ulid_value()).encode())
        os._exit(0)
    os.close(write)
    mine = ulid_value()
    _, status = os.waitpid(pid, 0)
    child = int(os.read(read, 64).decode())
    os.close(read)
    assert status == 0 and child >> 80 == mine >> 80 and child != mine
    assert abs(child - mine) > 1_000_000  # not the same prefix one counter step apart


def test_put_pair_bounds_and_counts_each_queue_on_its_own() -> None:
    """put_pair appends to both queues under one lock; a full partner drops only its copy; each
    queue signals its own first item and full batch."""
    primary = EventQueue(max_events=10, max_bytes=10_000, batch_size=2)
    partner = EventQueue(max_events=1, max_bytes=10_000, batch_size=2)
    primary.share_lock(partner)
    assert partner.lock is primary.lock
    signals: list[str] = []
    primary.on_first = lambda: signals.append("primary first")
    primary.on_batch = lambda: signals.append("primary batch")
    partner.on_first = lambda: signals.append("partner first")
    body = b'{"identifier":"u"}'
    for _ in range(3):
        primary.put_pair((TRACK, body), (TRACK, body, 42))
    assert (len(primary), primary.accepted, primary.offered, primary.full_drops) == (3, 3, 3, 0)
    assert (len(partner), partner.accepted, partner.offered, partner.full_drops) == (1, 1, 3, 2)
    assert primary.nbytes == 3 * len(body) and partner.nbytes == len(body)
    assert signals == ["primary first", "partner first", "primary batch"]
    assert partner.drain_locked(5) == [(TRACK, body, 42)] and partner.nbytes == 0
