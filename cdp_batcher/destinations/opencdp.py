"""OpenCDP gateway: one POST per event, failover across gateway hosts, shared retry policy.

Requests go through the destination's :class:`Gateway` (host ring and failover loop); how many
senders are worth running follows the link (:class:`ConcurrencyGovernor`, read by the route
through :meth:`OpenCdpDestination.concurrency_hint`). A sender's run goes out in groups of up to
``GROUP`` events sent before their answers are read (one wait per group, not per event), with
every sender's requests together within ``max_concurrent_requests``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable, Optional

import requests

from .. import _concurrency
from .._errors import DeliveryError
from .._event import (
    IDENTIFY,
    TRACK,
    Item,
    OpenCdpIdentify,
    OpenCdpTrack,
    decode,
    encode,
)
from .._retry import RetryPolicy
from .._senders import ConcurrencyGovernor
from ._base import Destination, DeviceInfo, SendControl, pace
from ._gateway import Gateway, HostRing, PingResult, SendOutcome, server_message
from ._http import Answer, HttpTransport
from ._outage import PROBE_POLL, Outage
from ._transport import PERMANENT_REASONS

__all__ = ["HostRing", "OpenCdpDestination", "PingResult", "SendOutcome", "server_message"]

PATHS = ("/v1/persons/identify", "/v1/persons/track", "/v1/persons/registerDevice")


class _Retrying:
    """Retry state of one event: its backoff delays, attempts so far, when it is due, and
    whether it was sent at all (an event held back by an outage may never have been)."""

    __slots__ = ("attempts", "delays", "due", "error", "item", "reason", "sent", "started")

    def __init__(self, item: Item, delays: Iterator[float], started: float) -> None:
        self.item = item
        self.delays = delays
        self.started = started
        self.attempts = 0
        self.sent = False
        self.due = started
        self.reason = ""
        self.error: BaseException = DeliveryError("not attempted")


#: Delivered events of a run are resolved together (one ledger update, one spool ack write)
#: once this many are waiting, or this many seconds after the first of them, or at the end of
#: the run's first pass, whichever comes first; on a link where a request takes longer than
#: RESOLVE_AFTER each event is resolved as it is delivered (and what was waiting with it).
RESOLVE_EVERY = 16
RESOLVE_AFTER = 0.01
#: A sender sends up to this many events of its run at once, each on its own kept-alive
#: connection, then reads their answers (:meth:`Gateway.post_group`): one wait for the group
#: instead of one per event. Every request in flight counts against ``max_concurrent_requests``.
GROUP = 8
#: While nobody waits for a run (:meth:`SendControl.unhurried`), its sender pauses (``_pace``,
#: :data:`~._base.PACE`) after each group. On a 2-core host (sync gunicorn, gateway on loopback,
#: ten track() calls per request) it cut the p99 that tracking adds by about a fifth (README,
#: Performance). A flush, a shutdown or a filling queue is never paced.
_pace = pace


class _Delivered:
    """Events of a run already delivered, not yet resolved (see RESOLVE_EVERY)."""

    __slots__ = ("ctl", "first", "items")

    def __init__(self, ctl: SendControl) -> None:
        self.ctl = ctl
        self.items: list[Item] = []
        self.first = 0.0

    def add(self, item: Item, wall: float) -> None:
        """``item`` was delivered by a request that took ``wall`` seconds."""
        items = self.items
        items.append(item)
        if wall >= RESOLVE_AFTER:  # a slow link: nothing to save by waiting for the next one
            self.resolve()
        elif len(items) == 1:
            self.first = time.monotonic()
        elif len(items) >= RESOLVE_EVERY or time.monotonic() - self.first >= RESOLVE_AFTER:
            self.resolve()

    def resolve(self) -> None:
        if self.items:
            items, self.items = self.items, []
            self.ctl.delivered(items)


class OpenCdpDestination(Destination):
    """Delivers identify/track/registerDevice to the OpenCDP gateway, one request per event."""

    name = "opencdp"
    max_unit_events = 1
    needs_timestamp = False

    def __init__(
        self,
        *,
        api_key: str,
        endpoints: Sequence[str],
        timeout: float,
        concurrency: int,
        policy: RetryPolicy,
        session: Optional[requests.Session] = None,
    ) -> None:
        self.concurrency = concurrency
        self.governor = ConcurrencyGovernor(concurrency)
        #: Requests in flight (a sender's own one, and its group's others): at most concurrency.
        self._in_flight = 0
        self._flight = _concurrency.condition()
        #: Groups are sent only while the last requests went well (up, and answered 2xx): an
        #: outage or a failing host meets one request per event, as before groups.
        self._grouping = True
        self._policy = policy
        self._http = HttpTransport(session, pool_size=concurrency)
        headers = {"Authorization": api_key, "Content-Type": "application/json"}
        self.gateway = Gateway(self._http, endpoints, headers, timeout)
        self.ring = self.gateway.ring
        #: The destination's outage state: while it is down, one probe per backoff step.
        self.outage = Outage(policy, lease=timeout + 1.0)
        self._outage_cause: tuple[str, BaseException] = ("connection_error", DeliveryError("gateway down"))

    def __repr__(self) -> str:
        return f"OpenCdpDestination(hosts={self.ring.hosts!r})"

    # ------------------------------------------------------------------------------- encoding
    def encode_identify(self, identifier: str, properties: Any, timestamp: float) -> bytes:
        return encode(OpenCdpIdentify(identifier, properties))

    def encode_track(self, identifier: str, event_name: str, properties: Any, timestamp: float) -> bytes:
        return encode(OpenCdpTrack(identifier, event_name, properties))

    def encode_device(self, identifier: str, device: DeviceInfo, timestamp: float) -> bytes:
        return encode(device)  # DeviceInfo is the registerDevice body

    def describe(self, item: Item) -> tuple[Optional[str], Optional[str], Mapping[str, Any]]:
        kind = item[0]
        data = decode(item[1])
        props = data.get("properties") if kind in (IDENTIFY, TRACK) else data.get("attributes")
        return data.get("identifier"), data.get("eventName"), props or {}

    # -------------------------------------------------------------------------------- sending
    def send(self, items: Sequence[Item], ctl: SendControl) -> None:
        """Send a run of events one request each. An event that must be retried waits out its
        backoff while the rest of the run goes ahead: one failing event never holds up others.
        While the gateway answers well, up to GROUP events go at once (see GROUP)."""
        done = _Delivered(ctl)
        retrying: list[_Retrying] = []
        self._enter(ctl)
        try:
            i, count = 0, len(items)
            while i < count:
                extra = self._reserve(count - i - 1)
                if not extra:
                    state = self._attempt(items[i], None, ctl, done)
                    if state is not None:
                        retrying.append(state)
                    i += 1
                    continue
                try:
                    retrying.extend(self._attempt_group(items[i : i + extra + 1], ctl, done))
                finally:
                    self._leave(extra)
                i += extra + 1
                if i < count and ctl.unhurried():
                    _pace()
        finally:
            self._leave(1)
            done.resolve()
        while retrying:
            due = min(state.due for state in retrying)
            wait = max(due - time.monotonic(), self.outage.wait_time())
            if wait > 0 and not ctl.sleep(wait):  # the deadline comes first: no retry can happen
                for state in retrying:
                    ctl.failed((state.item,), *self._cause(state))
                return
            now = time.monotonic()
            later: list[_Retrying] = []
            for state in retrying:
                if state.due > now:
                    later.append(state)
                    continue
                again = self._attempt(state.item, state, ctl)
                if again is not None:
                    later.append(again)
            retrying = later

    def _enter(self, ctl: SendControl) -> None:
        """Count this sender's own request in flight; while other senders' groups use every
        request ``max_concurrent_requests`` allows, wait for one to end (a group's requests,
        each within the timeout on each host; at most until the run's deadline)."""
        flight = self._flight
        with flight:
            if self._in_flight >= self.concurrency:
                limit = self.gateway.timeout * (len(self.ring.hosts) + 1)
                remaining = ctl.remaining()
                flight.wait_for(
                    lambda: self._in_flight < self.concurrency,
                    limit if remaining is None else max(0.0, min(limit, remaining)),
                )
            self._in_flight += 1

    def _leave(self, requests: int) -> None:
        with self._flight:
            self._in_flight -= requests
            self._flight.notify_all()

    def _reserve(self, wanted: int) -> int:
        """How many more requests (up to ``wanted``) this sender may send along with its own:
        none unless groups are on, else what ``max_concurrent_requests`` leaves, up to GROUP - 1."""
        if wanted <= 0 or not self._grouping or self.outage.down or not self._http.groups:
            return 0
        with self._flight:
            extra = max(0, min(wanted, GROUP - 1, self.concurrency - self._in_flight))
            self._in_flight += extra
        return extra

    def _attempt_group(self, items: Sequence[Item], ctl: SendControl, done: _Delivered) -> list[_Retrying]:
        """First attempts of several events at once (:meth:`Gateway.post_group`); each outcome is
        then taken as :meth:`_attempt` takes one. Returns the events to try again."""
        started = time.monotonic()
        sent_at = self.outage.now()
        governor = self.governor
        clock, cpu = time.perf_counter(), governor.cpu_start()
        outcomes = self.gateway.post_group([(PATHS[item[0]], item[1]) for item in items], ctl.remaining())
        wall = time.perf_counter() - clock  # each request's answer came within it
        governor.record_since(wall / len(items), cpu, len(items))  # the link's pace: a share each
        later: list[_Retrying] = []
        for item, (answer, error, reason) in zip(items, outcomes):
            state = self._outcome(item, None, ctl, done, started, sent_at, wall, answer, error, reason)
            if state is not None:
                later.append(state)
        return later

    def concurrency_hint(self) -> int:
        """Senders worth running now (the governor's reading of the last requests)."""
        return self.governor.hint()

    def senders_for(self, events: int, within: float) -> int:
        """Senders that send ``events`` within ``within`` seconds at the last requests' pace."""
        return self.governor.demand(events, within)

    def _attempt(
        self, item: Item, state: Optional[_Retrying], ctl: SendControl, done: Optional[_Delivered] = None
    ) -> Optional[_Retrying]:
        """One attempt across the hosts: resolves the event, or returns when to try it again.

        While the gateway is known to be down (:class:`Outage`) the event waits for the next
        probe without spending an attempt; an event never sent whose budget ends before that
        probe is sent once, now.
        """
        policy = self._policy
        outage = self.outage
        wait = outage.admit()
        if wait > 0:
            if state is None:
                state = _Retrying(item, policy.delays(), time.monotonic())
            if state.sent or time.monotonic() - state.started + wait <= policy.max_time:
                return self._wait_out(state, wait, ctl)
        if state is not None and state.sent:
            ctl.retried(1)
        # The common case (a first attempt, answered 2xx) makes no retry state: it is made
        # below, when the event has to be tried again or fails.
        started = time.monotonic()
        sent_at = outage.now()
        governor = self.governor
        clock, cpu = time.perf_counter(), governor.cpu_start()
        answer, error, reason = self.gateway.post(PATHS[item[0]], item[1], ctl.remaining())
        wall = time.perf_counter() - clock
        governor.record_since(wall, cpu)
        return self._outcome(item, state, ctl, done, started, sent_at, wall, answer, error, reason)

    def _outcome(
        self,
        item: Item,
        state: Optional[_Retrying],
        ctl: SendControl,
        done: Optional[_Delivered],
        started: float,
        sent_at: float,
        wall: float,
        answer: Optional[Answer],
        error: Optional[DeliveryError],
        reason: str,
    ) -> Optional[_Retrying]:
        """An attempt's outcome: the event resolved (delivered or failed), or its retry state."""
        policy = self._policy
        outage = self.outage
        if answer is not None and answer.ok:
            self._grouping = True
            outage.succeeded(sent_at)
            if done is None:  # a retry: resolved at once
                ctl.delivered((item,))
            else:
                done.add(item, wall)
            return None
        self._grouping = False
        if state is None:
            state = _Retrying(item, policy.delays(), started)
        state.sent = True
        assert error is not None
        state.reason, state.error = reason, error
        if reason in PERMANENT_REASONS or (
            answer is not None and not policy.is_retryable_status(answer.status)
        ):
            if answer is not None:
                outage.succeeded(sent_at)  # a host answered: it is the request, not the gateway
            ctl.failed((item,), reason, error)
            return None
        if reason == "deadline":
            ctl.failed((item,), reason, error)
            return None
        retry_after = answer.retry_after if answer is not None else None
        self._outage_cause = (reason, error)
        if outage.failed(retry_after):  # part of a known outage: the event keeps its attempts
            return self._wait_out(state, max(outage.wait_time(), PROBE_POLL), ctl)
        state.attempts += 1
        delay = policy.next_delay(state.delays, retry_after)
        now = time.monotonic()
        if not policy.may_retry(state.attempts, state.started, now, delay):
            ctl.failed((item,), reason, error)
            return None
        state.due = now + delay
        return state

    def _wait_out(self, state: _Retrying, wait: float, ctl: SendControl) -> Optional[_Retrying]:
        """Schedule an event for the gateway's next probe, or fail it when that would end past
        its ``retry_max_time``."""
        now = time.monotonic()
        if (now - state.started) + wait > self._policy.max_time:
            ctl.failed((state.item,), *self._cause(state))
            return None
        state.due = now + wait
        return state

    def _cause(self, state: _Retrying) -> tuple[str, BaseException]:
        """Why an event fails: its own last error, or the outage's for an event never sent."""
        return (state.reason, state.error) if state.sent else self._outage_cause

    def post_with_failover(
        self, path: str, body: Optional[bytes], remaining: Optional[float]
    ) -> tuple[Optional[Answer], Optional[DeliveryError], str]:
        """One attempt across the hosts (:meth:`Gateway.post`)."""
        return self.gateway.post(path, body, remaining)

    def send_at_most_once(
        self,
        path: str,
        body: bytes,
        *,
        sleep: Callable[[float], object] = time.sleep,
        note: Optional[Callable[[str], None]] = None,
    ) -> SendOutcome:
        """POST a request that must not be processed twice (:meth:`Gateway.send_at_most_once`).

        >>> dest.send_at_most_once("/v1/send/sms", body).ok  # doctest: +SKIP
        True
        """
        return self.gateway.send_at_most_once(path, body, self._policy, sleep=sleep, note=note)

    def ping(self, timeout: Optional[float] = None) -> PingResult:
        """GET /v1/health/ping on each host in failover order (:meth:`Gateway.ping`)."""
        return self.gateway.ping(timeout)

    @property
    def http(self) -> HttpTransport:
        return self._http

    def after_fork(self) -> None:
        self._flight = _concurrency.condition()
        self._in_flight = 0
        self._http.after_fork()
        self.governor.after_fork()
        self.outage.after_fork()

    def close(self) -> None:
        self._http.close()
