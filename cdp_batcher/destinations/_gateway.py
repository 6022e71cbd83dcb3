"""The hosts a destination posts to, and the one failover loop every request goes through.

:class:`HostRing` keeps the hosts in failover order, sticky to the last host that answered
(the primary is tried first again ``PRIMARY_RETRY_AFTER`` seconds after a failover).
:meth:`Gateway.tries` is the one loop over them: it walks the ring once, cuts each request's
timeout to the time left, sends, and yields each outcome as a :class:`Try`; the caller decides
whether the outcome ends the round. The three ways of calling it sit side by side below:
:meth:`Gateway.post` (queued events: fail over on any error but a "bad request" answer),
:meth:`Gateway.send_at_most_once` (transactional sends: fail over and retry only when the
request surely did not reach a server) and :meth:`Gateway.ping` (the first 2xx wins).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Callable, Optional

from .._errors import DeliveryError
from .._event import decode
from .._retry import NOT_SENT, RetryPolicy
from ._http import Answer, HttpTransport, TransportError
from ._transport import clean_text

__all__ = [
    "PING_PATH",
    "PRIMARY_RETRY_AFTER",
    "Gateway",
    "HostRing",
    "PingResult",
    "SendOutcome",
    "Try",
    "http_error",
    "server_message",
]

PING_PATH = "/v1/health/ping"
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
    """What :meth:`Gateway.send_at_most_once` came to.

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
        hosts = self.hosts
        if hosts[self._preferred] == host:  # the usual answer: the preferred host, nothing changes
            return
        self._preferred = hosts.index(host)
        self._since = time.monotonic()


@dataclasses.dataclass
class Try:
    """One host's turn in a round: the answer, or the transport error, or ``expired`` (the time
    left ran out before this host was tried). ``tried`` holds the hosts tried before this one."""

    host: str
    tried: tuple[str, ...]
    answer: Optional[Answer] = None
    error: Optional[TransportError] = None
    expired: bool = False


class Gateway:
    """A destination's hosts, its HTTP transport, credentials and per-request timeout."""

    def __init__(
        self, http: HttpTransport, hosts: Sequence[str], headers: Mapping[str, str], timeout: float
    ) -> None:
        self.http = http
        self.ring = HostRing(hosts)
        self.headers = headers  # one object: the transport caches the encoded head by identity
        self.timeout = timeout

    def tries(
        self,
        method: str,
        path: str,
        body: Optional[bytes],
        *,
        remaining: Optional[float] = None,
        timeout: Optional[float] = None,
        stop: Optional[Callable[[], bool]] = None,
        hosts: Optional[Sequence[str]] = None,
        tried: Sequence[str] = (),
    ) -> Iterator[Try]:
        """The failover loop: one round over the hosts in ring order, one request each.

        Each request's timeout is ``timeout`` (default the gateway's), cut to what is left of
        ``remaining`` seconds; once that is spent, or when ``stop()`` says so before a host,
        one last ``expired`` try ends the round. A 2xx makes its host the preferred one. The
        caller stops the round (``break``/``return``) when an outcome is final. ``hosts`` and
        ``tried`` continue a round begun by the caller: the hosts left, those already tried.
        """
        limit = self.timeout if timeout is None else timeout
        tried = list(tried)
        for host in self.ring.order() if hosts is None else hosts:
            request_timeout = limit
            if stop is not None and stop():
                yield Try(host, tuple(tried), expired=True)
                return
            if remaining is not None:
                if remaining <= 0:
                    yield Try(host, tuple(tried), expired=True)
                    return
                request_timeout = min(limit, remaining)
            start = time.monotonic()
            try:
                answer = self.http.request(
                    method, host + path, body=body, headers=self.headers, timeout=request_timeout
                )
            except TransportError as exc:
                tried.append(host)
                yield Try(host, tuple(tried[:-1]), error=exc)
            else:
                tried.append(host)
                if answer.ok:
                    self.ring.answered(host)
                yield Try(host, tuple(tried[:-1]), answer=answer)
            if remaining is not None:
                remaining -= time.monotonic() - start

    # ------------------------------------------------------------------ the three ways to call it
    def post(
        self, path: str, body: Optional[bytes], remaining: Optional[float]
    ) -> tuple[Optional[Answer], Optional[DeliveryError], str]:
        """Queued events: one attempt across the hosts; the answer, or the error and reason of
        the last host. Moves to the next host on a network error or a non-2xx answer, except
        answers that say the request itself is bad (400, 401, 403, 404, 413, 422)."""
        hosts = self.ring.order()
        if not hosts or (remaining is not None and remaining <= 0):
            return self._settle(path, self.tries("POST", path, body, remaining=remaining, hosts=hosts))
        # The first host inline: the common case (its 2xx) makes no Try and no generator.
        host, limit = hosts[0], self.timeout
        start = time.monotonic()
        try:
            answer = self.http.request(
                "POST",
                host + path,
                body=body,
                headers=self.headers,
                timeout=limit if remaining is None else min(limit, remaining),
            )
        except TransportError as exc:
            first = Try(host, (), error=exc)
        else:
            if answer.ok:
                self.ring.answered(host)
                return answer, None, "ok"
            first = Try(host, (), answer=answer)
        if remaining is not None:
            remaining -= time.monotonic() - start
        return self._go_on(path, body, remaining, hosts, first)

    def post_group(
        self, requests_: Sequence[tuple[str, bytes]], remaining: Optional[float]
    ) -> list[tuple[Optional[Answer], Optional[DeliveryError], str]]:
        """:meth:`post` for several events (path, body) at once: all of them to the first host
        together (:meth:`HttpTransport.request_group`), then, for each that did not get a 2xx,
        the rest of its round over the other hosts, as :meth:`post` goes on."""
        hosts = self.ring.order()
        if not hosts or (remaining is not None and remaining <= 0):
            return [self.post(path, body, remaining) for path, body in requests_]
        host, limit = hosts[0], self.timeout
        start = time.monotonic()
        outcomes = self.http.request_group(
            "POST",
            [(host + path, body) for path, body in requests_],
            headers=self.headers,
            timeout=limit if remaining is None else min(limit, remaining),
        )
        if remaining is not None:
            remaining -= time.monotonic() - start
        results: list[tuple[Optional[Answer], Optional[DeliveryError], str]] = []
        for (path, body), outcome in zip(requests_, outcomes):
            if isinstance(outcome, TransportError):
                first = Try(host, (), error=outcome)
            elif outcome.ok:
                self.ring.answered(host)
                results.append((outcome, None, "ok"))
                continue
            else:
                first = Try(host, (), answer=outcome)
            results.append(self._go_on(path, body, remaining, hosts, first))
        return results

    def _go_on(
        self, path: str, body: Optional[bytes], remaining: Optional[float], hosts: Sequence[str], first: Try
    ) -> tuple[Optional[Answer], Optional[DeliveryError], str]:
        """The rest of a round after the first host's outcome ``first`` (not a 2xx)."""
        rest = self.tries("POST", path, body, remaining=remaining, hosts=hosts[1:], tried=(first.host,))
        return self._settle(path, itertools.chain((first,), rest))

    @staticmethod
    def _settle(path: str, rounds: Iterable[Try]) -> tuple[Optional[Answer], Optional[DeliveryError], str]:
        """Walk a round's outcomes to the end of :meth:`post`: the first 2xx or final answer,
        else the last host's error."""
        answer: Optional[Answer] = None
        error: Optional[DeliveryError] = None
        reason = "no_host"
        for t in rounds:
            tried = (*t.tried, t.host)
            if t.expired:
                reason = "deadline"
                error = DeliveryError(
                    "deadline passed before the request could be sent", host=t.host, hosts_tried=t.tried
                )
                break
            if t.error is not None:
                answer = None
                reason = t.error.reason
                error = DeliveryError(f"{path} to {t.host}: {t.error}", host=t.host, hosts_tried=tried)
                continue
            answer = t.answer
            assert answer is not None
            if answer.ok:
                return answer, None, "ok"
            reason = f"http_{answer.status}"
            error = http_error(path, t.host, answer, tried)
            if not RetryPolicy.should_fail_over(answer.status):
                return answer, error, reason
        if error is None:
            error = DeliveryError("no gateway host configured")
        return answer, error, reason

    def send_at_most_once(
        self,
        path: str,
        body: bytes,
        policy: RetryPolicy,
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
        """
        delays = policy.delays()
        started = time.monotonic()
        attempts = rounds = 0
        tried: list[str] = []
        last = SendOutcome(None, None, DeliveryError("no gateway host configured"), "no_host", 0, ())
        while True:
            retry_after: Optional[float] = None
            out_of_time = (lambda: time.monotonic() - started >= policy.max_time) if rounds else None
            for t in self.tries("POST", path, body, stop=out_of_time):
                if t.expired:
                    return last
                host = t.host
                attempts += 1
                if host not in tried:
                    tried.append(host)
                exc = t.error
                if exc is not None:
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
                answer = t.answer
                assert answer is not None
                if answer.ok:
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
        last_status: Optional[int] = None
        order = tuple(self.ring.order())
        start = time.monotonic()
        for t in self.tries("GET", PING_PATH, None, timeout=timeout):
            if t.error is not None:
                failures.append(f"{t.host} ({t.error})")
            else:
                answer = t.answer
                assert answer is not None
                if answer.ok:
                    return PingResult(t.host, answer.status, time.monotonic() - start)
                last_status = answer.status
                failures.append(f"{t.host} (HTTP {answer.status})")
            start = time.monotonic()
        raise DeliveryError(
            "ping failed on every gateway host: " + "; ".join(failures),
            status_code=last_status,
            host=order[-1] if order else None,
            hosts_tried=order,
        )
