"""HTTP for the destinations, on a pooled keep-alive ``requests`` Session.

The only module that imports ``requests``. Requests never follow redirects (a redirect is an
answer like any non-2xx), so credentials are never sent to another host. Errors are sorted by
whether the request could have reached the server (for non-idempotent sends).

Two paths:

- **A user's Session** goes through ``session.request(...)`` every time: its adapters, auth,
  hooks, cookies, verify, cert and proxies (its own and the environment's) all apply.
- **The library's own Session** is used for its configuration, resolved once per URL: the
  environment's proxies and CA bundle (``session.merge_environment_settings``), and the
  connection pool of its mounted ``HTTPAdapter`` (``get_connection_with_tls_context`` plus
  ``cert_verify``: TLS verification stays on, certifi's bundle unless the environment names
  another). What requests would redo for every call — merging settings, looking up proxies,
  building a ``PreparedRequest`` and a ``Response``, cookie jars, hooks, the email-parser header
  parsing of ``http.client`` — is skipped: each request is one ``sendall`` of a head encoded once
  per (URL, headers) plus the body, on a pooled urllib3 connection, and the answer is read with a
  small HTTP/1.1 reader (Content-Length, chunked, or until close; 1xx skipped). A URL that goes
  through a proxy is sent with the pool's ``urlopen`` instead (urllib3 adds the proxy's headers).
  ``.netrc`` credentials are not looked up: every destination sends its own Authorization. The
  environment is read at the first request to each URL (and again after a fork).
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Mapping
from typing import Any, Optional
from urllib.parse import urlsplit

import requests
import requests.adapters
import requests.structures
import requests.utils
import urllib3
import urllib3.exceptions
from requests.auth import _basic_auth_str

from .._retry import parse_retry_after

__all__ = ["Answer", "HttpTransport", "TransportError"]

#: How much of an error answer is kept for messages (never request bodies).
_MAX_ERROR_TEXT = 300
#: The most the reader accepts for an answer's head and for its body.
_MAX_HEAD = 64 * 1024
_MAX_CONTENT = 16 * 1024 * 1024
_RECV = 65536
#: Cached (URL, method, headers, auth) heads and resolved URLs, each, before the cache restarts.
_MAX_CACHED = 64

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(r"[\r\n\x00]")


class Answer:
    """An HTTP answer: status, Retry-After in seconds (if any) and the body."""

    __slots__ = ("content", "retry_after", "status")

    def __init__(self, status: int, retry_after: Optional[float], content: bytes) -> None:
        self.status = status
        self.retry_after = retry_after
        self.content = content

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def error_text(self) -> str:
        text = self.content[:_MAX_ERROR_TEXT].decode("utf-8", "replace").strip()
        return text.replace("\n", " ")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Answer):
            return NotImplemented
        return (self.status, self.retry_after, self.content) == (
            other.status,
            other.retry_after,
            other.content,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Answer(status={self.status}, retry_after={self.retry_after!r}, content=<{len(self.content)} bytes>)"


class TransportError(Exception):
    """No HTTP answer. ``reason`` is ``connection_error`` or ``timeout``; ``maybe_sent`` tells whether
    the server may have received the request (read timeout, reset after sending)."""

    def __init__(self, reason: str, message: str, *, maybe_sent: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.maybe_sent = maybe_sent


class _BadAnswer(Exception):
    """The server's bytes are not an HTTP/1.x answer we can read (or it closed mid-answer)."""


def _describe(exc: BaseException) -> str:
    """A short cause without URLs' query strings or bodies."""
    name = type(exc).__name__
    inner: Any = exc.args[0] if exc.args else None
    reason = getattr(inner, "reason", None) or getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        return f"{name}: {type(reason).__name__}"
    return name


class _Lane:
    """One URL resolved on the library's own Session: its pool and how to address it."""

    __slots__ = ("direct", "host", "pool", "settings", "target")

    def __init__(self, pool: Any, target: str, host: str, direct: bool, settings: dict[str, Any]) -> None:
        self.pool = pool
        self.target = target  # request-target: the path (direct) or the whole URL (proxied http)
        self.host = host
        self.direct = direct
        self.settings = settings


class HttpTransport:
    """POST/GET with per-request timeouts on one pooled Session (the user's or our own)."""

    def __init__(self, session: Optional[requests.Session], *, pool_size: int) -> None:
        self._own = session is None
        self._pool_size = pool_size
        self.session = session if session is not None else self._new_session()
        self._lanes: dict[str, _Lane] = {}
        self._heads: dict[tuple[str, str, int, Any], tuple[object, bytes, dict[str, Any]]] = {}
        self._timeouts: dict[float, urllib3.Timeout] = {}

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=4, pool_maxsize=max(self._pool_size, 10), max_retries=0, pool_block=False
        )
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

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
        """Send one request and return the answer; raise :class:`TransportError` when none came.

        ``headers`` is treated as immutable: with the library's own Session the request head
        is encoded once per (URL, method, headers object, auth) and reused.
        """
        if not self._own:
            return self._session_request(method, url, body, headers, timeout, auth)
        key = (url, method, id(headers), auth)
        cached = self._heads.get(key)
        if cached is None or cached[0] is not headers:
            cached = self._prepare(key, headers, auth)
        lane = self._lanes.get(url) or self._resolve(url)
        if lane.direct:
            return self._send_direct(lane, cached[1], method, body, timeout)
        return self._send_urlopen(lane, method, body, cached[2], timeout)

    # ---------------------------------------------------------------- the library's own Session
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
            pool = adapter.get_connection_with_tls_context(prepared, verify, proxies=proxies, cert=cert)
            adapter.cert_verify(pool, url, verify, cert)
            target = adapter.request_url(prepared, proxies)
            proxy = requests.utils.select_proxy(url, proxies)
        except (requests.exceptions.RequestException, OSError, ValueError) as exc:
            raise TransportError(
                "connection_error", f"request error ({_describe(exc)})", maybe_sent=False
            ) from None
        parts = urlsplit(url)
        lane = _Lane(pool, target, parts.netloc, not proxy, dict(settings))
        if len(self._lanes) >= _MAX_CACHED:
            self._lanes = {}
        self._lanes[url] = lane
        return lane

    def _refresh(self, lane: _Lane) -> _Lane:
        """The lane's pool was closed (session closed, or evicted by the pool manager)."""
        for url, known in list(self._lanes.items()):
            if known is lane:
                self._lanes.pop(url, None)
                return self._resolve(url)
        return lane

    def _send_direct(
        self, lane: _Lane, head: bytes, method: str, body: Optional[bytes], timeout: float
    ) -> Answer:
        pool = lane.pool
        try:
            conn = pool._get_conn()
        except urllib3.exceptions.ClosedPoolError:  # closed or evicted: resolve again, once
            pool = self._refresh(lane).pool
            try:
                conn = pool._get_conn()
            except urllib3.exceptions.HTTPError as exc:
                raise TransportError(
                    "connection_error", f"request error ({type(exc).__name__})", maybe_sent=False
                ) from None
        reusable = False
        try:
            sock = conn.sock
            if sock is None:
                conn.timeout = timeout
                try:
                    conn.connect()
                except Exception as exc:
                    raise _connect_error(exc) from None
                sock = conn.sock
            if sock.gettimeout() != timeout:
                sock.settimeout(timeout)
            if body is None:
                data = head + b"\r\n"
            else:
                data = b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)
            try:
                sock.sendall(data)
                status, retry_after, content, reusable = _read_answer(sock, method == "HEAD")
            except (socket.timeout, TimeoutError) as exc:
                raise TransportError(
                    "timeout", f"read timeout ({type(exc).__name__})", maybe_sent=True
                ) from None
            except ssl.SSLError as exc:
                raise TransportError(
                    "connection_error", f"TLS error ({type(exc).__name__})", maybe_sent=True
                ) from None
            except OSError as exc:
                raise TransportError(
                    "connection_error", f"connection error ({type(exc).__name__})", maybe_sent=True
                ) from None
            except _BadAnswer as exc:
                raise TransportError("connection_error", f"bad answer ({exc})", maybe_sent=True) from None
        finally:
            if not reusable:
                conn.close()
            pool._put_conn(conn)
        if retry_after is not None or status in (429, 503):
            return Answer(status, parse_retry_after(retry_after), content)
        return Answer(status, None, content)

    def _send_urlopen(
        self, lane: _Lane, method: str, body: Optional[bytes], headers: dict[str, Any], timeout: float
    ) -> Answer:
        """A proxied URL: the pool's own urlopen (it adds the proxy's headers), as requests would."""
        limits = self._timeouts.get(timeout)
        if limits is None:
            limits = urllib3.Timeout(connect=timeout, read=timeout)
            if len(self._timeouts) < _MAX_CACHED:
                self._timeouts[timeout] = limits
        try:
            response = lane.pool.urlopen(
                method=method,
                url=lane.target,
                body=body,
                headers=headers,
                redirect=False,
                assert_same_host=False,
                preload_content=True,
                decode_content=False,
                retries=urllib3.Retry(0, read=False, redirect=False),
                timeout=limits,
            )
        except Exception as exc:
            raise _urllib3_error(exc) from None
        status = int(response.status)
        retry_after = response.headers.get("Retry-After")
        content = bytes(response.data or b"")
        if retry_after is not None or status in (429, 503):
            return Answer(status, parse_retry_after(retry_after), content)
        return Answer(status, None, content)

    # ------------------------------------------------------------------------- a user's Session
    def _session_request(
        self,
        method: str,
        url: str,
        body: Optional[bytes],
        headers: Mapping[str, str],
        timeout: float,
        auth: Optional[tuple[str, str]],
    ) -> Answer:
        try:
            response = self.session.request(
                method,
                url,
                data=body,
                headers=dict(headers),
                timeout=timeout,
                allow_redirects=False,
                auth=auth,
            )
        except requests.exceptions.ConnectTimeout as exc:
            raise TransportError("timeout", f"connect timeout ({_describe(exc)})", maybe_sent=False) from None
        except requests.exceptions.Timeout as exc:
            raise TransportError("timeout", f"read timeout ({_describe(exc)})", maybe_sent=True) from None
        except requests.exceptions.SSLError as exc:
            raise TransportError(
                "connection_error", f"TLS error ({_describe(exc)})", maybe_sent=False
            ) from None
        except requests.exceptions.ConnectionError as exc:
            maybe_sent = not _refused(exc)
            raise TransportError(
                "connection_error", f"connection error ({_describe(exc)})", maybe_sent=maybe_sent
            ) from None
        except requests.exceptions.RequestException as exc:
            raise TransportError(
                "connection_error", f"request error ({_describe(exc)})", maybe_sent=True
            ) from None
        try:
            content = response.content
        except requests.exceptions.RequestException as exc:
            raise TransportError(
                "connection_error", f"error reading answer ({_describe(exc)})", maybe_sent=True
            ) from None
        finally:
            response.close()
        retry_after = None
        if response.status_code in (429, 503) or "Retry-After" in response.headers:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return Answer(response.status_code, retry_after, content)

    # ----------------------------------------------------------------------------- lifecycle
    def after_fork(self) -> None:
        """Forget the parent's connections (a user's Session is the user's to manage)."""
        if self._own:
            self.session = self._new_session()
            self._lanes = {}
            self._heads = {}
        else:
            for adapter in self.session.adapters.values():
                adapter.close()

    def close(self) -> None:
        if self._own:
            self.session.close()
            self._lanes = {}


# ------------------------------------------------------------------------------ the reader
def _read_answer(sock: Any, head_only: bool) -> tuple[int, Optional[str], bytes, bool]:
    """Read one answer: (status, Retry-After text, body, whether the connection can be reused)."""
    recv = sock.recv
    buf = recv(_RECV)
    eol = end = 0
    line = rest = b""
    while True:
        end = buf.find(b"\r\n\r\n")
        while end < 0:
            if len(buf) > _MAX_HEAD:
                raise _BadAnswer("head too long")
            more = recv(_RECV)
            if not more:
                raise _BadAnswer("closed before an answer" if not buf else "closed mid-answer")
            buf += more
            end = buf.find(b"\r\n\r\n")
        eol = buf.find(b"\r\n")
        line = buf[:eol]
        if not line.startswith(b"HTTP/1.") or len(line) < 12 or line[12:13] not in (b"", b" "):
            raise _BadAnswer("not an HTTP/1.x status line")
        try:
            status = int(line[9:12])
        except ValueError:
            raise _BadAnswer("bad status code") from None
        rest = buf[end + 4 :]
        if 100 <= status < 200:  # informational (100 Continue, 103 Early Hints): the answer follows
            buf = rest or recv(_RECV)
            if not buf:
                raise _BadAnswer("closed after an informational answer")
            continue
        break
    head = buf[eol : end + 2]
    lower = head.lower()
    keep_alive = line[7:8] == b"1"  # HTTP/1.1 keeps the connection unless told otherwise
    connection = _header(lower, lower, b"connection")
    if connection is not None:
        keep_alive = b"close" not in connection if keep_alive else b"keep-alive" in connection
    retry = _header(head, lower, b"retry-after")
    retry_after = retry.decode("latin-1").strip() if retry is not None else None
    if head_only or status in (204, 304):
        return status, retry_after, b"", keep_alive and not rest
    encoding = _header(lower, lower, b"transfer-encoding")
    if encoding is not None and b"chunked" in encoding:
        content, rest = _read_chunked(recv, rest)
        return status, retry_after, content, keep_alive and not rest
    length_text = _header(lower, lower, b"content-length")
    if length_text is None:  # delimited by the end of the connection
        parts = [rest]
        size = len(rest)
        while True:
            more = recv(_RECV)
            if not more:
                break
            size += len(more)
            if size > _MAX_CONTENT:
                raise _BadAnswer("answer too large")
            parts.append(more)
        return status, retry_after, b"".join(parts), False
    try:
        length = int(length_text.split(b",")[0])
    except ValueError:
        raise _BadAnswer("bad Content-Length") from None
    if length < 0 or length > _MAX_CONTENT:
        raise _BadAnswer("bad Content-Length")
    if len(rest) < length:
        rest = _read_more(recv, rest, length)
    return status, retry_after, rest[:length], keep_alive and len(rest) == length


def _header(source: bytes, lower: bytes, name: bytes) -> Optional[bytes]:
    """The value of header ``name`` (lower case) in a head that starts with CRLF, or None."""
    start = lower.find(b"\r\n" + name + b":")
    if start < 0:
        return None
    start += len(name) + 3
    end = lower.find(b"\r\n", start)
    return source[start:end].strip()


def _read_more(recv: Any, have: bytes, length: int) -> bytes:
    parts = [have]
    size = len(have)
    while size < length:
        more = recv(min(_RECV, max(length - size, 4096)))
        if not more:
            raise _BadAnswer("closed mid-answer")
        parts.append(more)
        size += len(more)
    return b"".join(parts)


def _line_end(recv: Any, buf: bytes, pos: int) -> tuple[bytes, int, int]:
    """Receive until a CRLF follows ``pos``; returns (buffer, line start, CRLF index)."""
    eol = buf.find(b"\r\n", pos)
    while eol < 0:
        if len(buf) - pos > _MAX_HEAD:
            raise _BadAnswer("chunk line too long")
        more = recv(_RECV)
        if not more:
            raise _BadAnswer("closed mid-answer")
        buf = buf[pos:] + more
        pos = 0
        eol = buf.find(b"\r\n")
    return buf, pos, eol


def _read_chunked(recv: Any, buf: bytes) -> tuple[bytes, bytes]:
    """Decode a chunked body; returns (body, bytes left over after it)."""
    parts: list[bytes] = []
    size = 0
    pos = 0
    while True:
        buf, pos, eol = _line_end(recv, buf, pos)
        try:
            chunk = int(buf[pos:eol].split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _BadAnswer("bad chunk size") from None
        pos = eol + 2
        if chunk == 0:  # trailers (usually none), then an empty line
            while True:
                buf, pos, eol = _line_end(recv, buf, pos)
                if eol == pos:
                    return b"".join(parts), buf[eol + 2 :]
                pos = eol + 2
        size += chunk
        if size > _MAX_CONTENT:
            raise _BadAnswer("answer too large")
        if len(buf) - pos < chunk + 2:
            buf = _read_more(recv, buf[pos:], chunk + 2)
            pos = 0
        parts.append(buf[pos : pos + chunk])
        if buf[pos + chunk : pos + chunk + 2] != b"\r\n":
            raise _BadAnswer("bad chunk")
        pos += chunk + 2


# ---------------------------------------------------------------------- error classification
def _connect_error(exc: BaseException) -> TransportError:
    """A failure to connect: the request surely was not sent."""
    if isinstance(exc, (urllib3.exceptions.NewConnectionError, ConnectionRefusedError)):
        return TransportError("connection_error", f"connection error ({_describe(exc)})", maybe_sent=False)
    if isinstance(exc, (urllib3.exceptions.ConnectTimeoutError, socket.timeout, TimeoutError)):
        return TransportError("timeout", f"connect timeout ({type(exc).__name__})", maybe_sent=False)
    if isinstance(exc, (ssl.SSLError, ssl.CertificateError, urllib3.exceptions.SSLError)):
        return TransportError("connection_error", f"TLS error ({type(exc).__name__})", maybe_sent=False)
    return TransportError("connection_error", f"connection error ({_describe(exc)})", maybe_sent=False)


def _urllib3_error(exc: BaseException) -> TransportError:
    """Classify what ``urlopen`` raised (retries are 0, reads never retried)."""
    reason: BaseException = exc
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        reason = exc.reason
    if isinstance(reason, urllib3.exceptions.ReadTimeoutError):
        return TransportError("timeout", "read timeout (ReadTimeoutError)", maybe_sent=True)
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        return TransportError("connection_error", f"connection error ({_describe(reason)})", maybe_sent=False)
    if isinstance(reason, urllib3.exceptions.ConnectTimeoutError):
        return TransportError("timeout", "connect timeout (ConnectTimeoutError)", maybe_sent=False)
    if isinstance(reason, (urllib3.exceptions.SSLError, ssl.SSLError)):
        return TransportError("connection_error", f"TLS error ({type(reason).__name__})", maybe_sent=False)
    if isinstance(reason, urllib3.exceptions.ProxyError):
        return TransportError("connection_error", "proxy error (ProxyError)", maybe_sent=not _refused(reason))
    if isinstance(reason, (urllib3.exceptions.ClosedPoolError, urllib3.exceptions.LocationValueError)):
        return TransportError(
            "connection_error", f"request error ({type(reason).__name__})", maybe_sent=False
        )
    return TransportError("connection_error", f"connection error ({_describe(reason)})", maybe_sent=True)


def _refused(exc: BaseException) -> bool:
    """True when the connection surely was not made (refused, DNS failure, unreachable)."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        cur = todo.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, (ConnectionRefusedError,)):
            return True
        name = type(cur).__name__
        if name in ("NewConnectionError", "NameResolutionError", "ConnectTimeoutError"):
            return True
        todo.extend([getattr(cur, "reason", None), cur.__cause__, cur.__context__])
        todo.extend(a for a in getattr(cur, "args", ()) if isinstance(a, BaseException))
    return False
