"""The fast path: the library's own Session, one ``sendall`` and a small reader per request.

The Session is used for its configuration, resolved once per URL: the environment's proxies
and CA bundle (``session.merge_environment_settings``), and the connection pool of its mounted
``HTTPAdapter`` (``get_connection_with_tls_context`` plus ``cert_verify``: TLS verification
stays on, certifi's bundle unless the environment names another). What requests would redo for
every call — merging settings, looking up proxies, building a ``PreparedRequest`` and a
``Response``, cookie jars, hooks, ``http.client``'s header parsing — is skipped: each request is
one ``sendall`` of a head encoded once per (URL, headers) plus the body, on a pooled urllib3
connection (``_get_conn``/``_put_conn``, the connection's ``sock``), and the answer is read by
:func:`._reader.read_answer` under the request's deadline. On Linux a plain socket is
blocking with the kernel's send and receive timeouts (no ``poll`` before each call), and a
group checks its kept connections with one ``poll`` (:meth:`_Lane.sweep`). A URL that goes through a proxy is
sent by the public path (``urlopen``: urllib3 adds the proxy's headers). ``.netrc`` credentials
are not looked up: every destination sends its own Authorization.

It relies on requests' and urllib3's internals; :func:`capable` checks them once and
:class:`~._http.HttpTransport` falls back to the public path when they are not as expected.
"""

from __future__ import annotations

import contextlib
import errno
import re
import select
import socket
import ssl
import struct
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Optional, Union
from urllib.parse import urlsplit

import requests
import requests.structures
import requests.utils
import urllib3.exceptions
from requests.auth import _basic_auth_str
from urllib3.util.wait import wait_for_read

from .._retry import parse_retry_after
from ._public import PoolTransport
from ._reader import RECV, read_answer
from ._transport import Answer, DeadlinePassed, TransportError, classify

__all__ = ["FastTransport", "capable"]

#: Cached (URL, method, headers, auth) heads and resolved URLs, each, before the cache restarts.
_MAX_CACHED = 64
#: A body larger than this is sent in slices of this size, each under the deadline (TLS
#: ``sendall`` bounds each record write, not the whole).
_SLICE = 256 * 1024
#: A request larger than this is sent by :func:`_send_slices`, under the socket's own timeout
#: (a total for each ``sendall``): a kernel send timeout bounds each ``send`` call, and a peer
#: that reads slowly could stretch a large ``sendall`` past the deadline.
_ONE_SEND = 64 * 1024
#: Send errors after which the answer already waiting in the socket is still read (an early
#: 413, or a 401, sent by a server that stopped reading the body).
_EARLY_ANSWER_ERRNOS = frozenset({errno.EPIPE, errno.ECONNRESET, errno.EPROTOTYPE, errno.ESHUTDOWN})
#: How often :func:`capable` asks for a pool that the PoolManager closed at once (a race).
_CHECK_ATTEMPTS = 3

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(r"[\r\n\x00]")
_clock = time.monotonic
#: A socket timeout already within this many seconds of the time left is kept as it is: each
#: ``settimeout`` is a system call (``ioctl(FIONBIO)``), and on a keep-alive connection the
#: previous request's value is almost always within it. A request may so end up to this much
#: after its deadline, or a recv time out up to this much before it.
_TIMEOUT_SLACK = 0.005
#: On Linux a plain TCP socket of the fast path is blocking, its waits bounded by the kernel
#: (``SO_RCVTIMEO``/``SO_SNDTIMEO``) instead of a ``poll`` before every ``send`` and ``recv``
#: (what CPython does for a socket with a timeout): two system calls fewer per request. A TLS
#: socket keeps ``settimeout`` (OpenSSL on a blocking socket that times out is not a state to
#: read on from).
_KERNEL_TIMEOUTS = sys.platform.startswith("linux") and hasattr(socket, "SO_RCVTIMEO")
#: The attribute on a urllib3 connection holding the kernel timeouts its socket has (seconds).
_KERNEL_ATTR = "_cdp_batcher_timeo"


def capable(session: requests.Session, url: str) -> Optional[str]:
    """None when the internals the fast path uses are there for ``url``; else what is missing."""
    adapter: Any = session.get_adapter(url)
    for name in ("cert_verify", "request_url"):
        if not callable(getattr(adapter, name, None)):
            return f"HTTPAdapter.{name}"
    if not callable(getattr(adapter, "get_connection_with_tls_context", None)) and not callable(
        getattr(adapter, "get_connection", None)
    ):
        return "HTTPAdapter.get_connection_with_tls_context"
    if not callable(getattr(requests.utils, "select_proxy", None)):
        return "requests.utils.select_proxy"
    for _ in range(_CHECK_ATTEMPTS):
        pool = _pool(session, url)
        for name in ("_get_conn", "_put_conn", "urlopen"):
            if not callable(getattr(pool, name, None)):
                return f"HTTPConnectionPool.{name}"
        try:
            conn = pool._get_conn()
        except urllib3.exceptions.ClosedPoolError:
            # Evicted as soon as made: another first request made a pool for the same key at
            # the same time and the PoolManager closed this one (seen with urllib3 1.x under
            # gevent patched after import: the manager's RLock, made before the patch, does not
            # keep greenlets apart). Not a missing internal: ask again, as a send does.
            continue
        break
    else:
        return None  # _get_conn and _put_conn are there; a send resolves a closed pool again
    try:
        if not hasattr(conn, "sock") or not callable(getattr(conn, "connect", None)):
            return "HTTPConnection.sock/connect"
        if conn.sock is not None and not isinstance(conn.sock, socket.socket):
            return "HTTPConnection.sock is a socket"
    finally:
        pool._put_conn(conn)
    return None


def _pool(session: requests.Session, url: str) -> Any:
    adapter: Any = session.get_adapter(url)
    settings = session.merge_environment_settings(url, {}, None, None, None)
    prepared = requests.Request("POST", url).prepare()
    if hasattr(adapter, "get_connection_with_tls_context"):
        return adapter.get_connection_with_tls_context(
            prepared,
            settings.get("verify", True),
            proxies=settings.get("proxies") or {},
            cert=settings.get("cert"),
        )
    return adapter.get_connection(url, settings.get("proxies") or {})  # requests < 2.32.2


class _Lane:
    """One URL resolved on the library's own Session: its pool and how to address it."""

    __slots__ = ("direct", "host", "idle", "keep", "pool", "proxy", "settings", "target")

    def __init__(
        self, pool: Any, target: str, host: str, proxy: Optional[str], settings: dict[str, Any]
    ) -> None:
        self.pool = pool
        self.target = target  # request-target: the path (direct) or the whole URL (proxied http)
        self.host = host
        self.direct = not proxy
        self.proxy = proxy
        self.settings = settings
        #: Kept-alive connections taken from the pool, the last used on top (list.pop and
        #: append are atomic: no Condition per request, as urllib3's LifoQueue takes two).
        self.idle: list[Any] = []
        self.keep = max(1, getattr(getattr(pool, "pool", None), "maxsize", 1) or 1)

    def take(self, checked: bool = False) -> Any:
        """A kept-alive connection the server has not closed, or None. ``checked``: the
        connections were checked just before by :meth:`sweep` (or given back since, their
        answer read whole), so no check of its own."""
        idle = self.idle
        while idle:
            try:
                conn = idle.pop()
            except IndexError:  # another sender took the last one
                return None
            sock = conn.sock
            if sock is not None and (checked or not _readable(sock)):
                return conn
            conn.close()  # closed by the server (EOF waiting) or sent something unasked
            self.pool._put_conn(conn)
        return None

    def sweep(self) -> bool:
        """Drop the kept-alive connections the server closed, with one ``poll`` for all of
        them; True when a group may then take its connections unchecked (``take(True)``)."""
        idle = self.idle
        if len(idle) < 2 or _poll is None:
            return False  # one connection: take's own check is the same one system call
        poller = _poll()
        conns: dict[int, Any] = {}
        for conn in list(idle):
            sock = conn.sock
            if sock is not None:
                fd = sock.fileno()
                conns[fd] = conn
                poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(0):
            conn = conns[fd]
            try:
                idle.remove(conn)
            except ValueError:  # another sender took it: its own take checks it
                continue
            conn.close()
            self.pool._put_conn(conn)
        return True

    def give(self, conn: Any) -> None:
        """Keep ``conn`` for the next request (the pool's share when the list is full)."""
        idle = self.idle
        if len(idle) < self.keep and self.pool.pool is not None:
            idle.append(conn)
        else:
            self.pool._put_conn(conn)

    def drop(self) -> None:
        """Close the kept connections (the lane is forgotten, or its pool was closed)."""
        while self.idle:
            try:
                conn = self.idle.pop()
            except IndexError:
                return
            conn.close()
            with contextlib.suppress(Exception):
                self.pool._put_conn(conn)


class _Exchange:
    """A request sent on a connection, its answer not read yet."""

    __slots__ = ("conn", "deadline", "head_only", "lane", "sock", "timeout")

    def __init__(
        self, lane: _Lane, conn: Any, sock: Any, head_only: bool, deadline: float, timeout: float
    ) -> None:
        self.lane = lane
        self.conn = conn
        self.sock = sock
        self.head_only = head_only
        self.deadline = deadline
        self.timeout = timeout


class FastTransport:
    """Requests on the library's own Session through its adapter's urllib3 pools (see module)."""

    def __init__(self, session: requests.Session) -> None:
        self.session = session
        self._public = PoolTransport(session)
        self._lanes: dict[str, _Lane] = {}
        self._heads: dict[tuple[str, str, int, Any], tuple[object, bytes, dict[str, Any]]] = {}

    def request(
        self,
        method: str,
        url: str,
        *,
        body: Optional[bytes],
        headers: Mapping[str, str],
        timeout: float,
        auth: Optional[tuple[str, str]] = None,
    ) -> Answer:
        """Send one request within ``timeout`` seconds in all; the answer or TransportError.

        ``headers`` is treated as immutable: the request head is encoded once per (URL, method,
        headers object, auth) and reused.
        """
        deadline = _clock() + timeout
        key = (url, method, id(headers), auth)
        cached = self._heads.get(key)
        if cached is None or cached[0] is not headers:
            cached = self._prepare(key, headers, auth)
        lane = self._lanes.get(url) or self._resolve(url)
        if lane.direct:
            return self._send(lane, cached[1], method, body, deadline, timeout)
        return self._public.send_pool(
            lane.pool, lane.target, method, body, cached[2], deadline, proxy=lane.proxy
        )

    # ---------------------------------------------------------------------------- preparing
    def _prepare(
        self, key: tuple[str, str, int, Any], headers: Mapping[str, str], auth: Optional[tuple[str, str]]
    ) -> tuple[object, bytes, dict[str, Any]]:
        url, method = key[0], key[1]
        lane = self._lanes.get(url) or self._resolve(url)
        merged = requests.structures.CaseInsensitiveDict(self.session.headers)
        merged.update(headers)
        merged["Accept-Encoding"] = "identity"  # the reader does not decompress
        merged.pop("Content-Length", None)
        merged.pop("Transfer-Encoding", None)
        merged.pop("Host", None)
        if auth is not None:
            merged["Authorization"] = _basic_auth_str(*auth)
        lines = [f"{method} {lane.target} HTTP/1.1", f"Host: {lane.host}"]
        for name, value in merged.items():
            if value is None:
                continue
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            if not _TOKEN.match(name) or _BAD_VALUE.search(text):
                raise TransportError(
                    "connection_error", f"request error (invalid header {name!r})", maybe_sent=False
                )
            lines.append(f"{name}: {text}")
        try:
            head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        except UnicodeEncodeError:
            raise TransportError(
                "connection_error", "request error (header value not latin-1)", maybe_sent=False
            ) from None
        if len(self._heads) >= _MAX_CACHED:
            self._heads = {}
        entry = (headers, head, dict(merged))
        self._heads[key] = entry
        return entry

    def _resolve(self, url: str) -> _Lane:
        """Proxies, CA bundle and pool for ``url``, from the Session and the environment, once."""
        session = self.session
        try:
            settings = session.merge_environment_settings(url, {}, None, None, None)
            prepared = requests.Request("POST", url).prepare()
            adapter: Any = session.get_adapter(url)
            proxies = settings.get("proxies") or {}
            verify, cert = settings.get("verify", True), settings.get("cert")
            if hasattr(adapter, "get_connection_with_tls_context"):
                pool = adapter.get_connection_with_tls_context(prepared, verify, proxies=proxies, cert=cert)
            else:  # requests < 2.32.2
                pool = adapter.get_connection(url, proxies)
            adapter.cert_verify(pool, url, verify, cert)
            target = adapter.request_url(prepared, proxies)
            proxy = requests.utils.select_proxy(url, proxies)
        except Exception as exc:
            raise classify(exc, sent=False) from None
        lane = _Lane(pool, target, urlsplit(url).netloc, proxy, dict(settings))
        if len(self._lanes) >= _MAX_CACHED:
            self._drop_lanes()
        self._lanes[url] = lane
        return lane

    def _refresh(self, lane: _Lane) -> _Lane:
        """The lane's pool was closed (session closed, or evicted by the pool manager)."""
        lane.drop()
        for url, known in list(self._lanes.items()):
            if known is lane:
                self._lanes.pop(url, None)
                return self._resolve(url)
        return lane

    def _drop_lanes(self) -> None:
        lanes, self._lanes = self._lanes, {}
        for lane in lanes.values():
            lane.drop()

    # ------------------------------------------------------------------------------ sending
    def _send(
        self, lane: _Lane, head: bytes, method: str, body: Optional[bytes], deadline: float, timeout: float
    ) -> Answer:
        exchange = self._start(lane, head, method, body, deadline, timeout)
        return exchange if isinstance(exchange, Answer) else self._finish(exchange)

    def _start(
        self,
        lane: _Lane,
        head: bytes,
        method: str,
        body: Optional[bytes],
        deadline: float,
        timeout: float,
        swept: bool = False,
    ) -> Any:
        """Send one request: the :class:`_Exchange` whose answer is to be read, or the Answer
        already read (a server that stopped reading the body and answered). ``swept``: the
        lane's kept connections were checked for the group (:meth:`_Lane.sweep`)."""
        pool = lane.pool
        conn = lane.take(swept) if lane.idle else None
        if conn is None:
            try:
                conn = pool._get_conn()
            except urllib3.exceptions.ClosedPoolError:  # closed or evicted: resolve again, once
                lane = self._refresh(lane)
                pool = lane.pool
                try:
                    conn = pool._get_conn()
                except Exception as exc:
                    raise classify(exc, sent=False) from None
        sent = False
        try:
            sock = conn.sock
            if sock is None:
                conn.timeout = max(0.001, deadline - _clock())
                conn.connect()
                sock = conn.sock
                _bound(conn, sock, deadline)
            else:
                # Kept-alive: microseconds since the deadline was set, well within the slack, so
                # the time left is ``timeout`` (no second clock read, and usually no system call).
                _fit(conn, sock, timeout)
            if body is None:
                data = head + b"\r\n"
            else:
                data = b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)
            sent = True
            try:
                if len(data) <= _ONE_SEND:
                    sock.sendall(data)
                else:
                    _send_slices(sock, data, deadline)
            except OSError as exc:
                if exc.errno not in _EARLY_ANSWER_ERRNOS and not isinstance(exc, ssl.SSLEOFError):
                    raise
                # The server stopped reading and may have answered already (413 before the
                # body ended): read what waits in the socket; nothing there keeps this error.
                try:
                    status, retry_after, content, _ = read_answer(
                        partial(_recv, conn, sock, deadline), method == "HEAD"
                    )
                except Exception:
                    raise exc from None
                conn.close()
                pool._put_conn(conn)
                return _answer(status, retry_after, content)
        except Exception as exc:
            conn.close()
            pool._put_conn(conn)
            if _clock() >= deadline and sent:
                raise classify(DeadlinePassed(), sent=True) from None
            raise classify(_timed_out(exc), sent=sent) from None
        return _Exchange(lane, conn, sock, method == "HEAD", deadline, timeout)

    def _finish(self, exchange: _Exchange) -> Answer:
        """Read the answer of a request :meth:`_start` sent; the connection is kept or closed."""
        lane, conn, sock, deadline = exchange.lane, exchange.conn, exchange.sock, exchange.deadline
        reusable = False
        try:
            if _clock() > deadline - exchange.timeout + _TIMEOUT_SLACK:  # the send took a while
                _bound(conn, sock, deadline)
            # The socket's timeout is the time left (within the slack): the first read of the
            # answer goes straight to the socket; later ones, if any, through the deadline again.
            first = sock.recv(RECV)
            status, retry_after, content, reusable = read_answer(
                partial(_recv, conn, sock, deadline), exchange.head_only, first
            )
        except Exception as exc:
            if _clock() >= deadline:
                raise classify(DeadlinePassed(), sent=True) from None
            raise classify(_timed_out(exc), sent=True) from None
        finally:
            if reusable:
                lane.give(conn)
            else:
                conn.close()
                lane.pool._put_conn(conn)
        if retry_after is None and status != 429 and status != 503:
            return Answer(status, None, content)
        return _answer(status, retry_after, content)

    def request_group(
        self,
        method: str,
        requests_: Sequence[tuple[str, Optional[bytes]]],
        *,
        headers: Mapping[str, str],
        timeout: float,
    ) -> list[Union[Answer, TransportError]]:
        """Send several requests (URL, body) on as many kept-alive connections, then read their
        answers: one wait for all of them instead of one each. Each gets its answer or its
        TransportError, in order, within ``timeout`` from now. At most one new connection is
        opened per group (a connection is made while the others wait); past the connections
        kept alive, the oldest request's answer is read first and its connection used again."""
        deadline = _clock() + timeout
        results: list[Union[Answer, TransportError, _Exchange, None]] = [None] * len(requests_)
        waiting: deque[int] = deque()
        opened = False
        swept: dict[int, bool] = {}  # id(lane): whether its kept connections were checked at once
        for index, (url, body) in enumerate(requests_):
            try:
                key = (url, method, id(headers), None)
                cached = self._heads.get(key)
                if cached is None or cached[0] is not headers:
                    cached = self._prepare(key, headers, None)
                lane = self._lanes.get(url) or self._resolve(url)
                if not lane.direct:  # through a proxy: one after the other, each its own time
                    results[index] = self._public.send_pool(
                        lane.pool, lane.target, method, body, cached[2], _clock() + timeout, proxy=lane.proxy
                    )
                    continue
                while waiting and not lane.idle and opened:  # no connection left: free the oldest
                    self._collect(results, waiting.popleft())
                opened = opened or not lane.idle
                checked = swept.get(id(lane))
                if checked is None:
                    checked = swept[id(lane)] = lane.sweep()
                results[index] = self._start(lane, cached[1], method, body, deadline, timeout, checked)
                if isinstance(results[index], _Exchange):
                    waiting.append(index)
            except TransportError as exc:
                results[index] = exc
        while waiting:
            self._collect(results, waiting.popleft())
        return [r for r in results if isinstance(r, (Answer, TransportError))]

    def _collect(self, results: list[Any], index: int) -> None:
        try:
            results[index] = self._finish(results[index])
        except TransportError as exc:
            results[index] = exc

    # ---------------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        self._drop_lanes()
        self.session.close()


def _readable(sock: Any) -> bool:
    """True when a kept-alive socket has something to read before a request was sent: the
    server closed it (EOF) or wrote unasked. What urllib3's ``is_connection_dropped`` checks,
    with one ``poll`` system call."""
    if _poll is None:
        return bool(wait_for_read(sock, timeout=0.0))
    poller = _poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


_poll = getattr(select, "poll", None)


def _recv(conn: Any, sock: Any, deadline: float, n: int) -> bytes:
    """``recv`` under a deadline: each call waits at most the time that is left."""
    _bound(conn, sock, deadline)
    data: bytes = sock.recv(n)
    return data


def _bound(conn: Any, sock: Any, deadline: float) -> None:
    """Let the next socket operation wait no longer than the time left (see _TIMEOUT_SLACK)."""
    _fit(conn, sock, _left(deadline))


def _left(deadline: float) -> float:
    """The time left before ``deadline``; DeadlinePassed when there is none."""
    left = deadline - _clock()
    if left <= 0:
        raise DeadlinePassed()
    return left


def _fit(conn: Any, sock: Any, left: float) -> None:
    """Let each of the socket's next operations wait at most ``left`` (within _TIMEOUT_SLACK):
    the kernel's timeouts on a blocking plain socket where there are (_KERNEL_TIMEOUTS), else
    the socket's timeout; unchanged when it is that already."""
    if _KERNEL_TIMEOUTS and type(sock) is socket.socket:
        known = getattr(conn, _KERNEL_ATTR, None)
        if (
            known is None
            or known[0] is not sock
            or not left - _TIMEOUT_SLACK <= known[1] <= left + _TIMEOUT_SLACK
            or sock.gettimeout() is not None
        ):
            # The waits are bounded first, then the socket made blocking: never unbounded.
            micros = max(1000, int(left * 1_000_000))  # 0 would mean no limit
            value = struct.pack("ll", micros // 1_000_000, micros % 1_000_000)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
            if sock.gettimeout() is not None:
                sock.settimeout(None)
            setattr(conn, _KERNEL_ATTR, (sock, left))
        return
    current = sock.gettimeout()
    if current is None or not left - _TIMEOUT_SLACK <= current <= left + _TIMEOUT_SLACK:
        sock.settimeout(left)


def _timed_out(exc: BaseException) -> BaseException:
    """A kernel timeout on a blocking socket (EAGAIN) as the timeout it is."""
    if isinstance(exc, BlockingIOError):
        return socket.timeout("timed out")
    return exc


def _send_slices(sock: Any, data: bytes, deadline: float) -> None:
    """Send a large request in slices, each ``sendall`` under the socket's timeout set to the
    time left (a total for the call; the next :func:`_fit` restores the kernel's timeouts)."""
    view = memoryview(data)
    for start in range(0, len(data), _SLICE):
        sock.settimeout(_left(deadline))
        sock.sendall(view[start : start + _SLICE])


def _answer(status: int, retry_after: Optional[str], content: bytes) -> Answer:
    if retry_after is not None or status in (429, 503):
        return Answer(status, parse_retry_after(retry_after), content)
    return Answer(status, None, content)
