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

    Invariant: ``enqueued + recovered == delivered + sum(failed) + sum(dropped) + queued + in_flight``.

    With a ``spool_dir``: ``queued`` counts records on disk too, ``spooled`` is how many records
    of this process are on disk not yet resolved, ``recovered`` how many were adopted from
    earlier processes; ``spool_errors`` counts disk failures (the client then keeps events in
    memory), ``spool_corrupt`` records found unreadable and skipped. All 0 without a spool.

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
    spooled: int = 0
    recovered: int = 0
    spool_errors: int = 0
    spool_corrupt: int = 0

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
            "spooled": self.spooled,
            "recovered": self.recovered,
            "spool_errors": self.spool_errors,
            "spool_corrupt": self.spool_corrupt,
        }


@dataclasses.dataclass(frozen=True)
class Stats:
    """A frozen snapshot of a client's counters: ``enqueued`` calls accepted, then per destination.

    >>> client.stats().destinations["opencdp"].delivered  # doctest: +SKIP
    42
    """

    enqueued: int
    destinations: Mapping[str, DestinationStats]

    @property
    def spooled(self) -> int:
        """Records on disk not yet resolved, all destinations (0 without a spool)."""
        return sum(d.spooled for d in self.destinations.values())

    @property
    def recovered(self) -> int:
        """Records adopted from earlier processes' spool files, all destinations."""
        return sum(d.recovered for d in self.destinations.values())

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
    #: Of this process's records, how many are on disk not yet resolved (a spool only): after a
    #: shutdown with the gateway down, what the next client on the same spool_dir delivers.
    spooled: int = 0

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
    def spooled(self) -> int:
        """Records left on disk for the next client on the same spool_dir."""
        return sum(d.spooled for d in self.destinations.values())

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
