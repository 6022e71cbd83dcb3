"""What the collector keeps: recorded requests, and a recording logger for the client under test."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = [
    "CUSTOMERIO",
    "DESTINATIONS",
    "OPENCDP",
    "Events",
    "RecordedRequest",
    "Recording",
    "RecordingLogger",
    "check_destination",
    "dumps",
    "get_header",
]

OPENCDP = "opencdp"
CUSTOMERIO = "customerio"
DESTINATIONS = (OPENCDP, CUSTOMERIO)

#: Accepted events of one request: (destination, event).
Events = list[tuple[str, dict[str, Any]]]


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes (the collector's answers)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def get_header(headers: Mapping[str, str], name: str) -> Optional[str]:
    """Case-insensitive header lookup."""
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


@dataclass(frozen=True)
class RecordedRequest:
    """One request the collector received.

    ``status`` is the status code answered, or ``None`` when the connection was dropped on
    purpose (:meth:`Collector.drop_next`). ``time`` is :func:`time.monotonic` at arrival (after
    the body was read). ``json`` is the parsed body, or ``None`` when it is empty or not JSON.

    >>> request = collector.requests[-1]  # doctest: +SKIP
    >>> request.path, request.json  # doctest: +SKIP
    ('/v1/persons/track', {'identifier': 'u1', 'eventName': 'e', 'properties': {}})
    """

    method: str
    path: str
    headers: dict[str, str] = field(hash=False)
    body: bytes
    json: Any = field(hash=False, compare=False)
    status: Optional[int]
    time: float

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """Case-insensitive header lookup."""
        value = get_header(self.headers, name)
        return default if value is None else value

    @property
    def dropped(self) -> bool:
        """True when the collector closed the connection without answering."""
        return self.status is None

    def __repr__(self) -> str:  # never show credentials
        shown = {k: ("<redacted>" if k.lower() == "authorization" else v) for k, v in self.headers.items()}
        return (
            f"RecordedRequest(method={self.method!r}, path={self.path!r}, status={self.status!r}, "
            f"headers={shown!r}, body={self.body[:200]!r}{'...' if len(self.body) > 200 else ''}, "
            f"time={self.time!r})"
        )


class RecordingLogger:
    """A logger for tests: keeps every formatted line, per level (thread-safe).

    Pass it as ``CDPClient(logger=...)`` to assert on what the library logged.

    >>> log = RecordingLogger()
    >>> client = CDPClient(cdp_api_key="k", logger=log)  # doctest: +SKIP
    >>> log.at("warning")  # doctest: +SKIP
    ['...']
    """

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def _log(self, level: str, msg: str, *args: Any) -> None:
        with self._lock:
            self.lines.append((level, msg % args if args else msg))

    def debug(self, msg: str, *args: Any) -> None:
        self._log("debug", msg, *args)

    def info(self, msg: str, *args: Any) -> None:
        self._log("info", msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        self._log("warning", msg, *args)

    def error(self, msg: str, *args: Any) -> None:
        self._log("error", msg, *args)

    def at(self, level: str) -> list[str]:
        """The lines logged at ``level`` ("debug", "info", "warning" or "error")."""
        with self._lock:
            return [line for lvl, line in self.lines if lvl == level]


class Recording:
    """Every request received and every event accepted, per destination (thread-safe)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._requests: list[RecordedRequest] = []
        self._events: dict[str, list[dict[str, Any]]] = {d: [] for d in DESTINATIONS}

    def record(self, request: RecordedRequest, events: Optional[Events] = None) -> list[int]:
        """Keep a request and its accepted events; each event's count in its destination."""
        counts: list[int] = []
        with self._cond:
            self._requests.append(request)
            if events:
                for destination, event in events:
                    lst = self._events[destination]
                    lst.append(event)
                    counts.append(len(lst))
                self._cond.notify_all()
        return counts

    def requests(self) -> list[RecordedRequest]:
        with self._cond:
            return list(self._requests)

    def events(self, destination: str) -> list[dict[str, Any]]:
        with self._cond:
            snapshot = list(self._events[check_destination(destination)])
        return copy.deepcopy(snapshot)

    def count(self, destination: str) -> int:
        with self._cond:
            return len(self._events[check_destination(destination)])

    def wait_for(self, n: int, destination: str, timeout: float) -> bool:
        events = self._events[check_destination(destination)]
        with self._cond:
            return self._cond.wait_for(lambda: len(events) >= n, timeout)

    def clear(self) -> None:
        with self._cond:
            self._requests.clear()
            for lst in self._events.values():
                lst.clear()
            self._cond.notify_all()


def check_destination(destination: str) -> str:
    if destination not in DESTINATIONS:
        raise ValueError(f"destination must be 'opencdp' or 'customerio', got {destination!r}")
    return destination
