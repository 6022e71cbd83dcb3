"""Synchronisation objects that follow the ``threading`` module in force (gevent, eventlet).

gevent's and eventlet's monkey-patching replace ``threading.Lock``, ``threading.Event``,
``threading.Thread`` and ``queue.SimpleQueue`` in their modules. An object made *before* the
patch keeps the original's behaviour: waiting on it blocks the OS thread, and under gevent that
thread is the hub's (no accept, no heartbeat, no signal handled). That happens with gunicorn
``-k gevent --preload``: the client is made in the arbiter, the fork hook rebuilds its objects in
the worker, still before the worker patches, and the first request then starts a greenlet
"thread" that waits on an unpatched ``Event``.

So the pipeline makes its objects here, looking each class up at call time (never a name bound at
import, such as ``from queue import SimpleQueue``), and remembers :func:`token` with them. A
holder compares it with :func:`stale` at a slow branch (a thread start) and rebuilds its objects
when the patch came after them. :func:`patched` names the library that patched, for log lines;
it never imports gevent or eventlet.
"""

from __future__ import annotations

import mmap
import queue
import sys
import threading
from typing import Any, Optional

__all__ = [
    "condition",
    "event",
    "fork_guard",
    "fork_guard_works",
    "local",
    "lock",
    "patched",
    "simple_queue",
    "stale",
    "token",
]


def token() -> object:
    """What identifies the ``threading`` implementation in force: ``threading.Lock`` itself,
    which monkey-patching replaces."""
    return threading.Lock


def stale(made_with: object) -> bool:
    """True when ``threading`` was patched since ``made_with = token()`` (one identity compare)."""
    return threading.Lock is not made_with


def lock() -> Any:
    """A new ``threading.Lock`` of the implementation in force."""
    return threading.Lock()


def condition(with_lock: Any = None) -> threading.Condition:
    """A new ``threading.Condition`` (over ``with_lock``, else a new lock) of the implementation in force."""
    return threading.Condition(lock() if with_lock is None else with_lock)


def event() -> threading.Event:
    """A new ``threading.Event`` of the implementation in force."""
    return threading.Event()


def local() -> Any:
    """A new ``threading.local`` of the implementation in force (per greenlet once patched)."""
    return threading.local()


def simple_queue() -> queue.SimpleQueue[Any]:
    """A new ``queue.SimpleQueue`` of the implementation in force (gevent patches the C one)."""
    return queue.SimpleQueue()


def patched() -> Optional[str]:
    """``"gevent"`` or ``"eventlet"`` when that library has monkey-patched ``threading``; None
    otherwise. Looks only at modules already imported."""
    monkey = sys.modules.get("gevent.monkey")
    try:
        if monkey is not None and monkey.is_module_patched("threading"):
            return "gevent"
        patcher = sys.modules.get("eventlet.patcher")
        if patcher is not None and patcher.is_monkey_patched("thread"):
            return "eventlet"
    except Exception:  # an unexpected version: no name rather than a failure
        return None
    return None


# ------------------------------------------------------------------------------ fork detection
#: Linux's MADV_WIPEONFORK (4.14+; the mmap module names it from Python 3.12 on some builds only).
_MADV_WIPEONFORK = getattr(mmap, "MADV_WIPEONFORK", 18 if sys.platform.startswith("linux") else None)


def fork_guard() -> Any:
    """A one-byte flag that reads 1 in this process and 0 in any child forked from it, whatever
    did the fork: ``os.fork()``, uWSGI's C ``fork()`` that runs no Python hook, ``libc.fork()``.

    It is a private anonymous page marked ``MADV_WIPEONFORK``: the kernel hands a child a zeroed
    copy. Reading ``guard[0]`` costs about 15 ns, against about 190 ns for ``os.getpid()`` (a
    system call on glibc >= 2.25), so it can sit on the hot path. Where the kernel or the platform
    has no such page, the flag is a plain ``bytearray`` that always reads 1 and
    :func:`fork_guard_works` is False: callers then compare ``os.getpid()`` at their slow branches.
    """
    if _MADV_WIPEONFORK is not None and hasattr(mmap, "MAP_PRIVATE"):
        try:
            page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            page.madvise(_MADV_WIPEONFORK)
        except (OSError, ValueError, AttributeError):
            pass
        else:
            page[0] = 1
            return page
    return bytearray(b"\x01")


def fork_guard_works(guard: Any) -> bool:
    """True when ``guard`` (from :func:`fork_guard`) is wiped in a forked child."""
    return isinstance(guard, mmap.mmap)
