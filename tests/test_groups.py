"""Groups: a sender sends several events of its run at once, each on its own kept-alive
connection, then reads their answers (``HttpTransport.request_group``, ``Gateway.post_group``).

Against the package's Collector on 127.0.0.1 (a thread per connection): the answers come back
in order, each request keeps its own outcome (a 500 or a dropped connection fails only its
own request), a group opens at most one new connection, proxied and non-fast paths send one
after the other, and a client never has more requests in flight than max_concurrent_requests.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cdp_batcher.destinations import opencdp
from cdp_batcher.destinations._http import Answer, HttpTransport, TransportError
from cdp_batcher.testing import Collector

from conftest import API_KEY, MakeClient, Paces

pytestmark = pytest.mark.timeout(30)


HEADERS = {"Authorization": API_KEY, "Content-Type": "application/json"}
TRACK = "/v1/persons/track"


def _body(i: int) -> bytes:
    return b'{"identifier":"user-%d","eventName":"grouped","properties":{"seq":%d}}' % (i, i)


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector(api_key=API_KEY) as c:
        yield c


@pytest.fixture
def own() -> Iterator[HttpTransport]:
    transport = HttpTransport(None, pool_size=8)
    yield transport
    transport.close()


def _warm(own: HttpTransport, collector: Collector, connections: int) -> None:
    """Choose the fast path and keep ``connections`` connections alive (one more per group)."""
    assert own.request("POST", collector.url + TRACK, body=_body(0), headers=HEADERS, timeout=5).ok
    while len(own._path._lanes[collector.url + TRACK].idle) < connections:  # type: ignore[union-attr]
        group = [(collector.url + TRACK, _body(0))] * connections
        assert all(
            isinstance(a, Answer) and a.ok
            for a in own.request_group("POST", group, headers=HEADERS, timeout=5)
        )


def test_a_group_is_sent_before_its_answers_are_read(collector: Collector, own: HttpTransport) -> None:
    """Eight requests to a server that answers each after 0.3 s take about 0.3 s from one
    thread, not 2.4 s; the answers come back in the order of the requests, bodies intact."""
    _warm(own, collector, 8)
    collector.clear()
    collector.set_latency(0.3)
    group = [(collector.url + TRACK, _body(i)) for i in range(8)]
    start = time.monotonic()
    answers = own.request_group("POST", group, headers=HEADERS, timeout=5)
    elapsed = time.monotonic() - start
    assert [a.status for a in answers if isinstance(a, Answer)] == [200] * 8
    assert elapsed < 1.2, elapsed  # one after the other: 2.4 s
    assert sorted(r.body for r in collector.requests) == sorted(body for _, body in group)


def test_a_5xx_in_a_group_is_that_requests_own(collector: Collector, own: HttpTransport) -> None:
    """One request of the group answered 500: that one gets the 500, the others their 200."""
    _warm(own, collector, 4)
    collector.fail_next(1, 500)
    answers = own.request_group(
        "POST", [(collector.url + TRACK, _body(i)) for i in range(4)], headers=HEADERS, timeout=5
    )
    statuses = sorted(a.status for a in answers if isinstance(a, Answer))
    assert statuses == [200, 200, 200, 500]


def test_a_dropped_connection_fails_only_its_request(collector: Collector, own: HttpTransport) -> None:
    """The server resets one connection without answering: that request gets a TransportError
    (maybe sent), the others their answers; the next group succeeds whole."""
    _warm(own, collector, 4)
    collector.drop_next(1)
    group = [(collector.url + TRACK, _body(i)) for i in range(4)]
    answers = own.request_group("POST", group, headers=HEADERS, timeout=5)
    errors = [a for a in answers if isinstance(a, TransportError)]
    assert len(errors) == 1 and errors[0].maybe_sent and errors[0].reason == "connection_error"
    assert API_KEY not in str(errors[0]) and "grouped" not in str(errors[0])
    assert sum(1 for a in answers if isinstance(a, Answer) and a.ok) == 3
    again = own.request_group("POST", group, headers=HEADERS, timeout=5)
    assert all(isinstance(a, Answer) and a.ok for a in again)


def test_a_group_drops_the_kept_connections_the_server_closed(
    collector: Collector, own: HttpTransport
) -> None:
    """The server closed every kept connection (EOF waits in each): the group's one check of
    them all (``_Lane.sweep``) closes them, and every request of the group goes on a new
    connection and gets its answer; none is sent on a closed one."""
    _warm(own, collector, 4)
    lane = own._path._lanes[collector.url + TRACK]  # type: ignore[union-attr]
    stale = [conn.sock for conn in lane.idle]
    collector.go_down()  # closes the server's side of each connection
    collector.come_back()
    collector.clear()
    for sock in stale:
        select.select([sock], [], [], 5.0)  # the cut reaches the socket (bounded wait, no sleep)
    group = [(collector.url + TRACK, _body(i)) for i in range(4)]
    answers = own.request_group("POST", group, headers=HEADERS, timeout=5)
    assert [a.status for a in answers if isinstance(a, Answer)] == [200] * 4, answers
    assert all(sock.fileno() == -1 for sock in stale)
    assert sorted(r.body for r in collector.requests) == sorted(body for _, body in group)


def test_a_group_opens_at_most_one_new_connection(collector: Collector, own: HttpTransport) -> None:
    """On a cold lane a group of four goes over one connection, one request after another;
    each later group adds at most one connection to those kept alive."""
    assert own.request("POST", collector.url + TRACK, body=_body(0), headers=HEADERS, timeout=5).ok
    lane = own._path._lanes[collector.url + TRACK]  # type: ignore[union-attr]
    kept = [len(lane.idle)]
    for _ in range(4):
        group = [(collector.url + TRACK, _body(i)) for i in range(4)]
        assert all(
            isinstance(a, Answer) and a.ok
            for a in own.request_group("POST", group, headers=HEADERS, timeout=5)
        )
        kept.append(len(lane.idle))
    assert kept == [1, 2, 3, 4, 4], kept


def test_a_timeout_bounds_the_whole_group(collector: Collector, own: HttpTransport) -> None:
    """Answers that come after the group's timeout: each request fails as ``timeout`` (maybe
    sent), within about the timeout for all of them, not one timeout each."""
    _warm(own, collector, 4)
    collector.set_latency(2.0)
    start = time.monotonic()
    answers = own.request_group(
        "POST", [(collector.url + TRACK, _body(i)) for i in range(4)], headers=HEADERS, timeout=0.3
    )
    assert time.monotonic() - start < 1.5
    assert all(isinstance(a, TransportError) and a.reason == "timeout" and a.maybe_sent for a in answers), (
        answers
    )


def test_a_users_session_sends_a_group_one_after_the_other(collector: Collector) -> None:
    """A user's Session keeps requests' normal path: the group goes one request at a time,
    each with its own outcome."""
    import requests

    session = requests.Session()
    transport = HttpTransport(session, pool_size=4)
    try:
        assert not transport.groups
        collector.fail_next(1, 503)
        answers = transport.request_group(
            "POST", [(collector.url + TRACK, _body(i)) for i in range(3)], headers=HEADERS, timeout=5
        )
        assert [a.status for a in answers if isinstance(a, Answer)] == [503, 200, 200]
    finally:
        transport.close()
        session.close()


# ------------------------------------------------------------------------------- the client
class _Peak:
    """Requests in flight from a client at once (a group's requests count one by one), the most seen."""

    def __init__(self, transport: HttpTransport) -> None:
        self._lock = threading.Lock()
        self.now = self.peak = self.groups = 0
        one, many = transport.request, transport.request_group

        def count(n: int) -> None:
            with self._lock:
                self.now += n
                self.peak = max(self.peak, self.now)

        def request(*args: Any, **kwargs: Any) -> Any:
            count(1)
            try:
                return one(*args, **kwargs)
            finally:
                count(-1)

        def request_group(method: str, requests_: Any, **kwargs: Any) -> Any:
            count(len(requests_))
            self.groups += 1
            try:
                return many(method, requests_, **kwargs)
            finally:
                count(-len(requests_))

        transport.request = request  # type: ignore[method-assign]
        transport.request_group = request_group  # type: ignore[method-assign]


def test_groups_keep_within_max_concurrent_requests(collector: Collector, make_client: MakeClient) -> None:
    """max_concurrent_requests=3 and a server that takes 20 ms a request: groups are sent, yet
    never more than 3 requests are in flight at once; every event arrives once."""
    client = make_client(max_concurrent_requests=3, max_batch_size=50, flush_interval=1.0)
    peak = _Peak(client._opencdp.http)
    for i in range(10):  # times the link (fast) first: an untimed link wants all 3 senders, and
        client.track(f"user-{i}", "grouped", {"seq": i})  # 3 senders in flight leave no room
    assert client.flush(timeout=10)  # for a group (CI once saw none)
    collector.set_latency(0.02)
    # The 50th event fills a batch, sent at once while nobody waits: at the fast link's pace one
    # sender takes the run of 50, with room for groups of 3; the flush then gets every sender.
    for i in range(10, 70):
        client.track(f"user-{i}", "grouped", {"seq": i})
    assert client.flush(timeout=20)
    assert collector.count() == 70
    assert len({e["body"]["properties"]["seq"] for e in collector.events()}) == 70
    assert peak.groups and 1 <= peak.peak <= 3, (peak.groups, peak.peak)


def test_a_failing_gateway_turns_groups_off(collector: Collector, make_client: MakeClient) -> None:
    """A gateway answering 503 meets one request per event (then the outage's probes), not a
    group of them at each retry; everything arrives once when it recovers."""
    client = make_client(max_concurrent_requests=8, retry_max_time=20.0, flush_interval=60.0)
    for i in range(16):
        client.track(f"user-{i}", "grouped", {"seq": i})
    assert client.flush(timeout=10)  # healthy: groups on
    collector.clear()
    collector.fail_for(0.5, 503)
    for i in range(16):
        client.track(f"user-{i}", "grouped", {"seq": 100 + i})
    assert client.flush(timeout=15)
    failed = [r for r in collector.requests if r.status == 503]
    # the first group (at most GROUP requests) met the outage; after it, probes only
    assert 1 <= len(failed) <= 8 + 6, len(failed)
    seqs = [e["body"]["properties"]["seq"] for e in collector.events()]
    assert sorted(seqs) == list(range(100, 116))


def test_background_runs_pause_after_each_group(
    collector: Collector, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events nobody waits for (no flush, no shutdown, the queue nearly empty) go out in groups
    with a pause after each but the last of a run; every event arrives once."""
    paces = Paces(monkeypatch, opencdp)
    client = make_client(max_concurrent_requests=8, max_batch_size=64, flush_interval=1.0)
    for i in range(16):  # times the link: until then every sender is wanted (one group each)
        client.track(f"user-{i}", "grouped", {"seq": i})
    assert client.flush(timeout=10) and paces.count == 0
    # A full batch goes out at once; a request well under 15 ms asks for one sender (64 events
    # within the 1 s interval), so the run is 64 events in groups of up to 8.
    for i in range(16, 80):
        client.track(f"user-{i}", "grouped", {"seq": i})
    assert collector.wait_for(80, timeout=10)
    assert paces.count >= 1
    assert sorted(e["body"]["properties"]["seq"] for e in collector.events()) == list(range(80))


def test_a_flush_is_never_paced(
    collector: Collector, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events a flush() waits for (here: queued until the flush, flush_interval 60 s) and a
    shutdown's go out with no pause between groups. The batch size is above what is queued,
    so no full batch starts an (unhurried) run before the call."""
    paces = Paces(monkeypatch, opencdp)
    client = make_client(max_concurrent_requests=8, max_batch_size=128, flush_interval=60.0)
    for i in range(64):
        client.track(f"user-{i}", "grouped", {"seq": i})
    assert client.flush(timeout=10)
    assert collector.count() == 64 and paces.count == 0
    for i in range(64):
        client.track(f"user-{i}", "grouped", {"seq": 64 + i})
    assert client.shutdown(timeout=10)
    assert collector.count() == 128 and paces.count == 0


def test_unhurried_only_while_nobody_waits(collector: Collector, make_client: MakeClient) -> None:
    """A route is unhurried with a near-empty queue; not with the queue half full (producers
    outrunning a paced sender would fill it), not while a flush waits, not after shutdown."""
    collector.set_latency(0.5)
    client = make_client(max_queue_size=100, max_batch_size=100, flush_interval=60.0)
    route = client._routes[0]
    assert route._unhurried()
    for i in range(50):
        client.track("u", "e", {"seq": i})
    assert not route._unhurried()  # 50 of 100 queued
    flushing = threading.Thread(target=client.flush, kwargs={"timeout": 10})
    flushing.start()
    try:
        progress = route.ledger.progress  # notified as events resolve (the first after 0.5 s)
        with progress:
            progress.wait_for(lambda: len(route.queue) == 0, timeout=5)  # the flush took them all
        assert len(route.queue) == 0
        assert not route._unhurried()  # the queue is empty, but a flush waits for those 50
    finally:
        flushing.join(10)
    assert route._unhurried()  # the flush has returned
    client.shutdown(timeout=10)
    assert not route._unhurried()
