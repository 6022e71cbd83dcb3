"""Accounting of one route: every item offered ends in exactly one bucket, exactly once.

Under the queue's lock (shared, so that a snapshot is consistent)::

    enqueued (queue.offered) == delivered + failed + dropped + queued + in_flight

where ``dropped`` includes the queue's own ``full_drops`` (reason ``queue_full``). With a
durable queue (a spool) ``enqueued + recovered`` is on the left (records adopted from dead
processes take sequence numbers too), and a unit that failed for a transient reason is *given
back*: out of flight, into ``queued`` again, its batch still outstanding (a flush waits for it),
its records still on disk. Items leave
the queue in batches whose first sequence number (``base``) keys ``outstanding``: a flush whose
target is ``t`` is done when the queue has drained past ``t``, no batch below ``t`` is
outstanding, and every call dropped at call time has had its ``on_error`` report.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

from . import _concurrency
from ._event import Item
from ._queue import EventQueue
from ._spool import SpoolQueue, is_transient
from ._stats import DestinationReport, DestinationStats, frozen_counts

__all__ = ["DELIVERED", "DROPPED", "FAILED", "FlushTicket", "Ledger"]

DELIVERED, FAILED, DROPPED = 0, 1, 2
#: Calls dropped at call time (too large, unsupported) waiting for their on_error report.
MAX_PENDING_REPORTS = 1000


@dataclasses.dataclass(frozen=True)
class FlushTicket:
    """A flush's mark: every item with a sequence number below ``target`` must be resolved;
    the counters at the time, for the report of what the flush resolved."""

    target: int
    delivered: int
    failed: Mapping[str, int]
    dropped: Mapping[str, int]


class Ledger:
    """The counters of one route, under its queue's lock; ``progress`` is notified on each change."""

    def __init__(self, queue: Union[EventQueue, SpoolQueue]) -> None:
        self.queue = queue
        self.spool = queue if isinstance(queue, SpoolQueue) else None
        self._given_back = 0  # items given back, not yet taken again (all in _outstanding)
        self.use_lock(queue.lock)
        self._delivered = 0
        self._delivered_at: Optional[float] = None  # the last delivery (monotonic)
        #: Stalls seen by the route (see ``Route.check_stall``), counted under ``lock``.
        self.stalls = 0
        self._retried = 0
        self._in_flight = 0
        self._failed: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._outstanding: dict[int, int] = {}  # batch base sequence -> items not yet resolved
        self._reports: deque[tuple[list[Item], str, BaseException]] = deque()  # dropped at call time

    def use_lock(self, lock: Any) -> None:
        """Guard the counters with ``lock`` (the queue's; remade when gevent/eventlet patched
        threading since, shared by a paired route: see ``Route.pair_with``)."""
        self.lock = lock
        self.progress = _concurrency.condition(lock)

    @property
    def in_flight(self) -> int:
        """Items drained or sent inline, not yet resolved (read without the lock)."""
        return self._in_flight

    # -------------------------------------------------------------------- under the caller's lock
    def take_locked(self, max_events: int) -> tuple[int, list[Item]]:
        """Drain up to ``max_events`` items into flight; ``(base, items)``. The caller holds ``lock``.

        Items given back come first, with the base they had."""
        spool = self.spool
        if spool is not None:
            back = spool.take_returned_locked(max_events)
            if back is not None:
                self._given_back -= len(back[1])
                self._in_flight += len(back[1])
                return back
        base = self.queue.drained
        items = self.queue.drain_locked(max_events)
        if items:
            self._in_flight += len(items)
            self._outstanding[base] = len(items)
        return base, items

    def take_unspooled_locked(self) -> tuple[int, list[Item]]:
        """At shutdown with a spool: the items kept in memory only (the disk had failed), into
        flight, to be dropped; those on disk stay there. The caller holds ``lock``."""
        assert self.spool is not None
        base = self.queue.drained
        items = self.spool.take_unspooled_locked()
        if items:
            self._in_flight += len(items)
            self._outstanding[base] = len(items)
        return base, items

    def ticket_locked(self) -> FlushTicket:
        """A flush's mark at the queue's next sequence number. The caller holds ``lock``."""
        return FlushTicket(
            self.queue.accepted, self._delivered, Counter(self._failed), Counter(self._dropped)
        )

    def has_reports_locked(self) -> bool:
        return bool(self._reports)

    # --------------------------------------------------------------------------- taking the lock
    def refused(self, item: Item, reason: str, error: Optional[BaseException]) -> bool:
        """Count a call not queued (``reason``); keep it for its on_error report when ``error`` is
        given and fewer than MAX_PENDING_REPORTS wait. True when kept."""
        with self.lock:
            self.queue.count_offer_locked()
            self._dropped[reason] += 1
            if error is not None and len(self._reports) < MAX_PENDING_REPORTS:
                self._reports.append(([item], reason, error))
                return True
            return False

    def inline(self) -> None:
        """Count a call sent at once from the caller's thread (sync mode), in flight until resolved."""
        with self.lock:
            self.queue.count_offer_locked()
            self._in_flight += 1

    def next_report(self) -> Optional[tuple[list[Item], str, BaseException]]:
        """The oldest call dropped at call time still waiting for its on_error report."""
        reports = self._reports
        return reports[0] if reports else None

    def reported(self) -> None:
        """The oldest pending report was made: a flush waiting for it may return."""
        with self.progress:
            self._reports.popleft()
            self.progress.notify_all()

    def kept(self, reason: str, items: Sequence[Item]) -> tuple[list[Item], list[Item]]:
        """``(kept, rest)``: of items failing for ``reason``, those that stay in the spool (on disk,
        transient reason) and those that are resolved for good."""
        spool = self.spool
        if spool is None or not is_transient(reason):
            return [], list(items)
        kept: list[Item] = []
        rest: list[Item] = []
        for item in items:
            (kept if spool.on_disk(item) else rest).append(item)
        return kept, rest

    def give_back(self, base: int, items: Sequence[Item]) -> None:
        """Items not delivered for a transient reason: back to the spool, their batch outstanding."""
        assert self.spool is not None
        with self.progress:
            self._in_flight -= len(items)
            self._given_back += len(items)
            self.spool.give_back_locked(base, items)
            self.progress.notify_all()

    def resolve(
        self, base: Optional[int], n: int, bucket: int, reason: str, items: Sequence[Item] = ()
    ) -> None:
        """``n`` items of the batch at ``base`` (None: sent inline) end in ``bucket``; with a spool
        their records (``items``) leave the disk."""
        with self.progress:
            if self.spool is not None and items:
                self.spool.resolved_locked(items, bucket == DELIVERED)
            self._in_flight -= n
            if bucket == DELIVERED:
                self._delivered += n
                self._delivered_at = time.monotonic()
            elif bucket == FAILED:
                self._failed[reason] += n
            else:
                self._dropped[reason] += n
            if base is not None:
                left = self._outstanding[base] - n
                if left > 0:
                    self._outstanding[base] = left
                else:
                    del self._outstanding[base]
            self.progress.notify_all()

    def retried(self, n: int) -> None:
        with self.lock:
            self._retried += n

    # ------------------------------------------------------------------------------- waiting
    def settled(self) -> bool:
        """Nothing drained is unresolved (or, with a spool, all of it was given back to the disk).
        The caller holds ``progress``."""
        if not self._given_back:
            return not self._outstanding
        return sum(self._outstanding.values()) <= self._given_back

    def quiet(self) -> bool:
        """Nothing in flight and no report pending: what a shutdown with a spool waits for (the rest
        is on disk). The caller holds ``progress``."""
        return self.settled() and not self._reports

    def done(self, target: int) -> bool:
        """Every item below ``target`` resolved and reported. The caller holds ``progress``."""
        if self.queue.drained < target or self._reports:
            return False
        return not self._outstanding or min(self._outstanding) >= target

    def unresolved(self) -> int:
        """Queued plus in flight, read without the lock (for callers that cannot wait)."""
        return len(self.queue) + self._in_flight

    # ------------------------------------------------------------------------------ reporting
    def report(self, ticket: FlushTicket) -> DestinationReport:
        """What was resolved since ``ticket``, and what below its target is still pending."""
        with self.lock:
            target = ticket.target
            pending = max(0, target - self.queue.drained)
            pending += sum(n for b, n in self._outstanding.items() if b < target)
            delivered = self._delivered - ticket.delivered
            failed = self._failed - Counter(ticket.failed)
            dropped = self._dropped - Counter(ticket.dropped)
            spooled = 0 if self.spool is None else self.spool.stream.spooled
        return DestinationReport(delivered, frozen_counts(failed), frozen_counts(dropped), pending, spooled)

    def snapshot(self) -> DestinationStats:
        with self.lock:
            queue = self.queue
            dropped = Counter(self._dropped)
            spool = self.spool
            if spool is not None:
                dropped.update(spool.drop_counts())
            elif queue.full_drops:
                dropped["queue_full"] += queue.full_drops
            stream = spool.stream if spool is not None else None
            return DestinationStats(
                enqueued=queue.offered,
                delivered=self._delivered,
                failed=frozen_counts(self._failed),
                dropped=frozen_counts(dropped),
                retried=self._retried,
                queued=len(queue) if spool is None else spool.queued,  # a paused spool: len() is 0
                in_flight=self._in_flight,
                stalls=self.stalls,
                queued_bytes=queue.nbytes,
                last_delivery_age=None
                if self._delivered_at is None
                else time.monotonic() - self._delivered_at,
                spooled=0 if stream is None else stream.spooled,
                recovered=0 if stream is None else stream.recovered,
                spool_errors=0 if stream is None else stream.spool_errors,
                spool_corrupt=0 if stream is None else stream.spool_corrupt,
            )
