"""The retry policy: a pure value object. It decides and computes; it never sleeps.

Delays come from ``backoff``'s wait generators (exponential with full jitter); the waiting
itself is done by the caller on an interruptible condition, so shutdown can cut it short.
"""

from __future__ import annotations

import dataclasses
import email.utils
import time
from collections.abc import Iterator
from typing import Optional

import backoff

__all__ = ["NOT_SENT", "RETRYABLE_STATUSES", "RetryPolicy", "parse_retry_after"]

#: Statuses worth another attempt on the batching routes (CONTRACT.md).
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 522, 524})
#: Statuses that say the request itself is wrong: no other host will take it either.
REQUEST_REJECTED_STATUSES = frozenset({400, 401, 403, 404, 413, 422})
#: Statuses that mean "refused before processing" (safe to retry a non-idempotent send).
NOT_SENT = frozenset({429, 503})


def parse_retry_after(value: Optional[str], *, now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or None.

    >>> parse_retry_after("3")
    3.0
    >>> parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0)
    10.0
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How many attempts, how long between them, and which outcomes deserve one.

    ``delays()`` yields the wait before each retry: ``min(cap, factor * 2**n)``, with full
    jitter unless ``jitter=False`` (tests). ``Retry-After`` replaces the computed wait when
    larger, capped at ``retry_after_cap``.
    """

    max_retries: int = 8
    max_time: float = 60.0
    factor: float = 0.1
    max_delay: float = 10.0
    retry_after_cap: float = 60.0
    jitter: bool = True

    def delays(self) -> Iterator[float]:
        gen = backoff.expo(base=2, factor=self.factor, max_value=self.max_delay)
        next(gen)  # backoff's generators are primed with a None send
        for value in gen:
            yield backoff.full_jitter(value) if self.jitter else float(value)

    def next_delay(self, delays: Iterator[float], retry_after: Optional[float]) -> float:
        computed = next(delays)
        if retry_after is None:
            return computed
        return max(computed, min(retry_after, self.retry_after_cap))

    def may_retry(self, attempts_made: int, started: float, now: float, delay: float) -> bool:
        """True while another attempt fits the count and the per-event time budget."""
        return attempts_made <= self.max_retries and (now - started) + delay <= self.max_time

    @staticmethod
    def is_retryable_status(status: int) -> bool:
        return status in RETRYABLE_STATUSES

    @staticmethod
    def should_fail_over(status: int) -> bool:
        """A non-2xx answer moves to the next host unless it says the request itself is bad."""
        return status not in REQUEST_REJECTED_STATUSES
