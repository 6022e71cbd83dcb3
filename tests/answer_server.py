"""A raw-socket HTTP server on 127.0.0.1 that sends exactly the bytes a test scripts.

Each request takes the next :class:`Script` from the queue (the default answers ``200`` with
``{}``). A script reads the request (its head, and its Content-Length body unless
``read_body=False``), then sends ``answer`` at once or ``drip`` bytes apart, and then keeps the
connection, half-closes it, or closes it (unread body bytes make the kernel send a reset: how a
front end answers 413 early). The server counts connections and records each request's head.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
from typing import Optional

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


class Script:
    """What to do with one request (see the module doc)."""

    def __init__(
        self,
        answer: bytes = OK,
        *,
        read_body: bool = True,
        drip: Optional[float] = None,
        drip_after: int = 0,
        close: bool = False,
        then: bytes = b"",
    ) -> None:
        self.answer = answer
        self.read_body = read_body
        self.drip = drip  # seconds between bytes, after the first ``drip_after`` bytes
        self.drip_after = drip_after
        self.close = close
        self.then = then  # bytes sent separately after the answer (stray bytes)


class AnswerServer:
    """``with AnswerServer(rcvbuf=4096) as server: server.push(Script(...))``; ``server.url``."""

    def __init__(self, *, rcvbuf: Optional[int] = None) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf is not None:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._scripts: collections.deque[Script] = collections.deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self.connections = 0
        self.heads: list[tuple[int, bytes]] = []  # (connection number, request head)
        self._accepter = threading.Thread(target=self._accept, name="cdp-collector-answers", daemon=True)

    def __enter__(self) -> AnswerServer:
        self._accepter.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def push(self, *scripts: Script) -> None:
        with self._lock:
            self._scripts.extend(scripts)

    def requests(self) -> int:
        with self._lock:
            return len(self.heads)

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._accepter.join(5)
        for thread in self._threads:
            thread.join(5)

    # ------------------------------------------------------------------------------- serving
    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
                self._conns.append(conn)
            thread = threading.Thread(
                target=self._serve, args=(conn, number), name="cdp-collector-answer", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        buf = b""
        try:
            while not self._stop.is_set():
                while b"\r\n\r\n" not in buf:
                    more = conn.recv(65536)
                    if not more:
                        return
                    buf += more
                end = buf.index(b"\r\n\r\n") + 4
                head, buf = buf[:end], buf[end:]
                with self._lock:
                    self.heads.append((number, head))
                    script = self._scripts.popleft() if self._scripts else Script()
                if script.read_body:
                    length = _content_length(head)
                    while len(buf) < length:
                        more = conn.recv(65536)
                        if not more:
                            return
                        buf += more
                    buf = buf[length:]
                self._send(conn, script)
                if script.close:
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_WR)
                    return
        except OSError:
            return
        finally:
            conn.close()

    def _send(self, conn: socket.socket, script: Script) -> None:
        if script.drip is None:
            conn.sendall(script.answer)
        else:
            conn.sendall(script.answer[: script.drip_after])
            for i in range(script.drip_after, len(script.answer)):
                if self._stop.wait(script.drip):
                    return
                conn.sendall(script.answer[i : i + 1])
        if script.then:
            conn.sendall(script.then)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def endless(prefix: bytes, filler: bytes = b"a", count: int = 1_000_000) -> bytes:
    """An answer that never ends (for dripping)."""
    return prefix + filler * count
