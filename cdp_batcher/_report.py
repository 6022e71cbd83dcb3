"""What the pipeline tells the application: rate-limited log lines and ``on_error`` calls.

:class:`LogLimiter` writes one line per key per interval, then a count of what it held back.
:class:`FailureReporter` turns a route's failed or dropped items into :class:`FailedEvent`
records for the ``on_error`` callback (a raising callback is logged, never propagated) and logs
each failure once per interval. Both are called without any pipeline lock held.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Optional

from . import _concurrency
from ._config import OnError
from ._event import KIND_NAMES, Item
from ._lifecycle import pipeline_frame
from ._stats import FailedEvent
from .destinations._base import Destination

__all__ = ["FailureReporter", "LogLimiter", "WarnOnce"]

_monotonic = time.monotonic


class LogLimiter:
    """Rate-limited logging: one line per key per ``interval``, then a count of what was held back."""

    def __init__(self, logger: Any, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._lock = _concurrency.lock()
        self._seen: dict[str, list[float]] = {}  # key -> [last emitted, suppressed count]

    def warn(self, key: str, message: str, *, level: str = "warning") -> None:
        now = _monotonic()
        with self._lock:
            state = self._seen.get(key)
            if state is not None and now - state[0] < self.interval:
                state[1] += 1
                return
            held = int(state[1]) if state else 0
            self._seen[key] = [now, 0]
        suffix = f" ({held} similar message(s) suppressed in the last {self.interval:g}s)" if held else ""
        getattr(self.logger, level)("%s%s", message, suffix)

    def after_fork(self) -> None:
        """In a forked child: a parent thread may have held the lock at the fork."""
        self._lock = _concurrency.lock()


class WarnOnce:
    """``warn_once(key, message)``: a warning logged the first time its key is seen, never again."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self.warned: set[str] = set()

    def __call__(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            self.logger.warning("%s", message)


class FailureReporter:
    """A destination's failures, told once: a rate-limited log line and the ``on_error`` call."""

    def __init__(self, destination: Destination, on_error: Optional[OnError], limiter: LogLimiter) -> None:
        self.dest = destination
        self.name = destination.name
        self.on_error = on_error
        self.limiter = limiter

    def failure(self, items: Sequence[Item], reason: str, error: BaseException, *, failed: bool) -> None:
        """Items that failed (or were dropped) while sending: log, then ``on_error``."""
        kind = "failed" if failed else "dropped"
        self.limiter.warn(
            f"{self.name}:{kind}:{reason}", f"{self.name}: {len(items)} event(s) {kind} ({reason}): {error}"
        )
        self.call_on_error(items, reason, error)

    def call_on_error(self, items: Sequence[Item], reason: str, error: BaseException) -> None:
        callback = self.on_error
        if callback is None:
            return
        try:
            records = [self.failed_event(item, reason) for item in items]
            with pipeline_frame:  # also when the pipeline runs inline in a caller's thread
                callback(error, records)
        except Exception as exc:
            self.limiter.warn(
                "on_error", f"on_error callback raised {type(exc).__name__}: {exc}", level="error"
            )

    def failed_event(self, item: Item, reason: str) -> FailedEvent:
        kind = item[0]
        try:
            identifier, event_name, properties = self.dest.describe(item)
        except Exception:
            identifier, event_name, properties = None, None, {}
        return FailedEvent(self.name, KIND_NAMES[kind], identifier, event_name, properties, reason)

    def warn(self, key: str, message: str) -> None:
        """A destination's own rate-limited warning, keyed under its name."""
        self.limiter.warn(f"{self.name}:{key}", message)
