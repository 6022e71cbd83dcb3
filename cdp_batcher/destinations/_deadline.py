"""Whole-request deadlines for calls we do not drive byte by byte (urllib3's ``urlopen``, a
user's ``requests.Session``).

Their timeouts bound each socket operation, so a server that drips one byte per second, or an
endless header, holds the call for as long as it likes. :class:`Watchdog` bounds the whole call:
the caller registers its deadline around the call (:meth:`Watchdog.guard`); one daemon thread
(``cdp_batcher-deadline``, running only while a guard is open) wakes at the earliest deadline
and shuts down the sockets the late call is blocked on, so its ``recv``/``send`` returns at once
and the call fails; the caller then reports a timeout. The sockets are found in the caller's
own frames newer than the guard (the frames of the request it is making, nothing of the
application's), and only those: a ``socket.socket`` or an object holding one as ``sock`` or
``_sock`` (``http.client``'s connection, ``socket.SocketIO``). Cutting repeats every
``RECUT`` seconds while the call is still inside (it may have moved on to another socket).

Its lock, condition and thread belong to one process and one ``threading`` implementation: a
guard opened after a fork (with or without Python's fork hooks) or after gevent/eventlet
monkey-patched ``threading`` starts afresh (:class:`_State`). Under gevent a condition made
before the patch holds a real lock: the watchdog greenlet waiting on it would block the hub.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, Callable, Optional

from .. import _concurrency

__all__ = ["WATCHDOG", "Watchdog"]

#: How often a late call is cut again while it has not returned; how long the thread stays idle.
RECUT = 0.05
LINGER = 1.0


class _Guard:
    __slots__ = ("deadline", "frame", "ident", "late")

    def __init__(self, deadline: float, frame: Optional[FrameType], ident: int) -> None:
        self.deadline = deadline
        self.frame = frame
        self.ident = ident
        self.late = False


class _State:
    """The watchdog's objects for one process and one ``threading`` implementation."""

    __slots__ = ("cond", "guards", "made_with", "pid", "thread")

    def __init__(self) -> None:
        self.made_with = _concurrency.token()
        self.pid = os.getpid()
        self.cond = _concurrency.condition()
        self.guards: dict[int, _Guard] = {}
        self.thread: Optional[threading.Thread] = None

    def current(self) -> bool:
        """False in a forked child, or once ``threading`` was monkey-patched since."""
        return self.pid == os.getpid() and not _concurrency.stale(self.made_with)


class Watchdog:
    """Cuts the sockets of guarded calls that outlive their deadline (see the module doc)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ids = itertools.count()
        self._state = _State()

    def _current(self) -> _State:
        """This process's state under the ``threading`` in force, made afresh when the old one is
        a forked copy (a parent thread may have held its lock; its thread is not here) or was made
        before a monkey-patch. A replaced state keeps serving the guards opened on it (its thread
        holds it), so two callers replacing it at once lose nothing."""
        state = self._state
        if not state.current():
            state = self._state = _State()
        return state

    @contextmanager
    def guard(self, deadline: float) -> Iterator[_Guard]:
        """Bound the body of the ``with`` to ``deadline`` (a ``clock`` time); ``.late`` tells
        afterwards whether it was cut."""
        entry = _Guard(deadline, sys._getframe(2), threading.get_ident())
        key = next(self._ids)
        state = self._current()
        with state.cond:
            state.guards[key] = entry
            if state.thread is None or not state.thread.is_alive():
                state.thread = threading.Thread(
                    target=self._run, args=(state,), name="cdp_batcher-deadline", daemon=True
                )
                state.thread.start()
            else:
                state.cond.notify()
        try:
            yield entry
        finally:
            with state.cond:
                state.guards.pop(key, None)
                entry.frame = None
                if not state.guards:
                    state.cond.notify()

    def _run(self, state: _State) -> None:
        cond, guards = state.cond, state.guards
        idle_since: Optional[float] = None
        with cond:
            while True:
                now = self._clock()
                if not guards:
                    if idle_since is None:
                        idle_since = now
                    elif now - idle_since >= LINGER:
                        state.thread = None
                        return
                    cond.wait(LINGER)
                    continue
                idle_since = None
                late = [g for g in guards.values() if g.deadline <= now]
                for entry in late:
                    entry.late = True
                    _cut(entry)
                wake = min(g.deadline for g in guards.values())
                cond.wait(RECUT if late else max(0.0, wake - now) + 0.001)


def _cut(entry: _Guard) -> None:
    """Shut down the sockets in the guarded thread's frames newer than the guard."""
    frame: Optional[FrameType] = sys._current_frames().get(entry.ident)
    stop = entry.frame
    seen: set[int] = set()
    while frame is not None and frame is not stop:
        try:
            values = list(frame.f_locals.values())
        except Exception:  # a frame mid-teardown
            values = []
        for value in values:
            for sock in (value, getattr(value, "sock", None), getattr(value, "_sock", None)):
                if isinstance(sock, socket.socket) and id(sock) not in seen:
                    seen.add(id(sock))
                    _shutdown(sock)
        frame = frame.f_back


def _shutdown(sock: Any) -> None:
    with contextlib.suppress(OSError):  # not connected (yet), or already closed
        sock.shutdown(socket.SHUT_RDWR)


#: The process's one watchdog (its thread exists only while calls are guarded).
WATCHDOG = Watchdog()
