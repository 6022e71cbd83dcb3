"""The durable queue: :class:`~cdp_batcher._queue.EventQueue`'s interface over a spool stream.

A route holds either queue. With this one, ``put`` appends the record to the stream (one
``os.write``, under the queue's lock, which is the stream's), and the items drained are
remembered until the ledger says they are resolved: then their records are acknowledged (and
leave the disk). What is different from the memory queue:

- ``len()`` counts records on disk too (the memory holds a bounded read-ahead), and records
  adopted from dead processes (``recovered``), which also take sequence numbers;
- a unit that failed for a transient reason (the gateway down, a timeout, the shutdown deadline)
  is *given back*: its items keep their sequence numbers and their records stay on disk; the
  queue pauses (1, 2, 4 … 60 s, reset by a delivery) and hands them out again first;
- drops have more reasons: ``spool_full`` (``max_spool_bytes`` reached), ``queue_full`` (the
  disk failed and memory is full), ``spool_corrupt`` (records written but unreadable later).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Callable, Optional

from .._concurrency import fork_guard
from .._event import Item
from ._log import DROPPED, FULL, NO_POS, Record, Stream

__all__ = ["TRANSIENT_REASONS", "SpoolQueue", "is_transient"]

#: Failure reasons after which a spooled record stays on disk and is tried again later.
TRANSIENT_REASONS = frozenset(
    {"connection_error", "timeout", "deadline", "shutdown", "shutdown_timeout", "http_429", "http_408"}
)
#: The longest pause after repeated transient failures.
MAX_PAUSE = 60.0

_monotonic = time.monotonic


def is_transient(reason: str) -> bool:
    """True for the reasons that do not mean "this record can never be delivered"."""
    return reason in TRANSIENT_REASONS or reason.startswith("http_5")


def _nothing() -> None:
    return None


def _refuse(item: Item) -> bool:
    return False


class SpoolQueue:
    """A FIFO of ``(kind, body)`` items kept in a spool :class:`Stream`."""

    durable = True

    def __init__(self, stream: Stream, batch_size: int) -> None:
        self.stream = stream
        self.lock = stream.lock
        self.max_events = stream.max_memory_records
        self.max_bytes = stream.max_memory_bytes
        self._batch_mark = batch_size - 1
        # Counted per put: only _count (and _refused for a put not kept); ``accepted`` and
        # ``offered`` are derived (a record kept is waiting or was drained, see ``accepted``).
        self._refused = 0  # offers not kept: puts refused, and count_offer_locked()
        self.drained = 0  # items ever handed out the first time (lost records included)
        self.queue_full = 0
        self.lost = 0  # records found unreadable: counted as drained and dropped (spool_corrupt)
        self.first_at = 0.0
        self._count = 0  # records waiting to be handed out the first time
        self._inflight: dict[int, tuple[Item, Record]] = {}  # id(item) -> item, its record
        self._returned: deque[tuple[int, list[Item]]] = deque()  # (base, items) given back
        self._returned_n = 0
        self._paused_until = 0.0
        self._pause = 0.0
        self.on_first: Callable[[], None] = _nothing
        self.on_batch: Callable[[], None] = _nothing
        #: As EventQueue's: guard[0] == 0 in a child forked without fork hooks (uWSGI's default),
        #: whose first put goes to ``on_fork`` (the route resets the client, spool included, so the
        #: child never writes into its parent's segment files).
        self.guard = fork_guard()
        self.on_fork: Callable[[Item], bool] = _refuse
        with self.lock:
            # The spool's maintenance thread runs before this queue exists (it starts with the
            # spool, and again first after a fork): records it adopted meanwhile were announced
            # to nobody. Count them now; the route starts delivering them once wired (pending).
            stream.on_available = self._on_available
            self._count = len(stream)
            if self._count:
                self.first_at = _monotonic()

    @property
    def pending(self) -> bool:
        """Records to hand out already (adopted before the route wired on_first/on_batch)."""
        return self._count > 0

    # ----------------------------------------------------------------------------- producers
    def put(self, item: Item) -> bool:
        """Append an item (to disk); True when kept. Never blocks on anything but the lock."""
        if not self.guard[0]:  # forked without fork hooks: the stream is the parent's
            return self.on_fork(item)
        with self.lock:
            status = self.stream.append_locked(item[0], item[1])
            if status >= FULL:
                self._refused += 1
                if status == DROPPED:
                    self.queue_full += 1
                return False
            n = self._count
            self._count = n + 1
            if n == 0:
                self.first_at = _monotonic()
        if n == 0:
            self.on_first()
        if n == self._batch_mark:
            self.on_batch()
        return True

    def _on_available(self) -> None:
        """Records adopted from a dead process (the spool's maintenance thread)."""
        with self.lock:
            n = self._count
            self._count = len(self.stream)
            if n == 0 and self._count:
                self.first_at = _monotonic()
        self.on_first()
        self.on_batch()

    def count_offer_locked(self) -> None:
        """Count an offer the queue does not hold (dropped at call time, or sent inline)."""
        self._refused += 1

    # ----------------------------------------------------------------------------- consumers
    @property
    def accepted(self) -> int:
        """Items ever kept or adopted: the next item's sequence number. Each of them is either
        handed out already (``drained``, unreadable ones included) or still waiting (``_count``,
        which follows the stream's length), so this is their sum. Read under ``lock``."""
        return self.drained + self._count

    @property
    def offered(self) -> int:
        """Every offer, kept or not (``stats().enqueued``): what was kept but not adopted, and the rest."""
        return self.drained + self._count - self.stream.recovered + self._refused

    def drain_locked(self, max_events: int) -> list[Item]:
        """Hand out up to ``max_events`` of the oldest items not handed out yet. The caller holds ``lock``."""
        records = self.stream.take_locked(max_events)
        lost = self.stream.pop_lost()
        if lost:
            self.lost += lost
            self.drained += lost
        items: list[Item] = []
        inflight = self._inflight
        for record in records:
            item = (record[0], record[1])
            if record[2] != NO_POS:
                inflight[id(item)] = (item, record)
            items.append(item)
        n = len(items)
        self.drained += n
        self._count = len(self.stream)
        return items

    def take_returned_locked(self, max_events: int) -> Optional[tuple[int, list[Item]]]:
        """The oldest items given back, with their sequence base, once the pause is over."""
        if not self._returned or _monotonic() < self._paused_until:
            return None
        base, items = self._returned[0]
        if len(items) <= max_events:
            self._returned.popleft()
            out = items
        else:
            out, rest = items[:max_events], items[max_events:]
            self._returned[0] = (base, rest)
        self._returned_n -= len(out)
        return base, out

    def give_back_locked(self, base: int, items: Sequence[Item]) -> None:
        """Items not delivered for a transient reason: kept (on disk), handed out again after a pause."""
        if not items:
            return
        self._returned.append((base, list(items)))
        self._returned_n += len(items)
        self._pause = min(MAX_PAUSE, self._pause * 2 if self._pause else 1.0)
        self._paused_until = _monotonic() + self._pause

    def resolved_locked(self, items: Sequence[Item], delivered: bool) -> None:
        """Items resolved for good: their records leave the disk."""
        inflight = self._inflight
        records = []
        for item in items:
            entry = inflight.pop(id(item), None)
            if entry is not None:
                records.append(entry[1])
        if records:
            self.stream.ack_locked(records)
        if delivered:
            self._pause = 0.0

    def resume_locked(self) -> None:
        """flush(): try the items given back now, without waiting for the pause."""
        self._paused_until = 0.0

    @property
    def failing(self) -> bool:
        """Items were given back and nothing was delivered since (the destination seems down)."""
        return self._pause > 0

    @property
    def paused(self) -> bool:
        return bool(self._returned) and _monotonic() < self._paused_until

    def items_unlocked(self) -> list[Item]:
        """A forked copy's items to queue again in the child: none (the records are the parent's,
        in its files, and it delivers them)."""
        return []

    def take_unspooled_locked(self) -> list[Item]:
        """At shutdown: hand out the items kept in memory only (the disk had failed); the others
        stay on disk."""
        items: list[Item] = list(self.stream.take_memory_only_locked())
        self.drained += len(items)
        self._count = len(self.stream)
        return items

    def on_disk(self, item: Item) -> bool:
        """Whether a handed-out item's record is on disk (else it was kept in memory only)."""
        return id(item) in self._inflight

    def __len__(self) -> int:
        """Items that can be handed out now (0 during a pause)."""
        if self._returned and _monotonic() < self._paused_until:
            return 0
        return self._count + self._returned_n

    @property
    def queued(self) -> int:
        """Items waiting, paused or not (``stats().queued``)."""
        return self._count + self._returned_n

    @property
    def nbytes(self) -> int:
        return self.stream.memory_bytes

    @property
    def full_drops(self) -> int:
        return self.queue_full

    def drop_counts(self) -> dict[str, int]:
        """Calls dropped by the queue itself, by reason."""
        return {
            "queue_full": self.queue_full,
            "spool_full": self.stream.spool_full,
            "spool_corrupt": self.lost,
        }
