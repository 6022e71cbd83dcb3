"""A route: one destination with its own queue, ledger, dispatcher thread, senders and deadline.

The dispatcher thread wakes when a full batch waits, when the oldest event has waited
``flush_interval``, on ``flush()`` and on ``shutdown()``. It drains a batch, cuts it into
units the destination can send in one request, and hands the units to the route's
:class:`SenderPool` (``destination.concurrency`` senders; a concurrency of 1 sends from the
dispatcher itself). At most ``destination.concurrency_hint()`` units are in flight, read again
at each hand-out, and a one-request-per-event batch is cut into that many runs; a hint that
drops while units are in flight only makes the dispatcher wait for more of them to finish.
While nobody waits (no flush, no shutdown) the route also keeps to what the backlog needs:
``destination.senders_for(queued + in flight, flush_interval)``.
Routes share nothing, so a slow or failing destination never delays another.

Every item drained is resolved exactly once (delivered, failed or dropped) through a
:class:`UnitControl`, which tells the :class:`FailureReporter` and then the :class:`Ledger`.

The route also watches itself from its callers' threads: a **stall** (events queued, nothing in
flight, no dispatcher run for ``max(STALL_MIN_SECONDS, STALL_INTERVALS * flush_interval)``) is
logged once as an ERROR and counted; a **fork without Python's fork hooks** (the queue's fork
guard was wiped, or the PID changed) calls :attr:`Route.on_fork` before the inherited state is
used. Its locks, conditions and wake-up event come from ``_concurrency`` and are remade at a
thread start when gevent/eventlet patched ``threading`` since.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Callable, Optional, Union

from . import _concurrency
from ._config import ClientConfig, OnError
from ._errors import CDPError
from ._event import Item
from ._ledger import DELIVERED, DROPPED, FAILED, FlushTicket, Ledger
from ._lifecycle import in_pipeline_thread
from ._queue import EventQueue
from ._report import FailureReporter, LogLimiter
from ._senders import SenderPool, Unit
from ._spool import SpoolQueue, Stream
from ._stats import DestinationReport, DestinationStats
from .destinations._base import Destination, cut_units

__all__ = ["RESOLVE_MARGIN", "STALL_INTERVALS", "STALL_MIN_SECONDS", "Deadline", "Route", "UnitControl"]

_monotonic = time.monotonic

#: Requests and retry waits end this long before a shutdown deadline, so that their outcome is
#: counted by the deadline (a report then has nothing pending that was cut short).
RESOLVE_MARGIN = 0.05

#: Events queued with no dispatcher run and nothing in flight for this long (at least; else
#: STALL_INTERVALS flush intervals) is a stall: logged once as an ERROR, counted in stats().
STALL_MIN_SECONDS = 5.0
STALL_INTERVALS = 10

_STALL_CAUSES = (
    "Likely causes, and what to do: "
    "(1) the process was forked in a way the client could not see (build the client after the "
    "fork: uWSGI lazy-apps, a post-fork hook); "
    "(2) gevent/eventlet monkey-patching after the client started its threads (patch first: "
    "monkey.patch_all() before importing cdp_batcher or your app); "
    "(3) a blocked event loop or a greenlet that never yields (find the blocking call: the "
    "client's thread cannot run until it returns); "
    "(4) threads disabled (uWSGI: add enable-threads = true). "
    "Queued events are kept (up to max_queue_size) and sent once the dispatcher runs; "
    "stats() counts this as 'stalls'."
)


class Deadline:
    """A route's shutdown deadline (None until shutdown) and the waits it cuts short."""

    def __init__(self) -> None:
        self.at: Optional[float] = None
        #: No wait is worth making (a spooled route shutting down: what fails stays on disk).
        self.no_waits = False
        self.make_sync()

    def make_sync(self) -> None:
        """(Re)make the condition from the threading module in force (only while nobody waits)."""
        self._cond = _concurrency.condition()

    def set(self, deadline: float, *, no_waits: bool = False) -> None:
        """Set (or bring forward) the deadline and wake every wait; ``no_waits`` ends every
        wait, now and later, at once."""
        with self._cond:
            if self.at is None or deadline < self.at:
                self.at = deadline
            self.no_waits = self.no_waits or no_waits
            self._cond.notify_all()

    def time_left(self) -> Optional[float]:
        at = self.at
        return None if at is None else max(0.0, at - _monotonic())

    def expired(self, now: float) -> bool:
        at = self.at
        return at is not None and now >= at

    def remaining(self) -> Optional[float]:
        """Seconds a request may still take (None: no deadline); may be <= 0."""
        at = self.at
        return None if at is None else at - RESOLVE_MARGIN - _monotonic()

    def sleep(self, delay: float) -> bool:
        """Wait ``delay`` seconds unless the deadline makes that pointless; True if waited."""
        end = _monotonic() + delay
        with self._cond:
            while True:
                at = self.at
                if self.no_waits or (at is not None and at - RESOLVE_MARGIN < end):
                    return False
                left = end - _monotonic()
                if left <= 0:
                    return True
                self._cond.wait(left)


class UnitControl:
    """The :class:`SendControl` handed to a destination with one unit."""

    __slots__ = ("_base", "_deadline", "_ledger", "_reporter", "first_error", "unhurried", "unresolved")

    def __init__(
        self,
        ledger: Ledger,
        reporter: FailureReporter,
        deadline: Deadline,
        base: Optional[int],
        count: int,
        unhurried: Callable[[], bool],
    ) -> None:
        self._ledger = ledger
        self._reporter = reporter
        self._deadline = deadline
        self._base = base
        self.unresolved = count
        self.first_error: Optional[tuple[str, BaseException]] = None
        self.unhurried = unhurried

    def remaining(self) -> Optional[float]:
        return self._deadline.remaining()

    def sleep(self, delay: float) -> bool:
        return self._deadline.sleep(delay)

    def delivered(self, items: Sequence[Item]) -> None:
        self._resolve(items, DELIVERED, "", None)

    def failed(self, items: Sequence[Item], reason: str, error: BaseException) -> None:
        self._resolve(items, FAILED, reason, error)

    def dropped(self, items: Sequence[Item], reason: str, error: BaseException) -> None:
        self._resolve(items, DROPPED, reason, error)

    def retried(self, n: int = 1) -> None:
        self._ledger.retried(n)

    def warn(self, key: str, message: str) -> None:
        self._reporter.warn(key, message)

    def _resolve(
        self, items: Sequence[Item], bucket: int, reason: str, error: Optional[BaseException]
    ) -> None:
        n = len(items)
        if n == 0:
            return
        if bucket != DELIVERED and self._base is not None:
            kept, rest = self._ledger.kept(reason, items)
            if kept:  # a spool: not delivered for a transient reason, so it stays on disk for later
                self._ledger.give_back(self._base, kept)
                self.unresolved -= len(kept)
                self._reporter.warn(
                    f"kept:{reason}", f"{len(kept)} event(s) kept in the spool ({reason}); tried again later"
                )
                if not rest:
                    return
                items, n = rest, len(rest)
        try:
            if error is not None:
                if self.first_error is None:
                    self.first_error = (reason, error)
                # Report before counting: a flush() that sees these items resolved has also
                # seen their on_error call return.
                self._reporter.failure(items, reason, error, failed=bucket == FAILED)
        finally:
            self._ledger.resolve(self._base, n, bucket, reason, items)
            self.unresolved -= n


class Route:
    """A destination with its own queue, ledger, dispatcher thread, senders and deadline."""

    def __init__(
        self,
        destination: Destination,
        *,
        max_queue_size: int,
        max_queue_bytes: int,
        max_batch_size: int,
        flush_interval: float,
        on_error: Optional[OnError],
        limiter: LogLimiter,
        stream: Optional[Stream] = None,
    ) -> None:
        self.dest = destination
        self._stream = stream  # a spool's stream for this destination: the queue is durable
        self.name = destination.name
        self._max_queue_size = max_queue_size
        self._max_queue_bytes = max_queue_bytes
        self._batch_size = max_batch_size
        self._interval = flush_interval
        self._reporter = FailureReporter(destination, on_error, limiter)
        self._limiter = limiter
        #: Called when this route finds itself in a child forked without Python's fork hooks; the
        #: client sets it to its own reset (every route, once). Default: reset this route only.
        self.on_fork: Callable[[], None] = self.after_fork_in_child
        self._reset()
        self._start_if_pending()

    @classmethod
    def from_config(
        cls, destination: Destination, cfg: ClientConfig, limiter: LogLimiter, stream: Optional[Stream] = None
    ) -> Route:
        """A route for ``destination`` with a client's queue bounds, batch size, interval and on_error."""
        return cls(
            destination,
            max_queue_size=cfg.max_queue_size,
            max_queue_bytes=cfg.max_queue_bytes,
            max_batch_size=cfg.max_batch_size,
            flush_interval=cfg.flush_interval,
            on_error=cfg.on_error,
            limiter=limiter,
            stream=stream,
        )

    # ------------------------------------------------------------------ state (also after fork)
    def _reset(self) -> None:
        self.queue: Union[EventQueue, SpoolQueue] = (
            EventQueue(self._max_queue_size, self._max_queue_bytes, self._batch_size)
            if self._stream is None
            else SpoolQueue(self._stream, self._batch_size)
        )
        self.ledger = Ledger(self.queue)
        self._refused = self.ledger.refused
        self._deadline = Deadline()
        self.queue.on_first = self._on_first
        self.queue.on_fork = self._put_after_fork
        self._backlog: deque[Unit] = deque()  # units drained, not yet sending
        self._flush_target = 0
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self.pid = os.getpid()  # the process this route's state belongs to
        self._guard_works = _concurrency.fork_guard_works(self.queue.guard)
        self._full_seen = 0
        self._ran_at = _monotonic()  # the dispatcher's last loop (it drains whatever is due)
        self._stall_open = False  # logged for the current stall; cleared when the dispatcher runs
        self._leader: Optional[Route] = None  # the route whose lock this one shares (pair_with)
        self._follower: Optional[Route] = None  # the route that shares this one's lock
        self._pool = SenderPool(self.dest.concurrency, self._run_unit, f"cdp_batcher-{self.name}")
        self._make_sync()

    def _make_sync(self) -> None:
        """(Re)make the route's locks, conditions and wake-up event from the threading module in
        force. At construction and after fork; again at a thread start when gevent/eventlet
        patched threading since (gunicorn -k gevent --preload: see _concurrency). A paired route
        keeps sharing one lock (:meth:`pair_with`)."""
        self._made_with = _concurrency.token()
        leader = self._leader
        stream = self._stream
        if leader is not None:
            lock = leader._lock
        elif stream is not None:
            # A spool's stream: its lock is the queue's, the one its maintenance thread (adoption)
            # takes too; made anew only when threading was patched since (both then use the new one).
            lock = stream.lock if not _concurrency.stale(stream.lock_token) else stream.new_lock()
        else:
            lock = _concurrency.lock()
        self._use_lock(lock)
        self._deadline.make_sync()
        self._wake = _concurrency.event()
        self._start_lock = _concurrency.lock()
        self.queue.on_batch = self._on_batch
        self._pool.make_sync()
        follower = self._follower
        if follower is not None:
            follower._use_lock(lock)

    def _use_lock(self, lock: Any) -> None:
        """Guard the queue and the ledger with ``lock``."""
        self.queue.lock = lock
        self.ledger.use_lock(lock)
        self._lock = lock

    def after_fork_in_child(self) -> None:
        """The child starts empty, with its own lock, thread and connections."""
        self._reset()
        self.dest.after_fork()
        self._start_if_pending()

    def _start_if_pending(self) -> None:
        """A spool's records adopted before this route wired its queue (the spool's maintenance
        thread starts first) were announced to nobody: start delivering them. Checked after the
        wiring, so an adoption racing this check wakes the route through ``on_first`` instead."""
        if isinstance(self.queue, SpoolQueue) and self.queue.pending:
            self._on_first()

    def forked(self) -> bool:
        """True in a child forked without fork hooks, before :attr:`on_fork` reset this route: the
        queue's fork guard was wiped (or, where there is none, the PID changed)."""
        if self._guard_works:
            return not self.queue.guard[0]
        return self.pid != os.getpid()

    def adopt_fork(self) -> None:
        """At the entry of flush, shutdown and stats: reset first if this is a forked copy."""
        if self.forked():
            self.on_fork()

    def _put_after_fork(self, item: Item) -> bool:
        """EventQueue.on_fork: ``item`` was put into the parent's copy of the queue. Reset (once,
        through on_fork), then queue it in this process's own queue."""
        if self.forked():
            self.on_fork()
            if self.forked():  # an on_fork that did not reset this route
                self.after_fork_in_child()
        return self.queue.put(item)

    def _control(self, base: Optional[int], count: int) -> UnitControl:
        return UnitControl(self.ledger, self._reporter, self._deadline, base, count, self._unhurried)

    def _unhurried(self) -> bool:
        """Nobody waits for what is sent now: no shutdown, no flush pending, the queue less than
        half full (producers outrunning a paced sender get every request at full speed)."""
        if self._stopping:
            return False
        with self._lock:
            return not self._flush_pending_locked() and len(self.queue) < self._max_queue_size // 2

    def _flush_pending_locked(self) -> bool:
        """A flush (or the bulk producers' backpressure) waits for events not yet resolved."""
        return bool(self._flush_target) and not self.ledger.done(self._flush_target)

    # ------------------------------------------------------------------------------ producers
    @property
    def put(self) -> Callable[[Item], bool]:
        """The hot-path put (the queue's own bound method)."""
        return self.queue.put

    @property
    def durable(self) -> bool:
        """True when this route's queue is a spool's stream on disk."""
        return self._stream is not None

    def pair_with(self, other: Route) -> Callable[[Item, Item], None]:
        """Let one call queue an item here and one on ``other`` with one lock acquisition (the
        dual-write fast path): from now on ``other``'s queue and ledger are guarded by this
        route's lock, held only for in-memory work, never across I/O, so neither destination
        waits on the other's requests. Call before either route is used (at construction, and
        again after a fork reset them). Returns the put for both (:meth:`EventQueue.put_pair`)."""
        queue, partner = self.queue, other.queue
        if not isinstance(queue, EventQueue) or not isinstance(partner, EventQueue):
            raise TypeError("only in-memory queues pair: a spooled route queues on its own stream")
        queue.share_lock(partner)
        self._follower, other._leader = other, self
        other._use_lock(self._lock)
        return queue.put_pair

    def drop_at_offer(self, item: Item, reason: str, error: Optional[BaseException] = None) -> None:
        """Count a call this destination will not take; report it via on_error when an error is given."""
        self.adopt_fork()
        if error is not None and self._reporter.on_error is None:
            error = None  # nobody to report to: only counted
        # flush() waits for these reports; past the ledger's bound the drop is only counted.
        if self._refused(item, reason, error):
            self._wake.set()
            self._on_first()

    def send_now(self, item: Item) -> Optional[tuple[str, BaseException]]:
        """sync_mode: send one item from the calling thread; the failure, if any."""
        self.adopt_fork()
        self.ledger.inline()
        ctl = self._control(None, 1)
        self._send_unit(ctl, [item])
        return ctl.first_error

    def unresolved(self) -> int:
        """Queued plus in flight, read without taking a lock."""
        return self.ledger.unresolved()

    def _on_first(self) -> None:
        if self.pid != os.getpid():  # forked without hooks where no fork guard works: see _adopt_copy
            self._adopt_copy()
            return
        thread = self._thread
        if (
            (thread is None or not thread.is_alive()) and not self._ensure_thread() and self._stopping
        ):  # a call that raced shutdown() onto a queue no dispatcher will drain again
            self._drop_queued("shutdown", CDPError(f"{self.name}: call raced shutdown()"))

    def _drop_queued(self, reason: str, error: BaseException) -> None:
        """Resolve everything still queued, or drained but not yet given to a sender, as dropped.

        With a spool only what is in memory alone is dropped: the records on disk stay there
        (units drained for sending are given back), for the next client on the directory."""
        with self._lock:
            if self.ledger.spool is not None:
                base, items = self.ledger.take_unspooled_locked()
            else:
                base, items = self.ledger.take_locked(len(self.queue))
            units = list(self._backlog)
            self._backlog.clear()
        for unit_base, unit in units:
            self._control(unit_base, len(unit)).dropped(unit, reason, error)
        if items:
            self._control(base, len(items)).dropped(items, reason, error)

    def _on_batch(self) -> None:
        """EventQueue.on_batch (a full batch waits, or the backlog grew by another batch): wake
        the dispatcher, and check from the caller's thread that one is running."""
        if (
            len(self.queue) <= self._batch_size
        ):  # a growing backlog: the dispatcher is awake already, or stalled
            self._wake.set()
        self.check_stall()

    def check_stall(self) -> None:
        """Log one ERROR (and count a stall) when events have been queued, nothing is in flight
        and no dispatcher ran for ``max(STALL_MIN_SECONDS, STALL_INTERVALS * flush_interval)``.
        Runs on callers' threads (a growing backlog, stats(), flush()): never needs the
        dispatcher, which is what is missing."""
        queue = self.queue
        if self._stall_open or self._stopping or not len(queue) or self.ledger.in_flight:
            return
        idle = _monotonic() - max(queue.first_at, self._ran_at)
        if idle < max(STALL_MIN_SECONDS, STALL_INTERVALS * self._interval):
            return
        with self._lock:
            if self._stall_open:
                return
            self._stall_open = True
            self.ledger.stalls += 1
        thread = self._thread
        alive = thread is not None and thread.is_alive()
        patched = _concurrency.patched()
        self._limiter.logger.error(
            "cdp_batcher: %s: %d event(s) queued and no delivery attempt for %.0f s: the dispatcher "
            "thread is %s%s. %s",
            self.name,
            len(queue),
            idle,
            "alive but not running" if alive else "not running",
            f" ({patched} has monkey-patched threading in this process)" if patched else "",
            _STALL_CAUSES,
        )
        if not alive:
            self._ensure_thread()

    def _adopt_copy(self) -> None:
        """Without a fork guard the first put in a child forked without hooks lands in the parent's
        copy of the queue; it was empty before that put (this is the empty-to-non-empty branch), so
        what it holds now is this process's: reset, then queue it again in the new queue."""
        items = self.queue.items_unlocked()
        self.on_fork()
        if self.pid != os.getpid():
            self.after_fork_in_child()
        for item in items:
            self.queue.put(item)

    def _ensure_thread(self) -> bool:
        if _concurrency.stale(self._made_with):
            thread = self._thread
            if thread is None or not thread.is_alive():  # nothing waits on the old objects
                self._make_sync()
        with self._start_lock:
            if self.forked():  # a forked copy not yet reset (adopt_fork) must never send
                return False
            thread = self._thread
            if thread is not None and thread.is_alive():
                return True
            if self._stopping:
                return False
            thread = threading.Thread(
                target=in_pipeline_thread(self._run), name=f"cdp_batcher-{self.name}-dispatcher", daemon=True
            )
            try:
                thread.start()
            except RuntimeError:  # "can't create new thread at interpreter shutdown"
                return False
            self._thread = thread
            return True

    # ----------------------------------------------------------------------------- dispatcher
    def _run(self, inline: bool = False, until: Optional[float] = None) -> None:
        """The dispatcher loop (its thread's target). ``inline``: run in the caller until the
        queue is empty (no thread could start), waiting for senders at most until ``until``."""
        queue = self.queue
        lock = self._lock
        ledger = self.ledger
        while True:
            items: list[Item] = []
            base = 0
            with lock:
                n = len(queue)
                now = _monotonic()
                self._ran_at = now
                self._stall_open = False
                expired = self._stopping and self._deadline.expired(now)
                if not expired:
                    urgent = self._stopping or inline or self._flush_target > queue.drained
                    if n and (urgent or n >= self._batch_size or now - queue.first_at >= self._interval):
                        base, items = ledger.take_locked(self._batch_size)
                full = queue.full_drops
            self._housekeeping(full)
            if expired:
                self._drop_queued("shutdown_timeout", TimeoutError("shutdown deadline passed before sending"))
                break
            if items:
                units = self._units(items, base)
                with lock:
                    self._backlog.extend(units)
                self._hand_out()
                continue
            if self._stopping or inline:
                break
            timeout = self._interval if n == 0 else max(0.0, queue.first_at + self._interval - now)
            self._wake.wait(timeout)
            self._wake.clear()
        self._housekeeping(self.queue.full_drops)
        with ledger.progress:
            left = self._deadline.time_left() if until is None else max(0.0, until - _monotonic())
            ledger.progress.wait_for(ledger.settled, timeout=left)
        if self._stopping and not inline:
            # Also when no shutdown() will call finish_shutdown (a garbage-collected client).
            at = self._deadline.at
            self._pool.stop(at if at is not None else _monotonic())

    def _hand_out(self) -> None:
        """Give the backlog's units to senders as they free up. Waiting for a sender ends at the
        shutdown deadline: what is left then is dropped (by the dispatcher or finish_shutdown)."""
        pool = self._pool
        while pool.acquire(self._deadline.time_left(), self._senders_wanted):
            with self._lock:
                unit = self._backlog.popleft() if self._backlog else None
            if unit is None:
                pool.release()
                return
            pool.submit(unit)

    def _units(self, items: list[Item], base: int) -> list[Unit]:
        """Cut a drained batch into units of at most max_unit_events / max_unit_bytes."""
        dest = self.dest
        if dest.max_unit_events == 1:
            # One request per event. Each sender takes a run of consecutive events, sent one after
            # the other, instead of one event per hand-off: the batch still spreads over the
            # senders in use, with a tenth of the thread wake-ups (make bench: per-event CPU).
            senders = min(max(1, self._senders_wanted()), max(1, dest.concurrency))
            run = max(1, -(-len(items) // senders))
            return [(base, items[i : i + run]) for i in range(0, len(items), run)]
        return [(base, unit) for unit in cut_units(items, dest.max_unit_events, dest.max_unit_bytes)]

    def _senders_wanted(self) -> int:
        """Units to have in flight: the destination's reading of the link; while nobody waits
        (no flush, no shutdown), no more than it takes to send what is queued and in flight
        within about one flush interval. More would only take CPU and GIL turns from the
        application's threads at the same time, for events nobody waits for (``make bench``:
        host-app p99); a flush or a shutdown gets every sender the link can use."""
        hint = self.dest.concurrency_hint()
        if hint <= 1 or self._stopping:
            return hint
        ledger = self.ledger
        with self._lock:
            if self._flush_pending_locked():
                return hint
            backlog = len(self.queue) + ledger.in_flight
        return min(hint, self.dest.senders_for(backlog, self._interval))

    def _run_unit(self, unit: Unit) -> None:
        base, items = unit
        self._send_unit(self._control(base, len(items)), items)

    def _send_unit(self, ctl: UnitControl, items: list[Item]) -> None:
        try:
            self.dest.send(items, ctl)
        except Exception as exc:  # a destination must not raise; never lose track of its items
            self._reporter.warn("internal", f"{self.name}: destination raised {type(exc).__name__}")
            if ctl.unresolved:
                ctl.failed(items[len(items) - ctl.unresolved :], "internal_error", exc)
            return
        if ctl.unresolved > 0:
            ctl.failed(
                items[len(items) - ctl.unresolved :], "internal_error", RuntimeError("items left unresolved")
            )

    def _housekeeping(self, full_drops: int) -> None:
        if full_drops != self._full_seen:
            delta, self._full_seen = full_drops - self._full_seen, full_drops
            self._reporter.warn(
                "queue_full", f"{self.name}: queue full, {delta} event(s) dropped (reason queue_full)"
            )
        ledger = self.ledger
        while True:
            pending = ledger.next_report()
            if pending is None:
                return
            self._reporter.call_on_error(*pending)
            ledger.reported()

    # --------------------------------------------------------------------- flush and shutdown
    def begin_flush(self, deadline: Optional[float] = None, *, inline: bool = True) -> FlushTicket:
        """Ask for everything queued so far to be sent now; the ticket to wait on and report.

        When no dispatcher thread can run (interpreter shutdown), sends from the calling thread."""
        self.adopt_fork()
        self.check_stall()
        with self._lock:
            ticket = self.ledger.ticket_locked()
            if self.ledger.spool is not None:
                self.ledger.spool.resume_locked()  # items given back: try them now
            if ticket.target > self._flush_target:
                self._flush_target = ticket.target
            waiting = len(self.queue) > 0 or self.ledger.has_reports_locked()
        self._wake.set()
        if waiting and not self._ensure_thread() and inline and not self.forked():
            self._run(inline=True, until=deadline)
        return ticket

    def wait_for_room(
        self, high: float, low: float, deadline: Optional[float], closed: Callable[[], bool]
    ) -> bool:
        """Backpressure for bulk producers: when the queue holds ``high`` of its count or byte
        bound, ask for a flush and block until it is down to ``low``. False on timeout or once
        ``closed()`` says the client was shut down."""
        queue = self.queue
        if len(queue) < queue.max_events * high and queue.nbytes < queue.max_bytes * high:
            return True
        max_events, max_bytes = queue.max_events * low, queue.max_bytes * low
        self.begin_flush()
        progress = self.ledger.progress
        with progress:
            while len(queue) > max_events or queue.nbytes > max_bytes:
                if closed():
                    return False
                left = 0.5 if deadline is None else min(0.5, deadline - _monotonic())
                if left <= 0:
                    return False
                progress.wait(left)
        return True

    def wait(self, ticket: FlushTicket, deadline: float) -> bool:
        """Block until every item below the ticket's target is resolved, or the deadline. A
        shutdown with a spool waits only for what is in flight: the rest is safe on disk."""
        ledger = self.ledger
        if self._stopping and ledger.spool is not None:
            done: Callable[[], bool] = ledger.quiet
        else:
            done = lambda: ledger.done(ticket.target)  # noqa: E731
        with ledger.progress:
            return ledger.progress.wait_for(done, timeout=max(0.0, deadline - _monotonic()))

    def report(self, ticket: FlushTicket) -> DestinationReport:
        return self.ledger.report(ticket)

    def begin_shutdown(self, deadline: float) -> None:
        spool = self.ledger.spool
        if spool is not None and spool.failing:
            # The destination is down (its last units were given back): nothing to wait for, the
            # records are on disk. The process exits fast (a deploy), nothing lost.
            deadline = min(deadline, _monotonic())
        # First: whoever sees the route stopping sees its deadline. With a spool no retry waits
        # (a backoff, a Retry-After, an outage's probe): each queued event gets its attempt and
        # what fails for a transient reason stays on disk for the next process.
        self._deadline.set(deadline, no_waits=spool is not None)
        with self._lock:
            self._stopping = True
        self._wake.set()

    def finish_shutdown(self, deadline: float) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - _monotonic()))
        if (
            (thread is None or not thread.is_alive())
            and (len(self.queue) or self.ledger.next_report() is not None)
            and not self.forked()
        ):  # no dispatcher ran, or a call raced its exit
            self._run(inline=True, until=deadline)
        self._pool.stop(deadline)
        if len(self.queue) or self._backlog:  # the deadline passed with units waiting for a sender
            self._drop_queued("shutdown_timeout", TimeoutError("shutdown deadline passed before sending"))
        if thread is None or not thread.is_alive():
            self.dest.close()

    def snapshot(self) -> DestinationStats:
        self.adopt_fork()
        self.check_stall()
        return self.ledger.snapshot()
