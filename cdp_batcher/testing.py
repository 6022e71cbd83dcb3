"""A local collector that speaks the OpenCDP gateway and Customer.io's batch endpoint.

:class:`Collector` is a real HTTP/1.1 server bound to loopback only. It checks credentials the
way the real services do, records what it receives, and can be told to misbehave (errors, rate
limits, latency, dropped connections, going down and coming back) so that code using
``cdp_batcher`` can be tested without the network::

    from cdp_batcher.testing import Collector

    with Collector(api_key="test-key", cio_site_id="site", cio_api_key="cio-key") as c:
        ...  # point the client at c.url (both the OpenCDP endpoint and the Customer.io base URL)
        assert c.wait_for(1, destination="opencdp")
        print(c.events(destination="opencdp"))

Run it in the foreground with ``python -m cdp_batcher.testing --port 0``; it prints
``collector listening on http://127.0.0.1:PORT`` and then one line per arrival.

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import copy
import datetime as _dt
import email.utils
import ipaddress
import json
import logging
import secrets
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Callable, Optional, Union
from urllib.parse import urlsplit

__all__ = [
    "CIO_MAX_BODY_BYTES",
    "CIO_MAX_ENTRY_BYTES",
    "Collector",
    "RecordedRequest",
    "RecordingLogger",
    "main",
]

logger = logging.getLogger("cdp_batcher.testing")

#: Customer.io's limit on a whole ``/api/v2/batch`` request body.
CIO_MAX_BODY_BYTES = 500_000
#: Customer.io's limit on one batch entry (its compact JSON encoding).
CIO_MAX_ENTRY_BYTES = 32_000

OPENCDP = "opencdp"
CUSTOMERIO = "customerio"
_DESTINATIONS = (OPENCDP, CUSTOMERIO)

_CIO_BATCH_PATH = "/api/v2/batch"
_PING_PATH = "/v1/health/ping"
_PERSON_CALLS = {
    "/v1/persons/identify": "identify",
    "/v1/persons/track": "track",
    "/v1/persons/registerDevice": "register_device",
}
_SEND_CALLS = {
    "/v1/send/email": "send_email",
    "/v1/send/push": "send_push",
    "/v1/send/sms": "send_sms",
}
_SEND_IDENTIFIER_KEYS = ("id", "email", "cdp_id")
_PRINT_LIMIT = 200

Printer = Callable[[str], None]
RejectPredicate = Callable[[dict[str, Any]], Optional[str]]
FaultBody = Union[bytes, str, Mapping[str, Any], list[Any], None]


# --------------------------------------------------------------------------- recorded data


@dataclass(frozen=True)
class RecordedRequest:
    """One request the collector received.

    ``status`` is the status code answered, or ``None`` when the connection was dropped on
    purpose (:meth:`Collector.drop_next`). ``time`` is :func:`time.monotonic` at arrival (after
    the body was read). ``json`` is the parsed body, or ``None`` when it is empty or not JSON.

    >>> request = collector.requests[-1]  # doctest: +SKIP
    >>> request.path, request.json  # doctest: +SKIP
    ('/v1/persons/track', {'identifier': 'u1', 'eventName': 'e', 'properties': {}})
    """

    method: str
    path: str
    headers: dict[str, str] = field(hash=False)
    body: bytes
    json: Any = field(hash=False, compare=False)
    status: Optional[int]
    time: float

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """Case-insensitive header lookup."""
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return default

    @property
    def dropped(self) -> bool:
        """True when the collector closed the connection without answering."""
        return self.status is None

    def __repr__(self) -> str:  # never show credentials
        shown = {k: ("<redacted>" if k.lower() == "authorization" else v) for k, v in self.headers.items()}
        return (
            f"RecordedRequest(method={self.method!r}, path={self.path!r}, status={self.status!r}, "
            f"headers={shown!r}, body={self.body[:200]!r}{'...' if len(self.body) > 200 else ''}, "
            f"time={self.time!r})"
        )


# --------------------------------------------------------------------------- faults


@dataclass
class _CountedFault:
    remaining: int
    path: Optional[str]
    status: int = 0  # 0 for drops
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class _TimedFault:
    until: float
    status: int
    path: Optional[str]
    body: bytes


@dataclass
class _Decision:
    delay: float = 0.0
    drop: bool = False
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def _matches(prefix: Optional[str], path: str) -> bool:
    return prefix is None or path.startswith(prefix)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _fault_body(body: FaultBody, default: Mapping[str, Any]) -> bytes:
    if body is None:
        return _dumps(dict(default))
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return _dumps(body)


def _check_count(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    return n


def _check_status(status: int) -> int:
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError(f"status must be an HTTP status code, got {status!r}")
    return status


# --------------------------------------------------------------------------- printing helpers


def _short(obj: Any) -> str:
    text = json.dumps(obj, ensure_ascii=False, default=str)
    return text if len(text) <= _PRINT_LIMIT else text[: _PRINT_LIMIT - 3] + "..."


def _opencdp_line(call: str, body: Any, count: int) -> str:
    b = body if isinstance(body, dict) else {}
    ident = b.get("identifier", "")
    if call == "track":
        detail = f"{ident} {b.get('eventName', '')} {_short(b.get('properties', {}))}"
    elif call == "identify":
        detail = f"{ident} {_short(b.get('properties', {}))}"
    elif call == "register_device":
        detail = f"{ident} {b.get('platform', '')} {b.get('deviceId', '')}"
    else:
        detail = _short(body)
    return f"[opencdp] {call} {detail}  (#{count})"


def _cio_line(entry: dict[str, Any], count: int) -> str:
    action = entry.get("action", "?")
    ids = entry.get("identifiers")
    ident = next(iter(ids.values()), "") if isinstance(ids, dict) and ids else ""
    if action == "event":
        detail = f"{ident} {entry.get('name', '')} {_short(entry.get('attributes', {}))}"
    elif action == "identify":
        detail = f"{ident} {_short(entry.get('attributes', {}))}"
    elif action in ("add_device", "delete_device"):
        device = entry.get("device")
        platform = device.get("platform", "") if isinstance(device, dict) else ""
        detail = f"{ident} {platform}"
    else:
        detail = str(ident)
    return f"[customerio] {action} {detail}  (#{count})"


def _cio_entry_problem(entry: Any) -> Optional[str]:
    """A reason the real API would reject this batch entry, or None."""
    if not isinstance(entry, dict):
        return "entry must be an object"
    if not isinstance(entry.get("type"), str) or not entry["type"]:
        return "type is required"
    if not isinstance(entry.get("action"), str) or not entry["action"]:
        return "action is required"
    if entry["type"] == "person":
        ids = entry.get("identifiers")
        if not isinstance(ids, dict) or len(ids) != 1:
            return "identifiers must hold exactly one of id, email, phone, cio_id"
        if entry["action"] == "event" and (not isinstance(entry.get("name"), str) or not entry["name"]):
            return "name is required"
    return None


# --------------------------------------------------------------------------- HTTP server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    block_on_close = False

    def __init__(self, address: tuple[str, int], family: int, collector: Collector) -> None:
        self.address_family = family
        self.collector = collector
        self.closing = threading.Event()
        self._track_lock = threading.Lock()
        self._handler_threads: set[threading.Thread] = set()
        self._conns: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a DNS lookup that can stall; skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._run_request,
            args=(request, client_address),
            name="cdp-collector-conn",
            daemon=True,
        )
        with self._track_lock:
            self._handler_threads.add(thread)
            self._conns.add(request)
        thread.start()

    def _run_request(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._track_lock:
                self._conns.discard(request)
                self._handler_threads.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("collector: error while handling a request from %s", client_address, exc_info=True)

    def close_connections(self) -> None:
        """Wake every handler and cut every open connection (idle keep-alive ones included)."""
        self.closing.set()
        with self._track_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def join_handlers(self, deadline: float) -> None:
        while True:
            with self._track_lock:
                threads = [t for t in self._handler_threads if t is not threading.current_thread()]
            if not threads:
                return
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                logger.debug("collector: %d handler thread(s) still running at stop", len(threads))
                return


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cdp-batcher-collector"
    sys_version = ""
    disable_nagle_algorithm = True
    wbufsize = 1 << 16  # one send per answer (headers + body); flushed after each request
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("collector: %s - " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    # -- plumbing

    def _read_body(self) -> Optional[bytes]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    return None
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                data = self.rfile.read(size)
                if len(data) < size:
                    return None
                chunks.append(data)
                self.rfile.readline(3)
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        length = int(length_text)
        if length < 0:
            raise ValueError("negative Content-Length")
        data = self.rfile.read(length)
        return data if len(data) == length else None

    def _answer(self, status: int, body: bytes, headers: Optional[Mapping[str, str]] = None) -> None:
        self.send_response(status)
        names = set()
        for name, value in (headers or {}).items():
            names.add(name.lower())
            self.send_header(name, value)
        if "content-type" not in names:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _drop(self) -> None:
        """Close the connection at once, with a reset, without any answer."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        for stream in (self.rfile, self.wfile):
            with contextlib.suppress(OSError):
                stream.close()
        with contextlib.suppress(OSError):
            self.connection.close()

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._answer(400, _dumps({"error": "bad request framing"}), {"Connection": "close"})
            return
        if body is None:  # the client went away mid-body
            self.close_connection = True
            return
        arrived = time.monotonic()
        path = urlsplit(self.path).path
        collector = self.server.collector
        headers = {k: v for k, v in self.headers.items()}
        parsed: Any = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None

        decision = collector._decide(path)
        if decision.delay > 0 and self.server.closing.wait(decision.delay):
            self._drop()  # shutting down while waiting
            return
        if decision.drop:
            collector._record(RecordedRequest(self.command, path, headers, body, parsed, None, arrived))
            collector._emit(f"[{_destination_of(path)}] {self.command} {path} -> dropped (injected)")
            self._drop()
            return
        if decision.status:
            collector._record(
                RecordedRequest(self.command, path, headers, body, parsed, decision.status, arrived)
            )
            collector._emit(
                f"[{_destination_of(path)}] {self.command} {path} -> {decision.status} (injected)"
            )
            self._answer(decision.status, decision.body, decision.headers)
            return

        status, answer, events = collector._route(self.command, path, headers, body, parsed)
        counts = collector._record(
            RecordedRequest(self.command, path, headers, body, parsed, status, arrived), events
        )
        if collector._printer is not None:
            if 200 <= status < 300:
                for (destination, event), count in zip(events, counts):
                    collector._emit(
                        _opencdp_line(event["call"], event["body"], count)
                        if destination == OPENCDP
                        else _cio_line(event, count)
                    )
                if status == 207:
                    for error in json.loads(answer).get("errors", []):
                        collector._emit(
                            f"[customerio] rejected batch[{error['batch_index']}]: {error['reason']}"
                        )
            else:
                collector._emit(f"[{_destination_of(path)}] {self.command} {path} -> {status}")
        self._answer(status, answer)


def _destination_of(path: str) -> str:
    return CUSTOMERIO if path.startswith("/api/") else OPENCDP


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------- the collector

_Events = list[tuple[str, dict[str, Any]]]


class RecordingLogger:
    """A logger for tests: keeps every formatted line, per level (thread-safe).

    Pass it as ``CDPClient(logger=...)`` to assert on what the library logged.

    >>> log = RecordingLogger()
    >>> client = CDPClient(cdp_api_key="k", logger=log)  # doctest: +SKIP
    >>> log.at("warning")  # doctest: +SKIP
    ['...']
    """

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def _log(self, level: str, msg: str, *args: Any) -> None:
        with self._lock:
            self.lines.append((level, msg % args if args else msg))

    def debug(self, msg: str, *args: Any) -> None:
        self._log("debug", msg, *args)

    def info(self, msg: str, *args: Any) -> None:
        self._log("info", msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        self._log("warning", msg, *args)

    def error(self, msg: str, *args: Any) -> None:
        self._log("error", msg, *args)

    def at(self, level: str) -> list[str]:
        """The lines logged at ``level`` ("debug", "info", "warning" or "error")."""
        with self._lock:
            return [line for lvl, line in self.lines if lvl == level]


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
        if not _is_loopback(host):
            raise ValueError(f"the collector binds loopback only, not {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535, got {port!r}")
        self._api_key = api_key
        self._cio_site_id = cio_site_id
        self._cio_api_key = cio_api_key
        self._host = "127.0.0.1" if host == "localhost" else host
        self._family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        self._port = port
        self._printer = printer

        self._lock = threading.Lock()
        self._print_lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._requests: list[RecordedRequest] = []
        self._events: dict[str, list[dict[str, Any]]] = {d: [] for d in _DESTINATIONS}
        self._counted: list[_CountedFault] = []  # fail_next / rate_limit_next, FIFO
        self._drops: list[_CountedFault] = []
        self._timed: list[_TimedFault] = []
        self._latency: dict[Optional[str], float] = {}
        self._rejectors: list[RejectPredicate] = []
        self._cio_max_body = CIO_MAX_BODY_BYTES

        self._state_lock = threading.RLock()
        self._server: Optional[_Server] = None
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
        server = _Server((self._host, self._port), self._family, self)
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
        with self._lock:
            return list(self._requests)

    def events(self, destination: str = OPENCDP) -> list[dict[str, Any]]:
        """Accepted calls (``opencdp``: ``{"call", "path", "body"}``) or accepted Customer.io batch
        entries (``customerio``), in arrival order; deep copies."""
        with self._lock:
            snapshot = list(self._events[_check_destination(destination)])
        return copy.deepcopy(snapshot)

    def count(self, destination: str = OPENCDP) -> int:
        """How many events :meth:`events` would return."""
        with self._lock:
            return len(self._events[_check_destination(destination)])

    def wait_for(self, n: int, destination: str = OPENCDP, timeout: float = 5.0) -> bool:
        """Block until at least ``n`` events were accepted for ``destination``; False on timeout."""
        events = self._events[_check_destination(destination)]
        with self._cond:
            return self._cond.wait_for(lambda: len(events) >= n, timeout)

    def clear(self) -> None:
        """Forget recorded requests and events (faults stay)."""
        with self._cond:
            self._requests.clear()
            for lst in self._events.values():
                lst.clear()
            self._cond.notify_all()

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
        fault = _CountedFault(
            _check_count(n),
            path,
            _check_status(status),
            dict(headers or {}),
            _fault_body(body, {"error": "injected fault", "status": status}),
        )
        with self._lock:
            self._counted.append(fault)

    def fail_for(self, seconds: float, status: int = 503, *, path: Optional[str] = None) -> None:
        """Answer ``status`` to every matching request for the next ``seconds``."""
        fault = _TimedFault(
            time.monotonic() + float(seconds),
            _check_status(status),
            path,
            _dumps({"error": "injected outage", "status": status}),
        )
        with self._lock:
            self._timed.append(fault)

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
        headers: dict[str, str] = {}
        if isinstance(retry_after, _dt.datetime):
            aware = retry_after if retry_after.tzinfo else retry_after.replace(tzinfo=_dt.timezone.utc)
            headers["Retry-After"] = email.utils.format_datetime(aware.astimezone(_dt.timezone.utc), True)
        elif retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        fault = _CountedFault(_check_count(n), path, 429, headers, _dumps({"error": "rate limited"}))
        with self._lock:
            self._counted.append(fault)

    def set_latency(self, seconds: float, *, path: Optional[str] = None) -> None:
        """Wait ``seconds`` before answering every matching request (0 clears it for ``path``)."""
        seconds = float(seconds)
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        with self._lock:
            if seconds == 0:
                self._latency.pop(path, None)
            else:
                self._latency[path] = seconds

    def drop_next(self, n: int, *, path: Optional[str] = None) -> None:
        """Read the next ``n`` matching requests, then reset the connection without answering."""
        fault = _CountedFault(_check_count(n), path)
        with self._lock:
            self._drops.append(fault)

    def reject_cio_entries(self, predicate: RejectPredicate) -> None:
        """Reject (in a 207 answer) every Customer.io entry for which ``predicate(entry)`` returns
        a reason string. Several predicates may be installed; :meth:`reset_faults` removes them."""
        with self._lock:
            self._rejectors.append(predicate)

    def set_cio_max_body(self, nbytes: int) -> None:
        """Answer 413 to Customer.io bodies larger than ``nbytes`` (default 500,000)."""
        with self._lock:
            self._cio_max_body = _check_count(nbytes)

    def reset_faults(self) -> None:
        """Remove every fault, latency, rejection predicate and restore the body limit."""
        with self._lock:
            self._counted.clear()
            self._drops.clear()
            self._timed.clear()
            self._latency.clear()
            self._rejectors.clear()
            self._cio_max_body = CIO_MAX_BODY_BYTES

    # -- internals used by the handler

    def _decide(self, path: str) -> _Decision:
        decision = _Decision()
        now = time.monotonic()
        with self._lock:
            delays = [s for p, s in self._latency.items() if _matches(p, path)]
            decision.delay = max(delays, default=0.0)
            if _take(self._drops, path) is not None:
                decision.drop = True
                return decision
            fault = _take(self._counted, path)
            if fault is not None:
                decision.status, decision.headers, decision.body = fault.status, fault.headers, fault.body
                return decision
            self._timed = [t for t in self._timed if t.until > now]
            for timed in self._timed:
                if _matches(timed.path, path):
                    decision.status, decision.body = timed.status, timed.body
                    break
        return decision

    def _record(self, request: RecordedRequest, events: Optional[_Events] = None) -> list[int]:
        counts: list[int] = []
        with self._cond:
            self._requests.append(request)
            if events:
                for destination, event in events:
                    lst = self._events[destination]
                    lst.append(event)
                    counts.append(len(lst))
                self._cond.notify_all()
        return counts

    def _emit(self, line: str) -> None:
        printer = self._printer
        if printer is None:
            return
        try:
            with self._print_lock:  # one whole line at a time from concurrent handler threads
                printer(line)
        except Exception:
            logger.debug("collector: printer raised", exc_info=True)

    def _route(
        self, method: str, path: str, headers: dict[str, str], body: bytes, parsed: Any
    ) -> tuple[int, bytes, _Events]:
        """Answer a request that no fault intercepted: (status, body, accepted events)."""
        if path == _CIO_BATCH_PATH:
            if method != "POST":
                return 405, _dumps({"error": "method not allowed"}), []
            return self._route_cio(headers, body, parsed)
        if path == _PING_PATH:
            if method != "GET":
                return 405, _dumps({"error": "method not allowed"}), []
            return 200, _dumps({"status": "ok"}), []
        call = _PERSON_CALLS.get(path) or _SEND_CALLS.get(path)
        if call is None:
            return 404, _dumps({"error": "not found"}), []
        if method != "POST":
            return 405, _dumps({"error": "method not allowed"}), []
        auth = _get_header(headers, "Authorization")
        if not auth or (self._api_key is not None and auth != self._api_key):
            return 401, _dumps({"error": "unauthorized"}), []
        problem = _opencdp_problem(call, body, parsed)
        if problem is not None:
            return 400, _dumps({"error": problem}), []
        answer: dict[str, Any] = {"success": True}
        if call.startswith("send_"):
            answer["delivery_id"] = secrets.token_hex(12)
        event = {"call": call, "path": path, "body": parsed}
        return 200, _dumps(answer), [(OPENCDP, event)]

    def _route_cio(self, headers: dict[str, str], body: bytes, parsed: Any) -> tuple[int, bytes, _Events]:
        if not self._cio_auth_ok(_get_header(headers, "Authorization")):
            return 401, _dumps({"errors": [{"reason": "unauthorized", "message": "unauthorized"}]}), []
        with self._lock:
            max_body = self._cio_max_body
            rejectors = list(self._rejectors)
        if len(body) > max_body:
            message = f"request body is {len(body)} bytes, over the {max_body} byte limit"
            return 413, _dumps({"errors": [{"reason": "request too large", "message": message}]}), []
        if not isinstance(parsed, dict) or not isinstance(parsed.get("batch"), list):
            message = 'body must be a JSON object {"batch": [...]}'
            return 400, _dumps({"errors": [{"reason": "invalid", "field": "batch", "message": message}]}), []
        errors: list[dict[str, Any]] = []
        accepted: _Events = []
        for index, entry in enumerate(parsed["batch"]):
            reason = _cio_entry_problem(entry)
            if reason is None and len(_dumps(entry)) > CIO_MAX_ENTRY_BYTES:
                reason = "entry too large"
            if reason is None:
                for predicate in rejectors:
                    try:
                        reason = predicate(entry)
                    except Exception as exc:
                        logger.debug("collector: reject predicate raised", exc_info=True)
                        reason = f"reject predicate raised {type(exc).__name__}"
                    if reason:
                        break
            if reason:
                errors.append(
                    {"batch_index": index, "reason": reason, "field": f"batch[{index}]", "message": reason}
                )
            else:
                accepted.append((CUSTOMERIO, entry))
        if errors:
            return 207, _dumps({"errors": errors}), accepted
        return 200, b"{}", accepted

    def _cio_auth_ok(self, auth: Optional[str]) -> bool:
        if not auth or auth[:6].lower() != "basic ":
            return False
        try:
            decoded = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return False
        site_id, sep, api_key = decoded.partition(":")
        if not sep:
            return False
        if self._cio_site_id is not None and site_id != self._cio_site_id:
            return False
        return self._cio_api_key is None or api_key == self._cio_api_key


def _take(faults: list[_CountedFault], path: str) -> Optional[_CountedFault]:
    """Consume one use of the first (FIFO) fault matching ``path``."""
    for i, fault in enumerate(faults):
        if fault.remaining > 0 and _matches(fault.path, path):
            fault.remaining -= 1
            if fault.remaining == 0:
                del faults[i]
            return fault
    return None


def _get_header(headers: Mapping[str, str], name: str) -> Optional[str]:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def _check_destination(destination: str) -> str:
    if destination not in _DESTINATIONS:
        raise ValueError(f"destination must be 'opencdp' or 'customerio', got {destination!r}")
    return destination


def _non_empty(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _opencdp_problem(call: str, body: bytes, parsed: Any) -> Optional[str]:
    if not body:
        return "request body is required"
    if not isinstance(parsed, dict):
        return "request body must be a JSON object"
    if call.startswith("send_"):
        ids = parsed.get("identifiers")
        if not isinstance(ids, dict):
            return "identifiers is required"
        if sum(1 for k in _SEND_IDENTIFIER_KEYS if k in ids) != 1 or len(ids) != 1:
            return "identifiers must contain exactly one of: id, email, or cdp_id"
        return None
    if not _non_empty(parsed.get("identifier")):
        return "Identifier cannot be empty"
    if call == "track" and not _non_empty(parsed.get("eventName")):
        return "Event name cannot be empty"
    if call == "register_device" and not _non_empty(parsed.get("deviceId")):
        return "device ID required"
    if "properties" in parsed and not isinstance(parsed["properties"], dict):
        return "properties must be an object"
    return None


# --------------------------------------------------------------------------- command line


def main(argv: Optional[list[str]] = None) -> int:
    """Run a collector in the foreground, printing each arrival, until SIGINT or SIGTERM.

    >>> main(["--port", "8765"])  # doctest: +SKIP
    collector listening on http://127.0.0.1:8765
    """
    parser = argparse.ArgumentParser(
        prog="python -m cdp_batcher.testing",
        description="Local OpenCDP + Customer.io collector for tests and demos (loopback only).",
    )
    parser.add_argument("--port", type=int, default=0, help="port to bind (default 0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--api-key", default=None, help="OpenCDP key to require (default: accept any)")
    parser.add_argument("--cio-site-id", default=None, help="Customer.io site id to require")
    parser.add_argument("--cio-api-key", default=None, help="Customer.io API key to require")
    args = parser.parse_args(argv)

    def out(line: str) -> None:
        print(line, flush=True)

    try:
        collector = Collector(
            api_key=args.api_key,
            cio_site_id=args.cio_site_id,
            cio_api_key=args.cio_api_key,
            port=args.port,
            host=args.host,
            printer=out,
        )
        collector.start()
    except (ValueError, OSError) as exc:
        print(f"collector: cannot start: {exc}", file=sys.stderr, flush=True)
        return 2

    stop = threading.Event()

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        out(f"collector listening on {collector.url}")
        while not stop.wait(0.5):  # a short wait keeps the main thread responsive to signals
            pass
    except KeyboardInterrupt:
        pass
    finally:
        collector.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    opencdp, customerio = collector.count(OPENCDP), collector.count(CUSTOMERIO)
    out(f"collector stopped ({opencdp} opencdp events, {customerio} customerio entries)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
