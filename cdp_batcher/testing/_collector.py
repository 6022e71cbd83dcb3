"""The :class:`Collector`: a local OpenCDP + Customer.io endpoint, its lifecycle and its API for tests."""

from __future__ import annotations

import datetime as _dt
import logging
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional, Union

from ._fakes import FakeApis, RejectPredicate
from ._faults import Decision, FaultBody, Faults, check_count
from ._records import OPENCDP, Events, RecordedRequest, Recording
from ._server import Server, is_loopback

__all__ = ["Collector", "Printer"]

logger = logging.getLogger("cdp_batcher.testing")

Printer = Callable[[str], None]


class _Backend:
    """What the server asks for each request: the faults, the fake APIs, the recording, the printer."""

    def __init__(
        self, faults: Faults, apis: FakeApis, recording: Recording, printer: Optional[Printer]
    ) -> None:
        self._faults = faults
        self._apis = apis
        self._recording = recording
        self._printer = printer
        self._print_lock = threading.Lock()
        self.printing = printer is not None

    def decide(self, path: str) -> Decision:
        return self._faults.decide(path)

    def answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes, parsed: Any
    ) -> tuple[int, bytes, Events]:
        return self._apis.answer(method, path, headers, body, parsed)

    def record(self, request: RecordedRequest, events: Optional[Events] = None) -> list[int]:
        return self._recording.record(request, events)

    def emit(self, line: str) -> None:
        printer = self._printer
        if printer is None:
            return
        try:
            with self._print_lock:  # one whole line at a time from concurrent handler threads
                printer(line)
        except Exception:
            logger.debug("collector: printer raised", exc_info=True)


class Collector:
    """A local OpenCDP + Customer.io endpoint for tests, examples and demos.

    Args:
        api_key: the OpenCDP key expected in ``Authorization``; ``None`` accepts any non-empty one.
        cio_site_id, cio_api_key: the Customer.io Basic-auth credentials expected; ``None`` accepts
            any value for that half.
        port: port to bind; 0 picks a free one (see :attr:`port` after :meth:`start`).
        host: a loopback address (the collector refuses anything else).
        printer: called with one readable line per arrival (never with credentials).

    >>> with Collector(api_key="test-key") as collector:  # doctest: +SKIP
    ...     client = CDPClient(cdp_api_key="test-key", cdp_endpoint=collector.url)
    ...     client.track("u1", "signed_up")
    ...     client.shutdown()
    ...     assert collector.count() == 1
    """

    def __init__(
        self,
        api_key: Optional[str] = None,
        cio_site_id: Optional[str] = None,
        cio_api_key: Optional[str] = None,
        port: int = 0,
        host: str = "127.0.0.1",
        printer: Optional[Printer] = None,
    ) -> None:
        if not is_loopback(host):
            raise ValueError(f"the collector binds loopback only, not {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535, got {port!r}")
        self._host = "127.0.0.1" if host == "localhost" else host
        self._family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        self._port = port

        self._recording = Recording()
        self._faults = Faults()
        self._apis = FakeApis(api_key, cio_site_id, cio_api_key)
        self._backend = _Backend(self._faults, self._apis, self._recording, printer)

        self._state_lock = threading.RLock()
        self._server: Optional[Server] = None
        self._thread: Optional[threading.Thread] = None
        self._state = "stopped"  # "stopped" | "up" | "down"

    # -- lifecycle

    def start(self) -> Collector:
        """Bind and serve in a background thread. Returns ``self``. No-op when already up."""
        with self._state_lock:
            if self._state == "up":
                return self
            self._listen()
            self._state = "up"
        return self

    def stop(self) -> None:
        """Stop serving, close every socket and join every thread. Idempotent."""
        with self._state_lock:
            if self._state == "stopped":
                return
            self._unlisten()
            self._state = "stopped"

    def go_down(self) -> None:
        """Stop listening (new connections are refused) and cut open connections."""
        with self._state_lock:
            if self._state == "stopped":
                raise RuntimeError("the collector is not started")
            if self._state == "down":
                return
            self._unlisten()
            self._state = "down"

    def come_back(self) -> None:
        """Listen again on the same port after :meth:`go_down`."""
        with self._state_lock:
            if self._state == "stopped":
                raise RuntimeError("the collector is not started")
            if self._state == "up":
                return
            self._listen()
            self._state = "up"

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _listen(self) -> None:
        server = Server((self._host, self._port), self._family, self._backend)
        self._port = int(server.server_address[1])
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"cdp-collector-{self._port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()

    def _unlisten(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()  # stops serve_forever
        server.server_close()  # closes the listening socket: connections are refused
        server.close_connections()
        if thread is not None:
            thread.join(5.0)
        server.join_handlers(time.monotonic() + 5.0)

    @property
    def port(self) -> int:
        """The bound port (the chosen one after ``start()`` when created with ``port=0``)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8123``: use it as the OpenCDP endpoint and the
        Customer.io track URL."""
        host = f"[{self._host}]" if self._family == socket.AF_INET6 else self._host
        return f"http://{host}:{self._port}"

    @property
    def running(self) -> bool:
        """True while listening."""
        return self._state == "up"

    # -- recording

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, in arrival order (a snapshot)."""
        return self._recording.requests()

    def events(self, destination: str = OPENCDP) -> list[dict[str, Any]]:
        """Accepted calls (``opencdp``: ``{"call", "path", "body"}``) or accepted Customer.io batch
        entries (``customerio``), in arrival order; deep copies."""
        return self._recording.events(destination)

    def count(self, destination: str = OPENCDP) -> int:
        """How many events :meth:`events` would return."""
        return self._recording.count(destination)

    def wait_for(self, n: int, destination: str = OPENCDP, timeout: float = 5.0) -> bool:
        """Block until at least ``n`` events were accepted for ``destination``; False on timeout."""
        return self._recording.wait_for(n, destination, timeout)

    def clear(self) -> None:
        """Forget recorded requests and events (faults stay)."""
        self._recording.clear()

    # -- faults

    def fail_next(
        self,
        n: int,
        status: int = 500,
        *,
        path: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
        body: FaultBody = None,
    ) -> None:
        """Answer ``status`` (with optional extra headers and body) to the next ``n`` matching
        requests."""
        self._faults.fail_next(n, status, path, headers, body)

    def fail_for(self, seconds: float, status: int = 503, *, path: Optional[str] = None) -> None:
        """Answer ``status`` to every matching request for the next ``seconds``."""
        self._faults.fail_for(seconds, status, path)

    def rate_limit_next(
        self,
        n: int,
        retry_after: Union[str, int, float, _dt.datetime, None] = "1",
        *,
        path: Optional[str] = None,
    ) -> None:
        """Answer 429 to the next ``n`` matching requests, with ``Retry-After: retry_after``
        (seconds or an HTTP date, sent as given; a datetime is formatted as an HTTP date;
        ``None`` sends no Retry-After)."""
        self._faults.rate_limit_next(n, retry_after, path)

    def set_latency(self, seconds: float, *, path: Optional[str] = None) -> None:
        """Wait ``seconds`` before answering every matching request (0 clears it for ``path``)."""
        self._faults.set_latency(seconds, path)

    def drop_next(self, n: int, *, path: Optional[str] = None) -> None:
        """Read the next ``n`` matching requests, then reset the connection without answering."""
        self._faults.drop_next(n, path)

    def reject_cio_entries(self, predicate: RejectPredicate) -> None:
        """Reject (in a 207 answer) every Customer.io entry for which ``predicate(entry)`` returns
        a reason string. Several predicates may be installed; :meth:`reset_faults` removes them."""
        self._apis.reject_cio_entries(predicate)

    def set_cio_max_body(self, nbytes: int) -> None:
        """Answer 413 to Customer.io bodies larger than ``nbytes`` (default 500,000)."""
        self._apis.set_cio_max_body(check_count(nbytes))

    def reset_faults(self) -> None:
        """Remove every fault, latency, rejection predicate and restore the body limit."""
        self._faults.reset()
        self._apis.reset()
