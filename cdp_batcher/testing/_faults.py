"""Fault injection: what the collector does to a request before (or instead of) answering it."""

from __future__ import annotations

import datetime as _dt
import email.utils
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ._records import dumps

__all__ = ["Decision", "FaultBody", "Faults", "check_count", "check_status"]

FaultBody = Union[bytes, str, Mapping[str, Any], list[Any], None]


@dataclass
class _CountedFault:
    remaining: int
    path: Optional[str]
    status: int = 0  # 0 for drops
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class _TimedFault:
    until: float
    status: int
    path: Optional[str]
    body: bytes


@dataclass
class Decision:
    """What to do with one request: wait ``delay``, then drop it, or answer ``status`` (0: answer normally)."""

    delay: float = 0.0
    drop: bool = False
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def _matches(prefix: Optional[str], path: str) -> bool:
    return prefix is None or path.startswith(prefix)


def _fault_body(body: FaultBody, default: Mapping[str, Any]) -> bytes:
    if body is None:
        return dumps(dict(default))
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return dumps(body)


def check_count(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    return n


def check_status(status: int) -> int:
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError(f"status must be an HTTP status code, got {status!r}")
    return status


def _take(faults: list[_CountedFault], path: str) -> Optional[_CountedFault]:
    """Consume one use of the first (FIFO) fault matching ``path``."""
    for i, fault in enumerate(faults):
        if fault.remaining > 0 and _matches(fault.path, path):
            fault.remaining -= 1
            if fault.remaining == 0:
                del faults[i]
            return fault
    return None


class Faults:
    """The faults installed on a collector (thread-safe); :meth:`decide` consumes them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counted: list[_CountedFault] = []  # fail_next / rate_limit_next, FIFO
        self._drops: list[_CountedFault] = []
        self._timed: list[_TimedFault] = []
        self._latency: dict[Optional[str], float] = {}

    def fail_next(
        self, n: int, status: int, path: Optional[str], headers: Optional[Mapping[str, str]], body: FaultBody
    ) -> None:
        fault = _CountedFault(
            check_count(n),
            path,
            check_status(status),
            dict(headers or {}),
            _fault_body(body, {"error": "injected fault", "status": status}),
        )
        with self._lock:
            self._counted.append(fault)

    def fail_for(self, seconds: float, status: int, path: Optional[str]) -> None:
        fault = _TimedFault(
            time.monotonic() + float(seconds),
            check_status(status),
            path,
            dumps({"error": "injected outage", "status": status}),
        )
        with self._lock:
            self._timed.append(fault)

    def rate_limit_next(
        self, n: int, retry_after: Union[str, int, float, _dt.datetime, None], path: Optional[str]
    ) -> None:
        headers: dict[str, str] = {}
        if isinstance(retry_after, _dt.datetime):
            aware = retry_after if retry_after.tzinfo else retry_after.replace(tzinfo=_dt.timezone.utc)
            headers["Retry-After"] = email.utils.format_datetime(aware.astimezone(_dt.timezone.utc), True)
        elif retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        fault = _CountedFault(check_count(n), path, 429, headers, dumps({"error": "rate limited"}))
        with self._lock:
            self._counted.append(fault)

    def set_latency(self, seconds: float, path: Optional[str]) -> None:
        seconds = float(seconds)
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        with self._lock:
            if seconds == 0:
                self._latency.pop(path, None)
            else:
                self._latency[path] = seconds

    def drop_next(self, n: int, path: Optional[str]) -> None:
        fault = _CountedFault(check_count(n), path)
        with self._lock:
            self._drops.append(fault)

    def reset(self) -> None:
        with self._lock:
            self._counted.clear()
            self._drops.clear()
            self._timed.clear()
            self._latency.clear()

    def decide(self, path: str) -> Decision:
        """The fate of a request to ``path``: latency, then a drop, a counted fault or an outage."""
        decision = Decision()
        now = time.monotonic()
        with self._lock:
            delays = [s for p, s in self._latency.items() if _matches(p, path)]
            decision.delay = max(delays, default=0.0)
            if _take(self._drops, path) is not None:
                decision.drop = True
                return decision
            fault = _take(self._counted, path)
            if fault is not None:
                decision.status, decision.headers, decision.body = fault.status, fault.headers, fault.body
                return decision
            self._timed = [t for t in self._timed if t.until > now]
            for timed in self._timed:
                if _matches(timed.path, path):
                    decision.status, decision.body = timed.status, timed.body
                    break
        return decision
