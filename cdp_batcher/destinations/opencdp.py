"""OpenCDP gateway: one POST per event, failover across gateway hosts, shared retry policy.

Senders in use follow the link (:meth:`OpenCdpDestination.concurrency_hint`): the fastest
wall time of the last 8 requests over 1.5 times their average CPU time (``time.thread_time``),
1 to ``concurrency`` (all of them until a request has been timed). A fast link (answers within
a few hundred µs) gets 1 or 2 senders, as more would only take turns on the GIL, against each
other and the application's threads; a 50 ms round trip keeps every sender busy. The fastest
wall time and the 1.5 because a request's wall time also counts its waits for the GIL: an
average over the plain CPU time would hold up whatever concurrency the route started with,
while 1.5 still adds a second sender when the server takes as long as the request's own CPU.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable, Optional

import requests

from .._errors import DeliveryError
from .._event import (
    IDENTIFY,
    TRACK,
    Item,
    OpenCdpDevice,
    OpenCdpIdentify,
    OpenCdpTrack,
    decode,
    encode,
)
from .._retry import NOT_SENT, RetryPolicy
from ._base import Destination, DeviceInfo, SendControl
from ._http import Answer, HttpTransport, TransportError
from ._transport import PERMANENT_REASONS, clean_text

__all__ = ["HostRing", "OpenCdpDestination", "PingResult", "SendOutcome", "server_message"]

PATHS = ("/v1/persons/identify", "/v1/persons/track", "/v1/persons/registerDevice")
PING_PATH = "/v1/health/ping"

#: ``concurrency_hint``: requests whose fastest wall time counts; weight of the newest request
#: in the average CPU time; the divisor of their ratio (see above); the least CPU time a request
#: is taken to cost (a coarse clock reads 0).
TIMED_REQUESTS = 8
CPU_WEIGHT = 0.25
HINT_DIVISOR = 1.5
MIN_REQUEST_CPU = 20e-6

#: After this long on a fallback host, the primary is tried first again.
PRIMARY_RETRY_AFTER = 30.0


class PingResult:
    """Which gateway host answered a ping, with what status, and how fast.

    >>> result = client.ping()  # doctest: +SKIP
    >>> result.host, result.status  # doctest: +SKIP
    ('https://api.opencdp.io/gateway/data-gateway', 200)
    """

    __slots__ = ("elapsed", "host", "status")

    def __init__(self, host: str, status: int, elapsed: float) -> None:
        self.host = host
        self.status = status
        self.elapsed = elapsed

    def __repr__(self) -> str:
        return f"PingResult(host={self.host!r}, status={self.status}, elapsed={self.elapsed:.3f})"


@dataclasses.dataclass(frozen=True)
class SendOutcome:
    """What :meth:`OpenCdpDestination.send_at_most_once` came to.

    ``answer`` is the last HTTP answer (None when none came), ``host`` the host that gave it or
    was tried last, ``error`` None on success, ``reason`` ``"ok"`` or a failure reason
    (``http_500``, ``timeout``, ``connection_error``, ``no_host``), ``attempts`` the requests made
    and ``hosts_tried`` each host tried, in order, once.
    """

    answer: Optional[Answer]
    host: Optional[str]
    error: Optional[DeliveryError]
    reason: str
    attempts: int
    hosts_tried: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.error is None and self.answer is not None and self.answer.ok


def server_message(answer: Answer) -> str:
    """The server's error text: ``message``/``error`` of a JSON object answer, else the raw text.

    >>> server_message(Answer(400, None, b'{"error": "bad to"}'))
    'bad to'
    """
    try:
        data = decode(answer.content) if answer.content else None
    except Exception:
        data = None
    if isinstance(data, dict):
        for key in ("message", "error"):
            value = data.get(key)
            if isinstance(value, str) and value.strip():
                return clean_text(value)
    return answer.error_text()


def http_error(path: str, host: str, answer: Answer, tried: Sequence[str]) -> DeliveryError:
    """The error for a non-2xx answer: status, host and the server's message (never the key)."""
    text = server_message(answer)
    return DeliveryError(
        f"{path} to {host}: HTTP {answer.status}" + (f": {text}" if text else ""),
        status_code=answer.status,
        host=host,
        server_message=text or None,
        hosts_tried=tuple(tried),
    )


class _Retrying:
    """Retry state of one event: its backoff delays, attempts so far and when it is due."""

    __slots__ = ("attempts", "delays", "due", "error", "item", "reason", "started")

    def __init__(self, item: Item, delays: Iterator[float], started: float) -> None:
        self.item = item
        self.delays = delays
        self.started = started
        self.attempts = 0
        self.due = started
        self.reason = ""
        self.error: BaseException = DeliveryError("not attempted")


class HostRing:
    """Gateway hosts in failover order, sticky to the last host that answered.

    The primary is tried first again ``PRIMARY_RETRY_AFTER`` seconds after a failover.
    """

    def __init__(self, hosts: Sequence[str]) -> None:
        self.hosts = tuple(hosts)
        self._preferred = 0
        self._since = 0.0

    def order(self) -> Sequence[str]:
        start = self._preferred
        if start and time.monotonic() - self._since > PRIMARY_RETRY_AFTER:
            start = self._preferred = 0
        if start == 0:
            return self.hosts
        return self.hosts[start:] + self.hosts[:start]

    def answered(self, host: str) -> None:
        index = self.hosts.index(host)
        if index != self._preferred:
            self._preferred = index
            self._since = time.monotonic()


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
        self.ring = HostRing(endpoints)
        self._timeout = timeout
        self._policy = policy
        self._headers = {"Authorization": api_key, "Content-Type": "application/json"}
        self._http = HttpTransport(session, pool_size=concurrency)
        self._lock = threading.Lock()
        self._walls: deque[float] = deque(maxlen=TIMED_REQUESTS)  # wall times of the last requests
        self._cpu = 0.0  # moving average of a request's CPU time

    def __repr__(self) -> str:
        return f"OpenCdpDestination(hosts={self.ring.hosts!r})"

    # ------------------------------------------------------------------------------- encoding
    def encode_identify(self, identifier: str, properties: Any, timestamp: float) -> bytes:
        return encode(OpenCdpIdentify(identifier, properties))

    def encode_track(self, identifier: str, event_name: str, properties: Any, timestamp: float) -> bytes:
        return encode(OpenCdpTrack(identifier, event_name, properties))

    def encode_device(self, identifier: str, device: DeviceInfo, timestamp: float) -> bytes:
        return encode(
            OpenCdpDevice(
                identifier=identifier,
                deviceId=device.device_id,
                platform=device.platform,
                fcmToken=device.fcm_token,
                apnToken=device.apn_token,
                name=device.name,
                osVersion=device.os_version,
                model=device.model,
                appVersion=device.app_version,
                last_active_at=device.last_active_at,
                attributes=device.attributes,
            )
        )

    def describe(self, item: Item) -> tuple[Optional[str], Optional[str], Mapping[str, Any]]:
        kind, body = item
        data = decode(body)
        props = data.get("properties") if kind in (IDENTIFY, TRACK) else data.get("attributes")
        return data.get("identifier"), data.get("eventName"), props or {}

    # -------------------------------------------------------------------------------- sending
    def send(self, items: Sequence[Item], ctl: SendControl) -> None:
        """Send a run of events one request each. An event that must be retried waits out its
        backoff while the rest of the run goes ahead: one failing event never holds up others."""
        retrying = [state for state in (self._attempt(item, None, ctl) for item in items) if state]
        while retrying:
            due = min(state.due for state in retrying)
            wait = due - time.monotonic()
            if wait > 0 and not ctl.sleep(wait):  # the deadline comes first: no retry can happen
                for state in retrying:
                    ctl.failed((state.item,), state.reason, state.error)
                return
            now = time.monotonic()
            later: list[_Retrying] = []
            for state in retrying:
                if state.due > now:
                    later.append(state)
                    continue
                ctl.retried(1)
                again = self._attempt(state.item, state, ctl)
                if again is not None:
                    later.append(again)
            retrying = later

    def concurrency_hint(self) -> int:
        """Senders worth running: ceil(fastest recent wall time / (1.5 * CPU time)), 1 to concurrency."""
        with self._lock:
            if not self._walls:
                return self.concurrency
            wanted = math.ceil(min(self._walls) / (HINT_DIVISOR * max(self._cpu, MIN_REQUEST_CPU)))
        return max(1, min(self.concurrency, wanted))

    def _timed(self, wall: float, cpu: float) -> None:
        """Record one request's wall and CPU time (success or failure)."""
        with self._lock:
            self._cpu = cpu if not self._walls else self._cpu + CPU_WEIGHT * (cpu - self._cpu)
            self._walls.append(wall)

    def _attempt(self, item: Item, state: Optional[_Retrying], ctl: SendControl) -> Optional[_Retrying]:
        """One attempt across the hosts: resolves the event, or returns when to try it again."""
        policy = self._policy
        if state is None:
            state = _Retrying(item, policy.delays(), time.monotonic())
        started, cpu = time.perf_counter(), time.thread_time()
        answer, error, reason = self.post_with_failover(PATHS[item[0]], item[1], ctl.remaining())
        self._timed(time.perf_counter() - started, time.thread_time() - cpu)
        if answer is not None and answer.ok:
            ctl.delivered((item,))
            return None
        assert error is not None
        state.attempts += 1
        if reason in PERMANENT_REASONS or (
            answer is not None and not policy.is_retryable_status(answer.status)
        ):
            ctl.failed((item,), reason, error)
            return None
        delay = policy.next_delay(state.delays, answer.retry_after if answer is not None else None)
        now = time.monotonic()
        if not policy.may_retry(state.attempts, state.started, now, delay):
            ctl.failed((item,), reason, error)
            return None
        state.due, state.reason, state.error = now + delay, reason, error
        return state

    def post_with_failover(
        self, path: str, body: Optional[bytes], remaining: Optional[float], *, method: str = "POST"
    ) -> tuple[Optional[Answer], Optional[DeliveryError], str]:
        """One attempt across the hosts: the answer, or the error and reason of the last host.

        Moves to the next host on a network error or a non-2xx answer, except answers that say
        the request itself is bad (400, 401, 403, 404, 413, 422).
        """
        tried: list[str] = []
        answer: Optional[Answer] = None
        error: Optional[DeliveryError] = None
        reason = "no_host"
        for host in self.ring.order():
            timeout = self._timeout
            if remaining is not None:
                left = remaining
                if left <= 0:
                    reason = "deadline"
                    error = DeliveryError(
                        "deadline passed before the request could be sent",
                        host=host,
                        hosts_tried=tuple(tried),
                    )
                    break
                timeout = min(timeout, left)
            tried.append(host)
            start = time.monotonic()
            try:
                answer = self._http.request(
                    method, host + path, body=body, headers=self._headers, timeout=timeout
                )
            except TransportError as exc:
                answer = None
                reason = exc.reason
                error = DeliveryError(f"{path} to {host}: {exc}", host=host, hosts_tried=tuple(tried))
            else:
                if answer.ok:
                    self.ring.answered(host)
                    return answer, None, "ok"
                reason = f"http_{answer.status}"
                error = http_error(path, host, answer, tried)
                if not RetryPolicy.should_fail_over(answer.status):
                    return answer, error, reason
            if remaining is not None:
                remaining -= time.monotonic() - start
        if error is None:
            error = DeliveryError("no gateway host configured")
        return answer, error, reason

    def send_at_most_once(
        self,
        path: str,
        body: bytes,
        *,
        sleep: Callable[[float], object] = time.sleep,
        note: Optional[Callable[[str], None]] = None,
    ) -> SendOutcome:
        """POST a request that must not be processed twice (a transactional send).

        Moves to the next host, and after a round of every host waits and starts a new round,
        only when the request surely did not reach a server: no connection could be made
        (refused, DNS, TLS handshake, connect timeout: ``TransportError.maybe_sent`` is False) or
        the answer is 429/503 (refused before processing). A 2xx, any other status, a read
        timeout or a reset once the request was sent end the call at once. Waits come from the
        retry policy (backoff, ``Retry-After`` capped at ``retry_after_cap``; the largest one of
        a round is honoured); rounds stop at ``max_retries`` retries or when the next wait would
        end past ``max_time`` seconds after the start. ``note`` receives debug lines (no keys,
        no bodies).

        >>> dest.send_at_most_once("/v1/send/sms", body).ok  # doctest: +SKIP
        True
        """
        policy = self._policy
        delays = policy.delays()
        started = time.monotonic()
        attempts = rounds = 0
        tried: list[str] = []
        last = SendOutcome(None, None, DeliveryError("no gateway host configured"), "no_host", 0, ())
        while True:
            retry_after: Optional[float] = None
            for host in self.ring.order():
                if rounds and time.monotonic() - started >= policy.max_time:
                    return last
                attempts += 1
                if host not in tried:
                    tried.append(host)
                try:
                    answer = self._http.request(
                        "POST", host + path, body=body, headers=self._headers, timeout=self._timeout
                    )
                except TransportError as exc:
                    if exc.maybe_sent:
                        error = DeliveryError(
                            f"{path} to {host}: {exc}; not retried (the request may have reached the server)",
                            host=host,
                            hosts_tried=tuple(tried),
                        )
                        return SendOutcome(None, host, error, exc.reason, attempts, tuple(tried))
                    error = DeliveryError(f"{path} to {host}: {exc}", host=host, hosts_tried=tuple(tried))
                    last = SendOutcome(None, host, error, exc.reason, attempts, tuple(tried))
                    if note is not None:
                        note(f"{path}: {host} was not reached ({exc}); trying the next host")
                    continue
                if answer.ok:
                    self.ring.answered(host)
                    return SendOutcome(answer, host, None, "ok", attempts, tuple(tried))
                error = http_error(path, host, answer, tried)
                last = SendOutcome(answer, host, error, f"http_{answer.status}", attempts, tuple(tried))
                if answer.status not in NOT_SENT:
                    return last
                if answer.retry_after is not None:
                    retry_after = max(retry_after or 0.0, answer.retry_after)
                if note is not None:
                    note(f"{path}: {host} refused the request (HTTP {answer.status}); trying the next host")
            if not tried:
                return last
            rounds += 1
            delay = policy.next_delay(delays, retry_after)
            if not policy.may_retry(rounds, started, time.monotonic(), delay):
                return last
            if note is not None:
                note(f"{path}: no host took the request; retrying in {delay:.2f}s")
            if sleep(delay) is False:
                return last

    def ping(self, timeout: Optional[float] = None) -> PingResult:
        """GET /v1/health/ping on each host in failover order; the first 2xx wins.

        Raises DeliveryError naming every host tried (in the order tried) when none answers 2xx.
        """
        failures: list[str] = []
        limit = self._timeout if timeout is None else timeout
        last_status: Optional[int] = None
        order = tuple(self.ring.order())
        for host in order:
            start = time.monotonic()
            try:
                answer = self._http.request(
                    "GET", host + PING_PATH, body=None, headers=self._headers, timeout=limit
                )
            except TransportError as exc:
                failures.append(f"{host} ({exc})")
                continue
            if answer.ok:
                self.ring.answered(host)
                return PingResult(host, answer.status, time.monotonic() - start)
            last_status = answer.status
            failures.append(f"{host} (HTTP {answer.status})")
        raise DeliveryError(
            "ping failed on every gateway host: " + "; ".join(failures),
            status_code=last_status,
            host=order[-1] if order else None,
            hosts_tried=order,
        )

    @property
    def http(self) -> HttpTransport:
        return self._http

    def after_fork(self) -> None:
        self._http.after_fork()

    def close(self) -> None:
        self._http.close()
