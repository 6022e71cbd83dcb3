"""Counters' frozen snapshots, the delivery report, and failed-event records.

The live counters belong to each destination's route (see ``_ledger``), updated under the
queue's own lock; this module only holds the immutable values handed to users.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any, Optional

__all__ = ["DeliveryReport", "DestinationReport", "DestinationStats", "FailedEvent", "Stats", "frozen_counts"]


def frozen_counts(counts: Mapping[str, int]) -> Mapping[str, int]:
    """A read-only copy of a reason → count mapping, zero counts left out."""
    return types.MappingProxyType({k: v for k, v in counts.items() if v})


@dataclasses.dataclass(frozen=True)
class DestinationStats:
    """One destination's counters at one moment.

    Invariant: ``enqueued == delivered + sum(failed) + sum(dropped) + queued + in_flight``.

    ``stalls`` counts the times events waited with no delivery attempt for
    ``max(5 s, 10 x flush_interval)`` (each logged once as an ERROR naming the likely causes);
    ``queued_bytes`` is the encoded size of what is queued; ``last_delivery_age`` the seconds since
    an event was last delivered (None before the first).

    >>> s = client.stats().destinations["opencdp"]  # doctest: +SKIP
    >>> s.enqueued == s.delivered + s.failed_total + s.dropped_total + s.queued + s.in_flight  # doctest: +SKIP
    True
    """

    enqueued: int
    delivered: int
    failed: Mapping[str, int]
    dropped: Mapping[str, int]
    retried: int
    queued: int
    in_flight: int
    stalls: int = 0
    queued_bytes: int = 0
    last_delivery_age: Optional[float] = None

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "enqueued": self.enqueued,
            "delivered": self.delivered,
            "failed": dict(self.failed),
            "dropped": dict(self.dropped),
            "retried": self.retried,
            "queued": self.queued,
            "in_flight": self.in_flight,
            "stalls": self.stalls,
            "queued_bytes": self.queued_bytes,
            "last_delivery_age": self.last_delivery_age,
        }


@dataclasses.dataclass(frozen=True)
class Stats:
    """A frozen snapshot of a client's counters: ``enqueued`` calls accepted, then per destination.

    >>> client.stats().destinations["opencdp"].delivered  # doctest: +SKIP
    42
    """

    enqueued: int
    destinations: Mapping[str, DestinationStats]

    def as_dict(self) -> dict[str, Any]:
        return {
            "enqueued": self.enqueued,
            "destinations": {k: v.as_dict() for k, v in self.destinations.items()},
        }


@dataclasses.dataclass(frozen=True)
class DestinationReport:
    """What one destination resolved while a flush or shutdown ran, and what it left pending.

    >>> client.flush(timeout=10).destinations["opencdp"].pending  # doctest: +SKIP
    0
    """

    delivered: int
    failed: Mapping[str, int]
    dropped: Mapping[str, int]
    pending: int

    def __bool__(self) -> bool:
        return self.pending == 0 and not self.failed and not self.dropped


@dataclasses.dataclass(frozen=True)
class DeliveryReport:
    """The result of :meth:`CDPClient.flush` / :meth:`CDPClient.shutdown`.

    Counts are what each destination resolved between the call and its return; ``pending``
    is what was enqueued before the call and is still not resolved. ``bool(report)`` is True
    when nothing is pending, failed or dropped for any destination.

    >>> report = client.flush(timeout=10.0)  # doctest: +SKIP
    >>> if not report: print(report.destinations["opencdp"].failed)  # doctest: +SKIP
    """

    destinations: Mapping[str, DestinationReport]
    deadline_met: bool
    elapsed: float

    def __bool__(self) -> bool:
        return all(self.destinations.values())

    @property
    def delivered(self) -> int:
        return sum(d.delivered for d in self.destinations.values())

    @property
    def pending(self) -> int:
        return sum(d.pending for d in self.destinations.values())

    @property
    def failed(self) -> int:
        return sum(sum(d.failed.values()) for d in self.destinations.values())

    @property
    def dropped(self) -> int:
        return sum(sum(d.dropped.values()) for d in self.destinations.values())


@dataclasses.dataclass(frozen=True)
class FailedEvent:
    """One event that a destination could not deliver, as handed to ``on_error``.

    ``properties`` is decoded from the queued bytes (what would have been sent).

    >>> def on_error(error, events):
    ...     for e in events:
    ...         print(e.destination, e.call, e.identifier, e.reason)
    >>> client = CDPClient(cdp_api_key="...", on_error=on_error)  # doctest: +SKIP
    """

    destination: str
    call: str
    identifier: Optional[str]
    event_name: Optional[str]
    properties: Mapping[str, Any]
    reason: str
