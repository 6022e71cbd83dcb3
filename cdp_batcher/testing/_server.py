"""The collector's HTTP/1.1 server: loopback only, one thread per connection, faults first.

The server knows sockets and HTTP framing; what to answer comes from its :class:`Backend`
(the collector): a fault decision, then the fake APIs' answer, then recording and printing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Protocol
from urllib.parse import urlsplit

from ._fakes import cio_line, destination_of, opencdp_line
from ._faults import Decision
from ._records import OPENCDP, Events, RecordedRequest, dumps

__all__ = ["Backend", "Server", "is_loopback"]

logger = logging.getLogger("cdp_batcher.testing")


class Backend(Protocol):
    """What the server asks of the collector for each request."""

    printing: bool

    def decide(self, path: str) -> Decision: ...

    def answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes, parsed: Any
    ) -> tuple[int, bytes, Events]: ...

    def record(self, request: RecordedRequest, events: Optional[Events] = None) -> list[int]: ...

    def emit(self, line: str) -> None: ...


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    block_on_close = False

    def __init__(self, address: tuple[str, int], family: int, backend: Backend) -> None:
        self.address_family = family
        self.backend = backend
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
    server: Server

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
            self._answer(400, dumps({"error": "bad request framing"}), {"Connection": "close"})
            return
        if body is None:  # the client went away mid-body
            self.close_connection = True
            return
        arrived = time.monotonic()
        path = urlsplit(self.path).path
        backend = self.server.backend
        headers = {k: v for k, v in self.headers.items()}
        parsed: Any = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None

        decision = backend.decide(path)
        if decision.delay > 0 and self.server.closing.wait(decision.delay):
            self._drop()  # shutting down while waiting
            return
        if decision.drop:
            backend.record(RecordedRequest(self.command, path, headers, body, parsed, None, arrived))
            backend.emit(f"[{destination_of(path)}] {self.command} {path} -> dropped (injected)")
            self._drop()
            return
        if decision.status:
            backend.record(
                RecordedRequest(self.command, path, headers, body, parsed, decision.status, arrived)
            )
            backend.emit(f"[{destination_of(path)}] {self.command} {path} -> {decision.status} (injected)")
            self._answer(decision.status, decision.body, decision.headers)
            return

        status, answer, events = backend.answer(self.command, path, headers, body, parsed)
        counts = backend.record(
            RecordedRequest(self.command, path, headers, body, parsed, status, arrived), events
        )
        if backend.printing:
            if 200 <= status < 300:
                for (destination, event), count in zip(events, counts):
                    backend.emit(
                        opencdp_line(event["call"], event["body"], count)
                        if destination == OPENCDP
                        else cio_line(event, count)
                    )
                if status == 207:
                    for error in json.loads(answer).get("errors", []):
                        backend.emit(
                            f"[customerio] rejected batch[{error['batch_index']}]: {error['reason']}"
                        )
            else:
                backend.emit(f"[{destination_of(path)}] {self.command} {path} -> {status}")
        self._answer(status, answer)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
