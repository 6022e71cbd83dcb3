"""A validated call becomes one item per destination, offered to each destination's route.

Three paths, side by side, chosen once per client state (:meth:`Ingest.fast_paths`):

* **fast** — one destination, sending, asynchronous, open: ``track()``/``identify()`` encode
  the body and put it on the queue themselves (the code is inlined in ``_client.py``: a call
  there costs what it costs, nothing more); see :data:`exact`.
* **dual** — OpenCDP and a destination that takes records (Customer.io), sending,
  asynchronous, open: the OpenCDP body is encoded once and queued on both routes with one put
  under the lock they share (:meth:`Route.pair_with`): OpenCDP gets ``(kind, body)``,
  Customer.io the record ``(kind, body, ulid_value())``, built into its entry in its own thread.
  Inlined in ``_client.py`` like the fast path; a body whose entry could pass the record
  destination's ``record_limit`` takes the general path.
* **general** — everything else: sync mode, ``send=False``, a closed client, and
  ``register_device`` (:meth:`Ingest.call`).

Every path queues exact-size bodies (:data:`exact`); the general path drops an entry larger
than its destination's ``max_entry_bytes`` (reason ``too_large``) without re-encoding the others.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Callable, Optional

from ._errors import CDPError, DeliveryError
from ._event import (
    IDENTIFY,
    REGISTER_DEVICE,
    TRACK,
    Item,
    Raw,
    Record,
)
from ._route import Route
from ._validate import encode_properties

__all__ = ["Dual", "Ingest", "exact"]

#: The one exact-size rule: every queued body is ``exact((body, b""))``. msgspec's output keeps
#: its buffer's growth slack (about half again its length); joined with b"" it is copied to an
#: exact-size object: about 70 bytes less per queued event for about 50 ns.
exact = b"".join

#: The dual path: (the put for both routes, the record destination's limit for track, for identify).
Dual = tuple[Callable[[Item, Record], None], int, int]

#: An item for one route and the reason it is dropped at call time (None: offered).
_Offer = tuple[Route, Item, Optional[str]]


class Ingest:
    """The calls' way onto the routes, with the client state that chooses the path."""

    def __init__(
        self, routes: Sequence[Route], *, send: bool, sync_mode: bool, warn_once: Callable[[str, str], None]
    ) -> None:
        self.routes = tuple(routes)
        self.send = send
        self.sync_mode = sync_mode
        self.needs_timestamp = any(r.dest.needs_timestamp for r in self.routes)
        self.warn_once = warn_once
        self.closed = False
        #: Set by the exit hook: calls after shutdown are sent inline until then (later atexit handlers).
        self.inline_until = 0.0

    def fast_paths(self) -> tuple[Optional[Callable[[Item], bool]], Optional[Dual]]:
        """``(put, dual)``: the fast path's queue put (one destination) or the dual path (two, the
        second taking records), each None when the client's state rules it out. The dual path
        pairs the routes: call this before either is used, as the client does at construction
        and after a fork reset them."""
        routes = self.routes
        if not self.send or self.sync_mode or self.closed:
            return None, None
        if len(routes) == 1:
            return routes[0].put, None
        # With a spool each queue is a stream on disk: Customer.io then queues whole entries
        # (ULID and timestamp inside, so a replay after a crash is idempotent), via call().
        if len(routes) == 2 and routes[1].dest.takes_records and not any(r.durable for r in routes):
            other = routes[1].dest
            put_pair = routes[0].pair_with(routes[1])
            return None, (put_pair, other.record_limit(TRACK), other.record_limit(IDENTIFY))
        return None, None

    def call(self, kind: int, identifier: str, event_name: Optional[str], payload: Any) -> None:
        """The general path: several destinations, sync mode, disabled or closed clients, devices."""
        routes = self.routes
        if kind != REGISTER_DEVICE:
            raw = Raw(encode_properties(payload))  # validates even when nothing is sent
            payload = raw if len(routes) > 1 else payload
        inline = self.sync_mode
        if self.closed:
            if time.monotonic() >= self.inline_until:
                for route in routes:
                    route.drop_at_offer((kind, b""), "shutdown")
                self.warn_once(
                    "closed", "cdp_batcher: call after shutdown() dropped (counted as dropped: shutdown)"
                )
                return
            inline = True  # interpreter exit, after the exit flush: send from this thread by its deadline
        if not self.send:
            for route in routes:
                route.drop_at_offer((kind, b""), "disabled")
            return
        timestamp = time.time() if self.needs_timestamp else 0.0
        offers: list[_Offer] = []
        for route in routes:
            dest = route.dest
            reason = None
            if kind == TRACK:
                assert event_name is not None
                body = dest.encode_track(identifier, event_name, payload, timestamp)
            elif kind == IDENTIFY:
                body = dest.encode_identify(identifier, payload, timestamp)
            else:
                body = dest.encode_device(identifier, payload, timestamp)
                reason = dest.device_rejection(payload)
            if reason is None and dest.max_entry_bytes is not None and len(body) > dest.max_entry_bytes:
                reason = "too_large"
            offers.append((route, (kind, exact((body, b""))), reason))
        self._offer(offers, inline=inline)

    def _offer(self, offers: Sequence[_Offer], *, inline: bool) -> None:
        """Queue (or, ``inline``, send now) each item; drop, with an on_error report, the refused."""
        failures: list[BaseException] = []
        for route, item, reason in offers:
            if reason is not None:
                route.drop_at_offer(item, reason, CDPError(f"{route.name}: event not sent ({reason})"))
            elif inline:
                failure = route.send_now(item)
                if failure is not None and self.sync_mode:
                    failures.append(failure[1])
            else:
                route.put(item)
        if failures:
            error = failures[0]
            raise error if isinstance(error, DeliveryError) else DeliveryError(str(error))
