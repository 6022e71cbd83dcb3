"""The destination interface: what the pipeline asks of OpenCDP, Customer.io and any later one.

A destination turns a validated call into its own wire bytes (at call time, in the caller's
thread) and later sends a unit of those items (in a route's dispatcher or sender thread). ``send`` never raises: it
resolves every item it was given exactly once through the :class:`SendControl`.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Protocol, TypeVar

from .._event import DeviceInfo, Item

__all__ = ["Destination", "DeviceInfo", "SendControl", "cut_units"]


class SendControl(Protocol):
    """What a destination gets with each unit: the deadline, interruptible waits, and outcomes."""

    def remaining(self) -> Optional[float]:
        """Seconds until the deadline (None: no deadline). May be <= 0."""

    def sleep(self, delay: float) -> bool:
        """Wait ``delay`` seconds unless shutdown's deadline makes that pointless; True if waited."""

    def delivered(self, items: Sequence[Item]) -> None: ...

    def failed(self, items: Sequence[Item], reason: str, error: BaseException) -> None: ...

    def dropped(self, items: Sequence[Item], reason: str, error: BaseException) -> None: ...

    def retried(self, n: int = 1) -> None: ...

    def warn(self, key: str, message: str) -> None:
        """A rate-limited warning (one line per key per interval, with a count)."""

    def unhurried(self) -> bool:
        """True while nobody waits for these events: no flush, no shutdown, and the queue less
        than half full. A destination may then pace its requests."""


#: While nobody waits for a unit (:meth:`SendControl.unhurried`), a destination's thread may
#: pause this long between stretches of its own work: a real block, so the application's threads
#: get the GIL and a CPU at once instead of after the thread's next system call or the
#: interpreter's 5 ms switch interval. A flush, a shutdown or a filling queue is never paced.
PACE = 0.0001


def pace() -> None:
    """One pause of :data:`PACE` seconds."""
    time.sleep(PACE)


class Destination(abc.ABC):
    """One place events go. Subclasses set the class attributes that shape their units."""

    #: Name used in stats, reports and ``on_error`` records.
    name: str = ""
    #: Events per request (1: one request per event).
    max_unit_events: int = 1
    #: Bytes per request body (None: unbounded), counting only entries.
    max_unit_bytes: Optional[int] = None
    #: An entry larger than this is dropped (reason ``"too_large"``) at call time.
    max_entry_bytes: Optional[int] = None
    #: Units sent at once.
    concurrency: int = 1
    #: Whether encode_* use the timestamp argument.
    needs_timestamp: bool = False
    #: Whether the client may queue a :data:`~cdp_batcher._event.Record` (the primary
    #: destination's body and a ULID value) for identify/track instead of this destination's
    #: own bytes; the destination then builds its entry in :meth:`send`, in its own thread.
    takes_records: bool = False

    def record_limit(self, kind: int) -> int:
        """The longest primary body of ``kind`` whose entry surely fits ``max_entry_bytes`` (a
        longer one goes through ``encode_*``, which checks exactly). Only if ``takes_records``."""
        raise NotImplementedError

    @abc.abstractmethod
    def encode_identify(self, identifier: str, properties: Any, timestamp: float) -> bytes: ...

    @abc.abstractmethod
    def encode_track(self, identifier: str, event_name: str, properties: Any, timestamp: float) -> bytes: ...

    @abc.abstractmethod
    def encode_device(self, identifier: str, device: DeviceInfo, timestamp: float) -> bytes: ...

    def concurrency_hint(self) -> int:
        """Units worth sending at once now (1 to ``concurrency``); the route re-reads it at each hand-out."""
        return self.concurrency

    def senders_for(self, events: int, within: float) -> int:
        """Units it takes, at once, to send ``events`` one-event units within ``within`` seconds
        (1 to ``concurrency``): the route's cap when nobody waits. Default: ``concurrency``."""
        return self.concurrency

    def device_rejection(self, device: DeviceInfo) -> Optional[str]:
        """A drop reason when this destination cannot take this device (e.g. ``unsupported_platform``)."""
        return None

    @abc.abstractmethod
    def send(self, items: Sequence[Item], ctl: SendControl) -> None:
        """Deliver a unit; resolve each item exactly once through ``ctl``; never raise."""

    @abc.abstractmethod
    def describe(self, item: Item) -> tuple[Optional[str], Optional[str], Mapping[str, Any]]:
        """``(identifier, event_name, properties)`` decoded from a queued item."""

    def after_fork(self) -> None:
        """Called in a forked child: drop connections inherited from the parent."""
        return None

    def close(self) -> None:
        """Release connections."""
        return None


#: What cut_units cuts: items, or (item, entry) pairs; sized by the bytes in second place.
_Cut = TypeVar("_Cut", bound=tuple[Any, ...])


def cut_units(items: Sequence[_Cut], max_events: int, max_bytes: Optional[int]) -> list[list[_Cut]]:
    """Cut items, in order, into units of at most ``max_events`` items whose ``len(body) + 1``
    sum to at most ``max_bytes`` (None: no byte bound); an item larger alone is a unit alone.
    The one place units are cut: the route cuts drained batches, a destination handed
    arbitrary items (sync mode, tests) cuts them the same way, a no-op for the route's units.
    ``body`` is each tuple's second element: an item's queued bytes, or the entry of an
    ``(item, entry)`` pair (Customer.io cuts by the entries it built from records)."""
    units: list[list[_Cut]] = []
    current: list[_Cut] = []
    size = 0
    for item in items:
        body = len(item[1]) + 1
        if current and (len(current) >= max_events or (max_bytes is not None and size + body > max_bytes)):
            units.append(current)
            current, size = [], 0
        current.append(item)
        size += body
    if current:
        units.append(current)
    return units
