"""A minimal loopback HTTP/1.1 sink for the benchmark (standard library only).

Any method on any path gets ``200 {}`` at once (or after the configured delay) on keep-alive
connections; pipelined requests are answered in order. The sink counts requests and events (an
event is one occurrence of a marker string in the decoded body, so it counts OpenCDP single-event
bodies, Customer.io, Segment and PostHog batches alike) in shared memory, so several worker
processes can serve one listening socket. Two control paths serve a benchmark child:

``GET /__count``                      ``{"requests": R, "events": E}`` summed over the workers
``GET /__wait?events=N&timeout=S``    answers (the same JSON) once ``E >= N`` or ``S`` seconds passed

Run alone: ``python bench/sink.py --port 8899 --procs 1`` (loopback only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gzip
import json
import multiprocessing
import multiprocessing.sharedctypes
import os
import socket
import threading
import time
import zlib
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

__all__ = ["MARKER", "Sink", "blast"]

#: What the benchmark puts once in every event (as the event name).
MARKER = b"bench_evt"

_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
_MAX_HEAD = 64 * 1024


def _answer(body: bytes, close: bool = False) -> bytes:
    extra = b"Connection: close\r\n" if close else b""
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


class _Shared:
    """Counters in shared memory: per worker [requests, events], plus the added delay."""

    def __init__(self, procs: int) -> None:
        ctx = multiprocessing.get_context()
        self.counts: Any = ctx.Array(ctypes.c_longlong, 2 * procs, lock=False)
        self.delay: Any = ctx.Value(ctypes.c_double, 0.0, lock=False)
        self.procs = procs

    def totals(self) -> tuple[int, int]:
        counts = self.counts
        requests = events = 0
        for i in range(self.procs):
            requests += counts[2 * i]
            events += counts[2 * i + 1]
        return requests, events


class _Protocol(asyncio.Protocol):
    """One connection: parse heads and Content-Length (or chunked) bodies, answer in order."""

    def __init__(self, worker: _Worker) -> None:
        self.worker = worker
        self.buf = b""
        self.transport: Optional[asyncio.Transport] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self._close()
                    return
                break
            head = buf[:end].lower()
            start = end + 4
            length = 0
            chunked = False
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                length = int(head[i + 17 : j if j >= 0 else len(head)])
            elif b"\r\ntransfer-encoding: chunked" in head:
                chunked = True
            if chunked:
                parsed = _dechunk(buf, start)
                if parsed is None:
                    break
                body, total = parsed
            else:
                total = start + length
                if len(buf) < total:
                    break
                body = buf[start:total]
            close = b"\r\nconnection: close" in head
            self.worker.handle(self, head, body, close)
            buf = buf[total:]
            if not buf:
                break
        self.buf = buf

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def send(self, data: bytes, close: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if close:
            transport.close()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.transport = None


def _dechunk(buf: bytes, pos: int) -> Optional[tuple[bytes, int]]:
    parts = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(buf[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return None
            return b"".join(parts), end + 2
        if len(buf) < pos + size + 2:
            return None
        parts.append(buf[pos : pos + size])
        pos += size + 2


class _Worker:
    def __init__(self, shared: _Shared, index: int) -> None:
        self.shared = shared
        self.slot = 2 * index
        self.loop = asyncio.new_event_loop()

    def handle(self, proto: _Protocol, head: bytes, body: bytes, close: bool) -> None:
        if head.startswith(b"get /__"):
            self._control(proto, head)
            return
        if b"\r\ncontent-encoding: gzip" in head:
            body = gzip.decompress(body)
        elif b"\r\ncontent-encoding: deflate" in head:
            body = zlib.decompress(body)
        counts = self.shared.counts
        counts[self.slot] += 1
        counts[self.slot + 1] += body.count(MARKER)
        answer = _answer(b"{}", True) if close else _OK
        delay = self.shared.delay.value
        if delay > 0:
            self.loop.call_later(delay, proto.send, answer, close)
        else:
            proto.send(answer, close)

    def _control(self, proto: _Protocol, head: bytes) -> None:
        target = head.split(b" ", 2)[1].decode("latin-1")
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        if parts.path == "/__wait":
            want = int(query.get("events", ["0"])[0])
            deadline = time.monotonic() + float(query.get("timeout", ["60"])[0])
            self._wait(proto, want, deadline)
        else:
            self._reply(proto)

    def _wait(self, proto: _Protocol, want: int, deadline: float) -> None:
        if self.shared.totals()[1] >= want or time.monotonic() >= deadline:
            self._reply(proto)
        else:
            self.loop.call_later(0.0005, self._wait, proto, want, deadline)

    def _reply(self, proto: _Protocol) -> None:
        requests, events = self.shared.totals()
        proto.send(_answer(json.dumps({"requests": requests, "events": events}).encode()), False)

    def serve(self, sock: socket.socket) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(self.loop.create_server(lambda: _Protocol(self), sock=sock))
        try:
            self.loop.run_forever()
        finally:
            server.close()


def _serve(sock: socket.socket, shared: _Shared, index: int) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        _Worker(shared, index).serve(sock)


class Sink:
    """The sink in ``procs`` worker processes sharing one listening socket on 127.0.0.1."""

    def __init__(self, procs: int = 1, port: int = 0) -> None:
        self.procs = procs
        self.shared = _Shared(procs)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(1024)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._workers: list[multiprocessing.process.BaseProcess] = []

    def start(self) -> Sink:
        for i in range(self.procs):
            proc = multiprocessing.Process(target=_serve, args=(self.sock, self.shared, i), daemon=True)
            proc.start()
            self._workers.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"GET /__count HTTP/1.1\r\nHost: x\r\n\r\n")
                    if s.recv(4096).startswith(b"HTTP/1.1 200"):
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("the sink did not start")

    def set_delay(self, seconds: float) -> None:
        self.shared.delay.value = seconds

    def totals(self) -> tuple[int, int]:
        """(requests, events) received so far."""
        return self.shared.totals()

    def cpu_seconds(self) -> float:
        """CPU time used by the worker processes so far (Linux; 0.0 elsewhere)."""
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        for proc in self._workers:
            try:
                with open(f"/proc/{proc.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):
                return 0.0
        return total

    def stop(self) -> None:
        for proc in self._workers:
            proc.terminate()
        for proc in self._workers:
            proc.join(5)
        self.sock.close()

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def blast(port: int, request: bytes, n: int, marker: bytes = b"HTTP/1.1 ") -> float:
    """Send ``n`` copies of ``request`` pipelined on one connection; requests/s until every answer
    came back. Costs the sender almost nothing per request, so it measures the server's ceiling."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    per_write = max(1, 65536 // len(request))
    payload = request * per_write

    def writer() -> None:
        left = n
        while left > 0:
            k = min(per_write, left)
            sock.sendall(payload if k == per_write else request * k)
            left -= k

    start = time.perf_counter()
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    seen = 0
    tail = b""
    while seen < n:
        data = sock.recv(1 << 18)
        if not data:
            break
        chunk = tail + data
        seen += chunk.count(marker)
        tail = chunk[-(len(marker) - 1) :]
    elapsed = time.perf_counter() - start
    thread.join()
    sock.close()
    return seen / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8899)
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    with Sink(args.procs, args.port) as sink:
        sink.set_delay(args.delay)
        print(f"sink listening on {sink.url} ({args.procs} process(es))", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
