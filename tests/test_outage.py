"""An outage is a state of the route: one probe per backoff step, events keep their attempts.

The state object alone on an injected clock (the schedule), then real outages of the local
collector with default settings: 5xx, 429 and refused connections on every host, for 3 s (and
one 20 s run): no event fails, and the requests sent while it is down stay within two per
backoff step per host (plus the requests already in flight when it went down).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from cdp_batcher import CDPClient, CustomerIoConfig
from cdp_batcher._retry import RetryPolicy
from cdp_batcher.destinations._outage import PROBE_POLL, Outage
from cdp_batcher.testing import Collector

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


# ------------------------------------------------------------------------ real outages
class Counting:
    """Counts the requests that met the outage, per host: made while ``down`` is set and
    answered 429/5xx or not at all (a request made in the moment the hosts came back, before
    the test's timer cleared ``down``, is not part of the outage)."""

    def __init__(self, transport: Any, hosts: dict[str, str]) -> None:
        self._real = transport.request
        self._hosts = hosts
        self._lock = threading.Lock()
        self.down = threading.Event()
        self.during: Counter[str] = Counter()
        transport.request = self._request

    def _request(self, method: str, url: str, **kwargs: Any) -> Any:
        down = self.down.is_set()
        try:
            answer = self._real(method, url, **kwargs)
        except Exception:
            self._count(down, url)
            raise
        if answer.status == 429 or answer.status >= 500:
            self._count(down, url)
        return answer

    def _count(self, down: bool, url: str) -> None:
        if not down:
            return
        with self._lock:
            for name, base in self._hosts.items():
                if url.startswith(base):
                    self.during[name] += 1


@pytest.fixture
def hosts() -> Iterator[tuple[Collector, Collector]]:
    with Collector(api_key=KEY) as primary, Collector(api_key=KEY) as fallback:
        yield primary, fallback


def _outage_run(hosts: tuple[Collector, Collector], mode: str, seconds: float, events: int) -> None:
    primary, fallback = hosts
    client = CDPClient(cdp_api_key=KEY, cdp_endpoint=primary.url, cdp_fallback_endpoints=[fallback.url])
    dest = client._opencdp
    counting = Counting(dest.http, {"primary": primary.url, "fallback": fallback.url})
    timers: list[threading.Timer] = []
    try:
        counting.down.set()
        for c in (primary, fallback):
            if mode == "refused":
                c.go_down()
                timer = threading.Timer(seconds, c.come_back)
                timer.name = "cdp-collector-timer"
                timers.append(timer)
                timer.start()
            else:
                c.fail_for(seconds, 500 if mode == "5xx" else 429)
        ended = threading.Timer(seconds, counting.down.clear)
        ended.name = "cdp-collector-timer"
        timers.append(ended)
        ended.start()
        for i in range(events):
            client.track(f"user{i % 50}", "outage_test", {"seq": i})
        report = client.flush(timeout=seconds + 30)
        stats = client.stats().destinations["opencdp"]
    finally:
        client.shutdown(timeout=5)
        for timer in timers:
            timer.cancel()
            timer.join(5)
    assert report.deadline_met and stats.failed_total == 0, (report, stats.as_dict())
    assert stats.delivered == events
    assert primary.count() + fallback.count() >= events
    in_flight_at_start = dest.concurrency
    bound = 2 * dest.outage.steps + in_flight_at_start
    for name in ("primary", "fallback"):
        assert counting.during[name] <= bound, (name, counting.during, dest.outage)
    print(mode, dict(counting.during), dest.outage, bound)
    assert counting.during["primary"] > 0  # the outage was seen


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["5xx", "429", "refused"])
def test_three_second_outage_fails_nothing(hosts: tuple[Collector, Collector], mode: str) -> None:
    """Every host down for 3 s (500, 429 or refused) with default settings: 0 failed, and few
    requests while it lasts."""
    _outage_run(hosts, mode, 3.0, 2000)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_twenty_second_outage_fails_nothing(hosts: tuple[Collector, Collector]) -> None:
    """Every host answering 500 for 20 s (more than max_retries backoff steps) with default
    settings: 0 failed."""
    _outage_run(hosts, "5xx", 20.0, 2000)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_customerio_outage_is_its_own() -> None:
    """Customer.io refusing for 3 s backs off Customer.io's route only: OpenCDP stays up and
    every event reaches both."""
    with Collector(api_key=KEY) as hub:
        client = CDPClient(
            cdp_api_key=KEY,
            cdp_endpoint=hub.url,
            cdp_fallback_endpoints=[],
            send_to_customer_io=True,
            customer_io=CustomerIoConfig(site_id="site", api_key="cio-key", url=hub.url),
        )
        try:
            hub.fail_for(3.0, 503, path="/api/v2/batch")
            for i in range(500):
                client.track(f"user{i % 20}", "outage_test", {"seq": i})
            report = client.flush(timeout=40)
            stats = client.stats().destinations
            cio = next(r.dest for r in client._routes if r.dest.name == "customerio")
            opencdp_outage, cio_outage = client._opencdp.outage, cio.outage
        finally:
            client.shutdown(timeout=5)
        assert report.deadline_met, report
        assert stats["opencdp"].failed_total == 0 and stats["customerio"].failed_total == 0
        assert stats["opencdp"].delivered == 500 and stats["customerio"].delivered == 500
        assert opencdp_outage.steps == 0 and cio_outage.steps >= 1
        cio_requests = [r for r in hub.requests if r.path == "/api/v2/batch" and r.status == 503]
        assert len(cio_requests) <= 2 * cio_outage.steps + 1


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
