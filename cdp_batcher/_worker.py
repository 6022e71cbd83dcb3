"""The flusher: one route per destination — its queue, counters, dispatcher thread and senders.

A route's dispatcher thread wakes when a full batch waits, when the oldest event has waited
``flush_interval``, on ``flush()`` and on ``shutdown()``. It drains a batch, cuts it into
units the destination can send in one request, and hands the units to a small pool of sender
threads (``destination.concurrency`` of them; a concurrency of 1 sends from the dispatcher
itself). At most ``destination.concurrency_hint()`` units are in flight, read again at each
hand-out, and a one-request-per-event batch is cut into that many runs (OpenCDP lowers the hint
on a fast link: see ``destinations/opencdp.py``); a hint that drops while units are in flight
only makes the dispatcher wait for more of them to finish. Routes share nothing, so a slow or
failing destination never delays another.

Every item drained is resolved exactly once (delivered, failed or dropped) through a
:class:`_Control`; the counters live under the queue's lock so that a snapshot always satisfies
``enqueued == delivered + failed + dropped + queued + in_flight``.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from queue import SimpleQueue
from typing import Any, Callable, Optional

from ._config import OnError
from ._errors import CDPError
from ._event import KIND_NAMES, Item
from ._lifecycle import in_pipeline_thread, pipeline_frame
from ._queue import EventQueue
from ._stats import DestinationReport, DestinationStats, FailedEvent, frozen_counts
from .destinations._base import Destination

__all__ = ["LogLimiter", "Route"]

_monotonic = time.monotonic

DELIVERED, FAILED, DROPPED = 0, 1, 2
#: Calls dropped at call time (too large, unsupported) waiting for their on_error report.
_MAX_PENDING_REPORTS = 1000

#: Requests and retry waits end this long before a shutdown deadline, so that their outcome is
#: counted by the deadline (a report then has nothing pending that was cut short).
RESOLVE_MARGIN = 0.05

#: A dispatcher waiting for a sender reads the destination's concurrency_hint() again this often
#: (a hint that rises, e.g. when requests turn slow, is seen before a sender frees up).
LIMIT_RECHECK = 0.1


class LogLimiter:
    """Rate-limited logging: one line per key per ``interval``, then a count of what was held back."""

    def __init__(self, logger: Any, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._lock = threading.Lock()
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


class _SenderPool:
    """At most ``size`` units in flight (fewer when :meth:`acquire` is given a lower ``limit``);
    daemon sender threads started on demand."""

    def __init__(self, size: int, run: Callable[[tuple[int, list[Item]]], None], name: str) -> None:
        self._size = size
        self._run = run
        self._name = name
        self._taken = 0  # slots taken by acquire, not yet given back
        self._freed = threading.Condition(threading.Lock())
        self._jobs: SimpleQueue[Optional[tuple[int, list[Item]]]] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._lock = threading.Lock()

    def acquire(self, timeout: Optional[float], limit: Callable[[], int]) -> bool:
        """Take a slot once fewer than ``limit()`` (1 to ``size``; read again at least every
        ``LIMIT_RECHECK`` seconds) units are in flight; wait at most ``timeout`` seconds (None: no limit)."""
        if self._size == 1:
            return True
        end = None if timeout is None else _monotonic() + timeout
        with self._freed:
            while self._taken >= min(max(limit(), 1), self._size):
                left = LIMIT_RECHECK if end is None else min(LIMIT_RECHECK, end - _monotonic())
                if left <= 0:
                    return False
                self._freed.wait(left)
            self._taken += 1
            return True

    def release(self) -> None:
        """Give back a slot taken by :meth:`acquire` (unused, or its unit sent)."""
        if self._size != 1:
            with self._freed:
                self._taken -= 1
                self._freed.notify()

    def submit(self, unit: tuple[int, list[Item]]) -> None:
        """Send ``unit`` on a slot taken by :meth:`acquire`."""
        if self._size == 1:
            self._run(unit)
            return
        with self._lock:
            self._busy += 1
            need_thread = self._busy > len(self._threads)
        if need_thread:
            thread = threading.Thread(
                target=in_pipeline_thread(self._loop), name=f"{self._name}-sender", daemon=True
            )
            try:
                thread.start()
            except RuntimeError:  # interpreter shutting down: send from this thread
                self._run_one(unit)
                return
            self._threads.append(thread)
        self._jobs.put(unit)

    def _run_one(self, unit: tuple[int, list[Item]]) -> None:
        try:
            self._run(unit)
        finally:
            with self._lock:
                self._busy -= 1
            self.release()

    def _loop(self) -> None:
        while True:
            unit = self._jobs.get()
            if unit is None:
                return
            self._run_one(unit)

    def stop(self, deadline: float) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(max(0.0, deadline - _monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]


class _Control:
    """The :class:`SendControl` handed to a destination with one unit."""

    __slots__ = ("_base", "_route", "first_error", "unresolved")

    def __init__(self, route: Route, base: Optional[int], count: int) -> None:
        self._route = route
        self._base = base
        self.unresolved = count
        self.first_error: Optional[tuple[str, BaseException]] = None

    def remaining(self) -> Optional[float]:
        deadline = self._route._deadline
        return None if deadline is None else deadline - RESOLVE_MARGIN - _monotonic()

    def sleep(self, delay: float) -> bool:
        route = self._route
        end = _monotonic() + delay
        with route._deadline_cond:
            while True:
                deadline = route._deadline
                if deadline is not None and deadline - RESOLVE_MARGIN < end:
                    return False
                left = end - _monotonic()
                if left <= 0:
                    return True
                route._deadline_cond.wait(left)

    def delivered(self, items: Sequence[Item]) -> None:
        self._resolve(items, DELIVERED, "", None)

    def failed(self, items: Sequence[Item], reason: str, error: BaseException) -> None:
        self._resolve(items, FAILED, reason, error)

    def dropped(self, items: Sequence[Item], reason: str, error: BaseException) -> None:
        self._resolve(items, DROPPED, reason, error)

    def retried(self, n: int = 1) -> None:
        route = self._route
        with route._lock:
            route._retried += n

    def warn(self, key: str, message: str) -> None:
        self._route._limiter.warn(f"{self._route.name}:{key}", message)

    def _resolve(
        self, items: Sequence[Item], bucket: int, reason: str, error: Optional[BaseException]
    ) -> None:
        n = len(items)
        if n == 0:
            return
        route = self._route
        try:
            if error is not None:
                if self.first_error is None:
                    self.first_error = (reason, error)
                # Report before counting: a flush() that sees these items resolved has also
                # seen their on_error call return.
                route._report(items, reason, error, failed=bucket == FAILED)
        finally:
            with route._lock:
                route._in_flight -= n
                if bucket == DELIVERED:
                    route._delivered += n
                elif bucket == FAILED:
                    route._failed[reason] += n
                else:
                    route._dropped[reason] += n
                base = self._base
                if base is not None:
                    left = route._outstanding[base] - n
                    if left > 0:
                        route._outstanding[base] = left
                    else:
                        del route._outstanding[base]
                route._progress.notify_all()
            self.unresolved -= n


class Route:
    """A destination with its own queue, counters, dispatcher thread, senders and deadline."""

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
    ) -> None:
        self.dest = destination
        self.name = destination.name
        self._max_queue_size = max_queue_size
        self._max_queue_bytes = max_queue_bytes
        self._batch_size = max_batch_size
        self._interval = flush_interval
        self._on_error = on_error
        self._limiter = limiter
        self._reset()

    # ------------------------------------------------------------------ state (also after fork)
    def _reset(self) -> None:
        self.queue = EventQueue(self._max_queue_size, self._max_queue_bytes, self._batch_size)
        self._lock = self.queue.lock
        self._progress = threading.Condition(self._lock)
        self._deadline_cond = threading.Condition(threading.Lock())
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self.queue.on_first = self._on_first
        self.queue.on_batch = self._wake.set
        self._delivered = 0
        self._retried = 0
        self._in_flight = 0
        self._failed: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._outstanding: dict[int, int] = {}  # batch base sequence -> items not yet resolved
        self._backlog: deque[tuple[int, list[Item]]] = deque()  # units drained, not yet sending
        self._flush_target = 0
        self._stopping = False
        self._deadline: Optional[float] = None
        self._thread: Optional[threading.Thread] = None
        self._pid = os.getpid()
        self._rejects: deque[tuple[list[Item], str, BaseException]] = deque()
        self._full_seen = 0
        self._pool = _SenderPool(self.dest.concurrency, self._run_unit, f"cdp_batcher-{self.name}")

    def after_fork_in_child(self) -> None:
        """The child starts empty, with its own lock, thread and connections."""
        self._reset()
        self.dest.after_fork()

    # ------------------------------------------------------------------------------ producers
    @property
    def put(self) -> Callable[[Item], bool]:
        """The hot-path put (the queue's own bound method)."""
        return self.queue.put

    def drop_at_offer(self, item: Item, reason: str, error: Optional[BaseException] = None) -> None:
        """Count a call this destination will not take; report it via on_error when an error is given."""
        report = error is not None and self._on_error is not None
        with self._lock:
            self.queue.offered += 1
            self._dropped[reason] += 1
            # flush() waits for these reports; past the bound the drop is only counted.
            if report and len(self._rejects) < _MAX_PENDING_REPORTS:
                assert error is not None
                self._rejects.append(([item], reason, error))
            else:
                report = False
        if report:
            self._wake.set()
            self._on_first()

    def send_now(self, item: Item) -> Optional[tuple[str, BaseException]]:
        """sync_mode: send one item from the calling thread; the failure, if any."""
        with self._lock:
            self.queue.offered += 1
            self._in_flight += 1
        ctl = _Control(self, None, 1)
        self._send_unit(ctl, [item])
        return ctl.first_error

    def _on_first(self) -> None:
        thread = self._thread
        if (
            (thread is None or self._pid != os.getpid() or not thread.is_alive())
            and not self._ensure_thread()
            and self._stopping
            and self._pid == os.getpid()
        ):  # a call that raced shutdown() onto a queue no flusher will drain again
            self._drop_queued("shutdown", CDPError(f"{self.name}: call raced shutdown()"))

    def _drop_queued(self, reason: str, error: BaseException) -> None:
        """Resolve everything still queued, or drained but not yet given to a sender, as dropped."""
        with self._lock:
            base = self.queue.drained
            items = self.queue.drain_locked(len(self.queue))
            if items:
                self._in_flight += len(items)
                self._outstanding[base] = len(items)
            units = list(self._backlog)
            self._backlog.clear()
        for unit_base, unit in units:
            _Control(self, unit_base, len(unit)).dropped(unit, reason, error)
        if items:
            _Control(self, base, len(items)).dropped(items, reason, error)

    def _ensure_thread(self) -> bool:
        with self._start_lock:
            if self._pid != os.getpid():  # forked by a path that ran no at-fork hook
                return False
            thread = self._thread
            if thread is not None and thread.is_alive():
                return True
            if self._stopping:
                return False
            thread = threading.Thread(
                target=in_pipeline_thread(self._run), name=f"cdp_batcher-{self.name}-flusher", daemon=True
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
        while True:
            items: list[Item] = []
            base = 0
            with lock:
                n = len(queue)
                now = _monotonic()
                deadline = self._deadline
                expired = self._stopping and deadline is not None and now >= deadline
                if not expired:
                    urgent = self._stopping or inline or self._flush_target > queue.drained
                    if n and (urgent or n >= self._batch_size or now - queue.first_at >= self._interval):
                        base = queue.drained
                        items = queue.drain_locked(self._batch_size)
                        self._in_flight += len(items)
                        self._outstanding[base] = len(items)
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
        with self._progress:
            left = self._time_left() if until is None else max(0.0, until - _monotonic())
            self._progress.wait_for(lambda: not self._outstanding, timeout=left)
        if self._stopping and not inline:
            # Also when no shutdown() will call finish_shutdown (a garbage-collected client).
            self._pool.stop(self._deadline if self._deadline is not None else _monotonic())

    def _hand_out(self) -> None:
        """Give the backlog's units to senders as they free up. Waiting for a sender ends at the
        shutdown deadline: what is left then is dropped (by the dispatcher or finish_shutdown)."""
        pool = self._pool
        hint = self.dest.concurrency_hint
        while pool.acquire(self._time_left(), hint):
            with self._lock:
                unit = self._backlog.popleft() if self._backlog else None
            if unit is None:
                pool.release()
                return
            pool.submit(unit)

    def _time_left(self) -> Optional[float]:
        deadline = self._deadline
        return None if deadline is None else max(0.0, deadline - _monotonic())

    def _units(self, items: list[Item], base: int) -> list[tuple[int, list[Item]]]:
        """Cut a drained batch into units of at most max_unit_events / max_unit_bytes."""
        dest = self.dest
        per = dest.max_unit_events
        if per == 1:
            # One request per event. Each sender takes a run of consecutive events, sent one after
            # the other, instead of one event per hand-off: the batch still spreads over the
            # senders in use, with a tenth of the thread wake-ups (make bench: per-event CPU).
            senders = min(max(1, dest.concurrency_hint()), max(1, dest.concurrency))
            run = max(1, -(-len(items) // senders))
            return [(base, items[i : i + run]) for i in range(0, len(items), run)]
        limit = dest.max_unit_bytes
        units: list[tuple[int, list[Item]]] = []
        current: list[Item] = []
        size = 0
        for item in items:
            body = len(item[1]) + 1
            if current and (len(current) >= per or (limit is not None and size + body > limit)):
                units.append((base, current))
                current, size = [], 0
            current.append(item)
            size += body
        if current:
            units.append((base, current))
        return units

    def _run_unit(self, unit: tuple[int, list[Item]]) -> None:
        base, items = unit
        self._send_unit(_Control(self, base, len(items)), items)

    def _send_unit(self, ctl: _Control, items: list[Item]) -> None:
        try:
            self.dest.send(items, ctl)
        except Exception as exc:  # a destination must not raise; never lose track of its items
            self._limiter.warn(
                f"{self.name}:internal", f"{self.name}: destination raised {type(exc).__name__}"
            )
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
            self._limiter.warn(
                f"{self.name}:queue_full",
                f"{self.name}: queue full, {delta} event(s) dropped (reason queue_full)",
            )
        while self._rejects:
            items, reason, error = self._rejects[0]
            self._call_on_error(items, reason, error)
            with self._progress:  # reported: a flush() waiting for it may return
                self._rejects.popleft()
                self._progress.notify_all()

    # ---------------------------------------------------------------------- failure reporting
    def _report(self, items: Sequence[Item], reason: str, error: BaseException, *, failed: bool) -> None:
        kind = "failed" if failed else "dropped"
        self._limiter.warn(
            f"{self.name}:{kind}:{reason}", f"{self.name}: {len(items)} event(s) {kind} ({reason}): {error}"
        )
        self._call_on_error(items, reason, error)

    def _call_on_error(self, items: Sequence[Item], reason: str, error: BaseException) -> None:
        callback = self._on_error
        if callback is None:
            return
        try:
            records = [self.failed_event(item, reason) for item in items]
            with pipeline_frame:  # also when the pipeline runs inline in a caller's thread
                callback(error, records)
        except Exception as exc:
            self._limiter.warn(
                "on_error", f"on_error callback raised {type(exc).__name__}: {exc}", level="error"
            )

    def failed_event(self, item: Item, reason: str) -> FailedEvent:
        kind, _ = item
        try:
            identifier, event_name, properties = self.dest.describe(item)
        except Exception:
            identifier, event_name, properties = None, None, {}
        return FailedEvent(self.name, KIND_NAMES[kind], identifier, event_name, properties, reason)

    # --------------------------------------------------------------------- flush and shutdown
    def begin_flush(
        self, deadline: Optional[float] = None, *, inline: bool = True
    ) -> tuple[int, tuple[int, Counter[str], Counter[str]]]:
        """Ask for everything queued so far to be sent now; returns (target, counters before).

        When no flusher thread can run (interpreter shutdown), sends from the calling thread."""
        with self._lock:
            target = self.queue.accepted
            if target > self._flush_target:
                self._flush_target = target
            before = (self._delivered, Counter(self._failed), Counter(self._dropped))
            waiting = len(self.queue) > 0 or bool(self._rejects)
        self._wake.set()
        if waiting and not self._ensure_thread() and inline and self._pid == os.getpid():
            self._run(inline=True, until=deadline)
        return target, before

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
        with self._progress:
            while len(queue) > max_events or queue.nbytes > max_bytes:
                if closed():
                    return False
                left = 0.5 if deadline is None else min(0.5, deadline - _monotonic())
                if left <= 0:
                    return False
                self._progress.wait(left)
        return True

    def _done(self, target: int) -> bool:
        if self.queue.drained < target or self._rejects:
            return False
        return not self._outstanding or min(self._outstanding) >= target

    def wait(self, target: int, deadline: float) -> bool:
        with self._progress:
            return self._progress.wait_for(
                lambda: self._done(target), timeout=max(0.0, deadline - _monotonic())
            )

    def report(self, target: int, before: tuple[int, Counter[str], Counter[str]]) -> DestinationReport:
        with self._lock:
            pending = max(0, target - self.queue.drained)
            pending += sum(n for b, n in self._outstanding.items() if b < target)
            delivered = self._delivered - before[0]
            failed = self._failed - before[1]
            dropped = self._dropped - before[2]
        return DestinationReport(delivered, frozen_counts(failed), frozen_counts(dropped), pending)

    def begin_shutdown(self, deadline: float) -> None:
        with self._lock:
            self._stopping = True
            if self._deadline is None or deadline < self._deadline:
                self._deadline = deadline
        with self._deadline_cond:
            self._deadline_cond.notify_all()
        self._wake.set()

    def finish_shutdown(self, deadline: float) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - _monotonic()))
        if (
            (thread is None or not thread.is_alive())
            and (len(self.queue) or self._rejects)
            and self._pid == os.getpid()
        ):  # no flusher ran, or a call raced its exit
            self._run(inline=True, until=deadline)
        self._pool.stop(deadline)
        if len(self.queue) or self._backlog:  # the deadline passed with units waiting for a sender
            self._drop_queued("shutdown_timeout", TimeoutError("shutdown deadline passed before sending"))
        if thread is None or not thread.is_alive():
            self.dest.close()

    # ---------------------------------------------------------------------------------- stats
    def snapshot(self) -> DestinationStats:
        with self._lock:
            dropped = Counter(self._dropped)
            if self.queue.full_drops:
                dropped["queue_full"] += self.queue.full_drops
            return DestinationStats(
                enqueued=self.queue.offered,
                delivered=self._delivered,
                failed=frozen_counts(self._failed),
                dropped=frozen_counts(dropped),
                retried=self._retried,
                queued=len(self.queue),
                in_flight=self._in_flight,
            )
