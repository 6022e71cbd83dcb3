"""An outage as a state of the route, not of each event.

While a destination answers, every request may go. The first retryable failure (a 5xx, 408,
429, or no answer at all) marks it **down**: from then on one request, the *probe*, is let
through per backoff step (the retry policy's delays, or ``Retry-After`` when longer, capped at
``retry_after_cap``) and every other request waits for the step to pass. The probe's success
marks the destination up again (steps start over); its failure schedules the next step. A
failure of a request that was sent before the outage was known leaves the schedule as it is.
Events that wait spend none of their attempts; only the first failure that reveals an outage
counts as one, so an event fails for good when ``retry_max_time`` has passed for it.

The destinations call it from their send loops (:meth:`Outage.admit` before a request,
:meth:`Outage.succeeded` / :meth:`Outage.failed` after it, :meth:`Outage.wait_time` to sleep
until the next probe). It never sleeps and takes an injectable clock, so it is tested alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Callable, Optional

from .. import _concurrency
from .._retry import RetryPolicy

__all__ = ["PROBE_POLL", "Outage"]

#: While a probe is in flight, others ask again this often (a probe takes at most ``lease``).
PROBE_POLL = 0.02


class Outage:
    """Down or up; when down, who may probe when (see the module doc). Thread-safe.

    >>> outage = Outage(RetryPolicy(jitter=False), lease=1.0, clock=lambda: 0.0)
    >>> outage.admit(), outage.failed(None), outage.down, outage.wait_time()
    (0.0, False, True, 0.1)
    """

    def __init__(
        self, policy: RetryPolicy, *, lease: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._policy = policy
        self._lease = lease  # a probe not reported after this long no longer holds others back
        self._clock = clock
        self._lock = _concurrency.lock()
        self._down = False
        self._delays: Optional[Iterator[float]] = None
        self._next = 0.0  # when the next probe may go
        self._down_since = 0.0
        self._probe_since: Optional[float] = None
        #: Backoff steps of the current (or last) outage, and probes let through in all.
        self.steps = 0
        self.probes = 0

    def after_fork(self) -> None:
        """A forked child starts up, with a lock of its own (the parent's may be held)."""
        self._lock = _concurrency.lock()
        self._down = False
        self._delays = None
        self._probe_since = None

    def __repr__(self) -> str:
        return f"Outage(down={self._down}, steps={self.steps}, probes={self.probes})"

    @property
    def down(self) -> bool:
        return self._down

    def admit(self) -> float:
        """0.0: send now (when down, this request is the probe); else seconds to wait first."""
        if not self._down:  # the common case: one attribute read, no lock
            return 0.0
        with self._lock:
            if not self._down:
                return 0.0
            now = self._clock()
            if self._probe_since is not None and now - self._probe_since < self._lease:
                return PROBE_POLL
            if now < self._next:
                return self._next - now
            self._probe_since = now
            self.probes += 1
            return 0.0

    def wait_time(self) -> float:
        """Seconds until a request may be admitted (0.0 when up); never admits."""
        if not self._down:
            return 0.0
        with self._lock:
            if not self._down:
                return 0.0
            now = self._clock()
            if self._probe_since is not None and now - self._probe_since < self._lease:
                return PROBE_POLL
            return max(0.0, self._next - now)

    def now(self) -> float:
        """The outage's clock: what a sender passes back as ``sent_at``."""
        return self._clock()

    def succeeded(self, sent_at: Optional[float] = None) -> None:
        """The destination answered (2xx, or an answer that blames the request itself). An
        answer to a request sent (``sent_at``) before the outage began does not end it: the
        probe does."""
        if not self._down:
            return
        with self._lock:
            if sent_at is not None and sent_at < self._down_since:
                return
            self._down = False
            self._probe_since = None
            self._delays = None

    def failed(self, retry_after: Optional[float]) -> bool:
        """A retryable failure. True when the destination was already known to be down (the
        request that failed spends no attempt of its event)."""
        with self._lock:
            now = self._clock()
            was_down = self._down
            if was_down and self._probe_since is None:  # sent before the outage was known
                if retry_after is not None:
                    self._next = max(self._next, now + min(retry_after, self._policy.retry_after_cap))
                return True
            if not was_down or self._delays is None:
                self._down = True
                self._down_since = now
                self._delays = self._policy.delays()
                self.steps = 0
            self._probe_since = None
            self.steps += 1
            self._next = now + self._policy.next_delay(self._delays, retry_after)
            return was_down
