"""Process lifecycle around a client: the re-entrancy guard and the process hooks.

Hooks (:class:`ClientHooks`, one per client, holding the client only weakly): an ``atexit``
handler that shuts the client down (unregistered by ``shutdown()``); an ``os.register_at_fork``
hook that resets every live client in a forked child (and :meth:`ClientHooks.unhooked_fork`, which
a route calls when it finds itself in a child forked without Python's fork hooks: uWSGI's
default, a C extension calling ``fork()``); in a multiprocessing child (whose exit
skips atexit) a multiprocessing finalizer instead; and a GC finalizer that lets the threads of
a client dropped without ``shutdown()`` deliver and end.

Re-entry: ``flush()`` and ``shutdown()`` must not wait when the calling thread is already inside
the pipeline — an ``on_error`` callback, a log handler called from a sender, or a signal handler
that interrupted ``track()`` while ``put()`` held the queue's lock — because the wait could be on
a lock or a progress that this very thread holds. Two sources say so, and :func:`inside_pipeline`
is the one place that reads them:

* explicit state: a thread-local depth, raised for the whole life of every pipeline thread
  (dispatcher, senders) and around the pipeline's own calls into user code and its long waits
  (:func:`pipeline_frame`);
* for signal handlers only (the hot path sets no state, to stay as lean as it is): the stack of
  the interrupted thread. Every module of the package counts as pipeline except the few named
  in :data:`OUTSIDE_PIPELINE` (the facade and tools, which hold no pipeline lock), so a module
  added later is covered without anyone remembering to list it (``tests/test_reentry.py``).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import time
import types
import weakref
from collections.abc import Sequence
from typing import Any, Callable, Optional, Protocol, TypeVar

from . import _concurrency

__all__ = [
    "OUTSIDE_PIPELINE",
    "ClientHooks",
    "abandon_routes",
    "in_pipeline_thread",
    "inside_pipeline",
    "is_pipeline_module",
    "pipeline_frame",
]

_T = TypeVar("_T")

#: Package modules whose frames never hold a pipeline lock: the facade (its own shutdown lock is
#: taken inside :func:`pipeline_frame`), these hooks, and the command-line tools and test server.
OUTSIDE_PIPELINE = frozenset(
    {
        "cdp_batcher",
        "cdp_batcher.__main__",
        "cdp_batcher._client",
        "cdp_batcher._lifecycle",
        "cdp_batcher._cli",
        "cdp_batcher._import",
        "cdp_batcher._progress",
    }
)
_TOOLS_PREFIX = "cdp_batcher.testing"
_PACKAGE_PREFIX = "cdp_batcher."

#: The depth's thread-local, remade when gevent/eventlet patched ``threading`` since (their
#: ``local`` is per greenlet: an unpatched one would make every greenlet of the hub's thread
#: count as inside the pipeline while a dispatcher greenlet runs; see _concurrency).
_state: Any = _concurrency.local()
_state_token = _concurrency.token()


def _local() -> Any:
    global _state, _state_token
    if _concurrency.stale(_state_token):
        _state, _state_token = _concurrency.local(), _concurrency.token()
    return _state


def is_pipeline_module(name: str) -> bool:
    """True for a module of the package whose frames may hold a pipeline lock."""
    return (
        name.startswith(_PACKAGE_PREFIX)
        and name not in OUTSIDE_PIPELINE
        and not (name == _TOOLS_PREFIX or name.startswith(_TOOLS_PREFIX + "."))
    )


class _Frame:
    """Context manager raising this thread's pipeline depth (cheaper than a generator one)."""

    __slots__ = ()

    def __enter__(self) -> None:
        state = _local()
        state.depth = getattr(state, "depth", 0) + 1

    def __exit__(self, *exc_info: object) -> None:
        state = _local()
        state.depth = max(0, getattr(state, "depth", 1) - 1)


#: ``with pipeline_frame:`` around code during which this thread counts as inside the pipeline.
pipeline_frame = _Frame()


def in_pipeline_thread(target: Callable[..., _T]) -> Callable[..., _T]:
    """Wrap a pipeline thread's target: the whole thread counts as inside the pipeline."""

    def run(*args: Any, **kwargs: Any) -> _T:
        with pipeline_frame:
            return target(*args, **kwargs)

    return run


def inside_pipeline() -> bool:
    """True when the calling thread is already inside the pipeline (see the module doc)."""
    if getattr(_local(), "depth", 0):
        return True
    frame: Optional[types.FrameType] = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__")
        if isinstance(name, str) and is_pipeline_module(name):
            return True
        frame = frame.f_back
    return False


# ------------------------------------------------------------------------------- process hooks
class _Stoppable(Protocol):
    def begin_shutdown(self, deadline: float) -> None: ...


def abandon_routes(routes: Sequence[_Stoppable], timeout: float) -> None:
    """A client garbage-collected without shutdown(): let its threads deliver and end."""
    deadline = time.monotonic() + timeout
    for route in routes:
        route.begin_shutdown(deadline)


_live: weakref.WeakSet[ClientHooks] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    mp_util = sys.modules.get("multiprocessing.util")
    for hooks in list(_live):
        hooks.after_fork_in_child()
        if mp_util is not None:  # a multiprocessing child ends with os._exit: no atexit
            mp_util.register_after_fork(hooks, ClientHooks.arm_multiprocessing_exit)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Client(Protocol):
    def shutdown(self, timeout: Optional[float] = None) -> object: ...


class ClientHooks:
    """One client's process hooks. The client, its ``after_fork`` and ``before_exit`` (bound
    methods) are held weakly: the hooks never keep a client alive."""

    def __init__(
        self,
        client: _Client,
        *,
        shutdown_timeout: float,
        logger: Any,
        after_fork: Callable[[], None],
        before_exit: Callable[[float], None],
        abandon: Callable[[], None],
    ) -> None:
        self.timeout = shutdown_timeout
        self._log = logger
        self.pid = os.getpid()  # the process the client's state belongs to
        self._client = weakref.ref(client)
        self._after_fork = weakref.WeakMethod(after_fork)
        self._before_exit = weakref.WeakMethod(before_exit)
        self._mp_finalizer: Any = None
        _live.add(self)
        atexit.register(self.at_exit)
        self._finalizer = weakref.finalize(client, abandon)
        self._finalizer.atexit = False
        mp_process = sys.modules.get("multiprocessing.process")
        if mp_process is not None and mp_process.parent_process() is not None:
            self.arm_multiprocessing_exit()  # built inside a multiprocessing child

    def at_exit(self) -> None:
        """Interpreter exit (or a multiprocessing child's): shut the client down in time."""
        client, before_exit = self._client(), self._before_exit()
        if client is None or before_exit is None:
            return
        try:
            # Calls made later in the exit (another atexit handler) are sent inline until then.
            before_exit(time.monotonic() + self.timeout)
            client.shutdown(self.timeout)
        except Exception:  # never raise at interpreter exit
            logging.getLogger("cdp_batcher").exception("cdp_batcher: shutdown at exit failed")

    def after_fork_in_child(self) -> None:
        self.pid = os.getpid()
        after_fork = self._after_fork()
        if after_fork is not None:
            after_fork()

    def unhooked_fork(self) -> None:
        """A route found itself in a child forked without Python's fork hooks (uWSGI without
        lazy-apps or py-call-osafterfork, a C extension calling fork()): reset the client as the
        at-fork hook would have, once, and say so."""
        parent, pid = self.pid, os.getpid()
        if parent == pid:  # another route (or thread) of this client did it already
            return
        self.after_fork_in_child()
        self._log.info(
            "cdp_batcher: process %d was forked from %d without Python's fork hooks (uWSGI's default): "
            "the client starts empty here, with its own threads and connections; events queued "
            "before the fork stay the parent's",
            pid,
            parent,
        )

    def arm_multiprocessing_exit(self) -> None:
        """In a multiprocessing child (fork start method) once its registries were reset: its
        exit skips atexit but runs multiprocessing's finalizers, so the exit flush goes there too."""
        import multiprocessing.util

        self._mp_finalizer = multiprocessing.util.Finalize(None, self.at_exit, exitpriority=100)

    def closed(self) -> None:
        """The client was shut down: every hook is removed."""
        atexit.unregister(self.at_exit)
        self._finalizer.detach()
        if self._mp_finalizer is not None:
            self._mp_finalizer.cancel()
        _live.discard(self)
