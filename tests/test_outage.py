"""The outage state object alone, on an injected clock: one probe per backoff step.

(Its hooks in the destinations' send loops, and the real 3 s / 20 s outage tests, are on branch
transport-outage-wip: not merged, see the report.)
"""

from __future__ import annotations

from typing import Any

import pytest

from cdp_batcher._retry import RetryPolicy
from cdp_batcher.destinations._outage import PROBE_POLL, Outage

KEY = "outage-key"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _outage(**policy: Any) -> tuple[Outage, Clock]:
    clock = Clock()
    return Outage(RetryPolicy(jitter=False, **policy), lease=1.0, clock=clock), clock


# ------------------------------------------------------------------------- the state alone
def test_up_admits_everyone() -> None:
    """While up, every request may go and successes change nothing."""
    outage, _ = _outage()
    assert [outage.admit() for _ in range(5)] == [0.0] * 5
    outage.succeeded()
    assert not outage.down and outage.wait_time() == 0.0


def test_one_probe_per_step_then_up() -> None:
    """A failure marks it down; after the step one caller (only one) is admitted as the probe;
    the probe's success marks it up for everyone."""
    outage, clock = _outage()
    assert outage.failed(None) is False  # the failure that reveals the outage spends an attempt
    assert outage.down and outage.wait_time() == pytest.approx(0.1)
    assert outage.admit() == pytest.approx(0.1)
    clock.now += 0.1
    assert outage.admit() == 0.0  # the probe
    assert [outage.admit() for _ in range(3)] == [PROBE_POLL] * 3  # the probe is in flight
    outage.succeeded()
    assert not outage.down and outage.admit() == 0.0


def test_failed_probes_back_off_exponentially() -> None:
    """Each failed probe schedules the next step: 0.1, 0.2, 0.4 ... capped at max_delay."""
    outage, clock = _outage(max_delay=1.0)
    outage.failed(None)
    steps = []
    for _ in range(6):
        wait = outage.wait_time()
        steps.append(round(wait, 3))
        clock.now += wait
        assert outage.admit() == 0.0
        assert outage.failed(None) is True  # a probe's failure: its event keeps its attempts
    assert steps == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert outage.steps == 7 and outage.probes == 6


def test_retry_after_sets_the_step() -> None:
    """Retry-After longer than the backoff step is honoured (capped at retry_after_cap)."""
    outage, clock = _outage(retry_after_cap=5.0)
    outage.failed(3.0)
    assert outage.wait_time() == pytest.approx(3.0)
    clock.now += 3.0
    assert outage.admit() == 0.0
    outage.failed(120.0)
    assert outage.wait_time() == pytest.approx(5.0)


def test_failures_sent_before_the_outage_leave_the_schedule() -> None:
    """Requests in flight when the outage began fail too: they neither advance the step nor
    spend their events' attempts; a longer Retry-After among them still counts."""
    outage, _ = _outage()
    outage.failed(None)
    assert outage.failed(None) is True and outage.failed(None) is True
    assert outage.steps == 1 and outage.wait_time() == pytest.approx(0.1)
    outage.failed(2.0)
    assert outage.wait_time() == pytest.approx(2.0) and outage.steps == 1


def test_a_lost_probe_expires() -> None:
    """A probe never reported (its thread gone) stops holding others back after the lease."""
    outage, clock = _outage()
    outage.failed(None)
    clock.now += 0.1
    assert outage.admit() == 0.0
    clock.now += 0.5
    assert outage.admit() == PROBE_POLL
    clock.now += 0.6
    assert outage.admit() == 0.0 and outage.probes == 2


def test_twenty_second_schedule_on_a_busy_route() -> None:
    """Ten senders asking every 10 ms through a 20 s outage (default policy, jitter on): the
    probes admitted are the backoff steps, about a dozen, never a stampede."""
    clock = Clock()
    outage = Outage(RetryPolicy(), lease=10.0, clock=clock)
    outage.failed(None)
    end = clock.now + 20.0
    admitted = 0
    while clock.now < end:
        for _ in range(10):
            if outage.admit() == 0.0:
                admitted += 1
                outage.failed(None)
        clock.now += 0.01
    assert admitted == outage.probes == outage.steps - 1
    assert 3 <= admitted <= 40, admitted


def test_an_answer_sent_before_the_outage_does_not_end_it() -> None:
    """A success to a request sent before the first failure leaves the outage on (the probe
    decides); one sent after it began ends it."""
    outage, clock = _outage()
    early = outage.now()
    clock.now += 0.01
    outage.failed(None)
    outage.succeeded(early)
    assert outage.down
    outage.succeeded(outage.now())
    assert not outage.down
