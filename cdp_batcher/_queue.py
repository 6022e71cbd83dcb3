"""The bounded in-memory queue of encoded events.

``put`` never blocks and never raises: a full queue (by count or by bytes) drops the event and
counts it. The queue's lock is the only lock on the caller's path; the route that owns the
queue keeps its other counters under the same lock so that a snapshot is consistent.

A producer wakes the route's dispatcher only when the queue goes from empty to non-empty (the
dispatcher may need starting) or when a full batch is waiting; never once per event. The queue
writes its own counters (``drained``, ``full_drops`` and the offers it does not hold) and derives
``accepted`` and ``offered`` from them: a put that keeps its item counts nothing but the item
itself. Others only read them, under ``lock``.

``put`` first reads the queue's fork guard (one byte that a forked child sees zeroed, see
``_concurrency.fork_guard``): in a process forked without Python's fork hooks (uWSGI's default)
the item goes to ``on_fork`` instead, before the inherited lock is touched.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Optional

from . import _concurrency
from ._concurrency import fork_guard  # a module name: tests replace it (no MADV_WIPEONFORK)
from ._event import Item

__all__ = ["EventQueue"]


def _nothing() -> None:
    return None


def _refuse(item: Item) -> bool:
    return False


class EventQueue:
    """A FIFO of ``(kind, body, ...)`` items bounded by ``max_events`` and ``max_bytes`` (of bodies)."""

    __slots__ = (
        "_batch_mark",
        "_bytes",
        "_items",
        "_unheld",
        "drained",
        "first_at",
        "full_drops",
        "guard",
        "lock",
        "mark",
        "max_bytes",
        "max_events",
        "on_batch",
        "on_first",
        "on_fork",
        "partner",
    )

    def __init__(self, max_events: int, max_bytes: int, batch_size: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._batch_mark = batch_size - 1
        #: on_batch runs when a put finds this many items queued: a full batch, then one batch
        #: further each time (a backlog that only grows keeps calling it: the stall check).
        self.mark = batch_size - 1
        self.lock = _concurrency.lock()  # remade by the route after a gevent/eventlet patch
        self._items: deque[Item] = deque()
        self._bytes = 0
        self.drained = 0  # items ever removed
        self._unheld = 0  # offers counted by count_offer_locked (not held by the queue)
        self.full_drops = 0
        self.first_at = 0.0  # monotonic time the queue last became non-empty
        self.on_first: Callable[[], None] = _nothing
        self.on_batch: Callable[[], None] = _nothing
        self.guard = fork_guard()  # guard[0] == 0: this is a forked copy of the queue
        self.on_fork: Callable[[Item], bool] = _refuse  # takes the items put into a forked copy
        #: The queue that :meth:`put_pair` also appends to (it shares this queue's lock).
        self.partner: Optional[EventQueue] = None

    def put(self, item: Item) -> bool:
        """Append an item unless the queue is full; True when accepted. Never blocks."""
        if not self.guard[0]:  # forked without fork hooks: this queue, counters and lock are the parent's
            return self.on_fork(item)
        size = len(item[1])
        with self.lock:
            n = len(self._items)
            if n >= self.max_events or self._bytes + size > self.max_bytes:
                self.full_drops += 1
                return False
            self._items.append(item)
            self._bytes += size
            if n == 0:
                self.first_at = time.monotonic()
        if n == 0:
            self.on_first()
        if n >= self.mark:  # a full batch, or the backlog grew by another batch since
            self.mark = n + self._batch_mark + 1
            self.on_batch()
        return True

    def share_lock(self, other: EventQueue) -> None:
        """Make ``other`` the :meth:`put_pair` partner, guarded by this queue's lock from now on.
        Call before either queue is used (the client does, at construction and after a fork)."""
        other.lock = self.lock
        self.partner = other

    def put_pair(self, item: Item, record: Item) -> None:
        """``put(item)`` here and ``partner.put(record)`` under one acquisition of the lock both
        share (dual-write: the record holds the same body). Each queue bounds and counts its own."""
        other = self.partner
        assert other is not None
        if not self.guard[0]:  # forked without fork hooks: as put() does, for each queue
            self.on_fork(item)
            other.on_fork(record)
            return
        size = len(item[1])
        with self.lock:
            n = len(self._items)
            if n < self.max_events and self._bytes + size <= self.max_bytes:
                self._items.append(item)
                self._bytes += size
                if n == 0:
                    self.first_at = time.monotonic()
            else:
                self.full_drops += 1
                n = -1
            m = len(other._items)
            if m < other.max_events and other._bytes + size <= other.max_bytes:
                other._items.append(record)
                other._bytes += size
                if m == 0:
                    other.first_at = time.monotonic()
            else:
                other.full_drops += 1
                m = -1
        if n == 0:
            self.on_first()
        if n >= self.mark:
            self.mark = n + self._batch_mark + 1
            self.on_batch()
        if m == 0:
            other.on_first()
        if m >= other.mark:
            other.mark = m + other._batch_mark + 1
            other.on_batch()

    def count_offer_locked(self) -> None:
        """Count an offer the queue does not hold (dropped at call time, or sent inline). The
        caller holds ``lock``."""
        self._unheld += 1

    @property
    def accepted(self) -> int:
        """Items ever appended, the next item's sequence number: each was drained or still
        waits. Read under ``lock``."""
        return self.drained + len(self._items)

    @property
    def offered(self) -> int:
        """Every offer (``stats().enqueued``): items appended, puts refused as full, and the
        offers counted by :meth:`count_offer_locked`. Read under ``lock``."""
        return self.accepted + self.full_drops + self._unheld

    def drain_locked(self, max_events: int) -> list[Item]:
        """Remove up to ``max_events`` oldest items. The caller holds ``lock``."""
        items = self._items
        n = min(max_events, len(items))
        if n == len(items):
            out = list(items)
            items.clear()
            self._bytes = 0
        else:
            popleft = items.popleft
            out = [popleft() for _ in range(n)]
            self._bytes -= sum(len(item[1]) for item in out)
        self.drained += n
        left = len(items)
        self.mark = self._batch_mark if left <= self._batch_mark else left + self._batch_mark + 1
        return out

    def items_unlocked(self) -> list[Item]:
        """A copy of the queued items, read without the lock: only for a forked copy of the queue,
        whose lock a thread of the parent (absent here) may have held at the fork."""
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes
