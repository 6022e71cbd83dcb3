"""How many units a route sends at once, and the threads that send them.

:class:`SenderPool` keeps at most ``size`` units in flight (fewer when :meth:`SenderPool.acquire`
is given a lower limit) on daemon sender threads started on demand; a pool of size 1 sends from
the dispatcher itself.

:class:`ConcurrencyGovernor` says how many senders are worth running on the link as it is: the
fastest wall time of the last 8 requests over 1.5 times their average CPU time
(``time.thread_time``), 1 to ``concurrency`` (all of them until a request has been timed). A
fast link (answers within a few hundred µs) gets 1 or 2 senders, as more would only take turns
on the GIL, against each other and the application's threads; a 50 ms round trip keeps every
sender busy. The fastest wall time and the 1.5 because a request's wall time also counts its
waits for the GIL: an average over the plain CPU time would hold up whatever concurrency the
route started with, while 1.5 still adds a second sender when the server takes as long as the
request's own CPU. :meth:`ConcurrencyGovernor.demand` says how many it takes to send a backlog
within a given time at the recent mean request time: the route's cap while nobody waits.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from queue import SimpleQueue  # the type only: instances come from _concurrency
from typing import Callable, Optional

from . import _concurrency
from ._event import Item
from ._lifecycle import in_pipeline_thread

__all__ = ["LIMIT_RECHECK", "TIMED_REQUESTS", "ConcurrencyGovernor", "SenderPool", "Unit"]

_monotonic = time.monotonic

#: A unit: the base sequence number of the batch it was cut from, and its items.
Unit = tuple[int, list[Item]]

#: A dispatcher waiting for a sender reads the limit again this often (a limit that rises,
#: e.g. when requests turn slow, is seen before a sender frees up).
LIMIT_RECHECK = 0.1

#: ``ConcurrencyGovernor``: requests whose fastest wall time counts; weight of the newest request
#: in the average CPU time; the divisor of their ratio (see above); the least CPU time a request
#: is taken to cost (a coarse clock reads 0).
TIMED_REQUESTS = 8
CPU_WEIGHT = 0.25
HINT_DIVISOR = 1.5
MIN_REQUEST_CPU = 20e-6
#: The CPU time of one request in this many is read (:meth:`ConcurrencyGovernor.cpu_start`).
CPU_SAMPLE = 4


class ConcurrencyGovernor:
    """Senders worth running now, from the wall and CPU times of the last requests."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._lock = _concurrency.lock()
        self._walls: deque[float] = deque(maxlen=TIMED_REQUESTS)  # wall times of the last requests
        self._cpu = 0.0  # moving average of a request's CPU time
        self._count = 0  # requests started (cpu_start)

    def record(self, wall: float, cpu: float, requests: int = 1) -> None:
        """Record ``requests`` requests (success or failure) of ``wall`` and ``cpu`` seconds each."""
        with self._lock:
            self._cpu = cpu if not self._walls else self._cpu + CPU_WEIGHT * (cpu - self._cpu)
            self._walls.extend((wall,) * min(requests, TIMED_REQUESTS))

    def cpu_start(self) -> Optional[float]:
        """The thread's CPU clock at a request's start, for one request in ``CPU_SAMPLE`` (the
        clock is a system call, a microsecond; the average needs no more); else None."""
        self._count = count = self._count + 1  # a lost update under a race only shifts the sample
        return time.thread_time() if count % CPU_SAMPLE == 1 or not self._walls else None

    def record_since(self, wall: float, cpu_start: Optional[float], requests: int = 1) -> None:
        """Record a request of ``wall`` seconds; its CPU time too when ``cpu_start`` was read.
        ``requests``: a group sent at once, ``wall`` and the CPU time since ``cpu_start`` each
        request's share."""
        if cpu_start is not None:
            self.record(wall, (time.thread_time() - cpu_start) / requests, requests)
        else:
            with self._lock:
                self._walls.extend((wall,) * min(requests, TIMED_REQUESTS))

    def hint(self) -> int:
        """ceil(fastest recent wall time / (1.5 * CPU time)), 1 to concurrency."""
        with self._lock:
            if not self._walls:
                return self.concurrency
            wanted = math.ceil(min(self._walls) / (HINT_DIVISOR * max(self._cpu, MIN_REQUEST_CPU)))
        return max(1, min(self.concurrency, wanted))

    def demand(self, events: int, within: float) -> int:
        """ceil(events * mean recent wall time / within), 1 to concurrency: the senders that send
        ``events`` one after the other within ``within`` seconds (all of them until a request
        has been timed)."""
        with self._lock:
            walls = self._walls
            if not walls:
                return self.concurrency
            mean = sum(walls) / len(walls)
        return max(1, min(self.concurrency, math.ceil(events * mean / within)))

    def after_fork(self) -> None:
        self._lock = _concurrency.lock()


class SenderPool:
    """At most ``size`` units in flight (fewer when :meth:`acquire` is given a lower ``limit``);
    daemon sender threads started on demand."""

    def __init__(self, size: int, run: Callable[[Unit], None], name: str) -> None:
        self._size = size
        self._run = run
        self._name = name
        self._taken = 0  # slots taken by acquire, not yet given back
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self.make_sync()

    def make_sync(self) -> None:
        """(Re)make the pool's locks and job queue from the threading module in force; only while
        no sender thread is alive (see _concurrency)."""
        if any(t.is_alive() for t in self._threads):
            return
        self._freed = _concurrency.condition()
        self._jobs: SimpleQueue[Optional[Unit]] = _concurrency.simple_queue()
        self._lock = _concurrency.lock()

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

    def submit(self, unit: Unit) -> None:
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

    def _run_one(self, unit: Unit) -> None:
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
