"""Process lifecycle around a client: the re-entrancy guard (and, below it, the process hooks).

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

import sys
import threading
import types
from typing import Any, Callable, Optional, TypeVar

__all__ = ["OUTSIDE_PIPELINE", "in_pipeline_thread", "inside_pipeline", "pipeline_frame"]

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

_state = threading.local()


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
        _state.depth = getattr(_state, "depth", 0) + 1

    def __exit__(self, *exc_info: object) -> None:
        _state.depth -= 1


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
    if getattr(_state, "depth", 0):
        return True
    frame: Optional[types.FrameType] = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__")
        if isinstance(name, str) and is_pipeline_module(name):
            return True
        frame = frame.f_back
    return False
