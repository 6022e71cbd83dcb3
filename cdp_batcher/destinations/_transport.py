"""The transport interface the destinations see: one method plus ``close``, an answer, an error.

A :class:`Transport` sends one request and returns an :class:`Answer`, or raises
:class:`TransportError` when no answer came. Nothing else leaves ``request``: every exception
of every path is sorted by one table, :data:`ERRORS`, into a reason and whether the server may
have received the request.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
from collections.abc import Iterator, Mapping
from typing import Optional, Protocol
from urllib.parse import urlsplit

import requests.exceptions
import urllib3.exceptions

__all__ = [
    "ERRORS",
    "PERMANENT_REASONS",
    "Answer",
    "BadAnswer",
    "DeadlinePassed",
    "Transport",
    "TransportError",
    "classify",
    "clean_text",
    "proxy_name",
]

#: How much of an error answer is kept for messages (never request bodies).
MAX_ERROR_TEXT = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_SPACES = re.compile(r"\s{2,}")
_TUNNEL_STATUS = re.compile(r"Tunnel connection failed: (\d{3})")

#: Reasons that retrying will not heal: the send fails at once (the next host may still be tried).
PERMANENT_REASONS = frozenset({"certificate_error", "proxy_auth"})

CA_HINT = (
    "the server's certificate is not trusted: point REQUESTS_CA_BUNDLE (or CURL_CA_BUNDLE) at a CA "
    "bundle that signs it; not retried"
)


def clean_text(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    """One line of printable text: control characters (``\\r``, ``\\t``, NUL ...) become spaces."""
    return _SPACES.sub(" ", _CONTROL.sub(" ", text[: limit * 2])).strip()[:limit]


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
        """The start of the body as one clean line (for error messages)."""
        return clean_text(self.content[: MAX_ERROR_TEXT * 2].decode("utf-8", "replace"))

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
    """No HTTP answer. ``reason`` is ``connection_error``, ``timeout``, ``certificate_error``,
    ``proxy_error`` or ``proxy_auth``; ``maybe_sent`` tells whether the server may have received
    the request (read timeout, reset after sending); ``permanent`` that retrying will not help."""

    def __init__(self, reason: str, message: str, *, maybe_sent: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.maybe_sent = maybe_sent

    @property
    def permanent(self) -> bool:
        return self.reason in PERMANENT_REASONS


class BadAnswer(Exception):
    """The server's bytes are not an HTTP/1.x answer we accept (or it closed mid-answer)."""


class DeadlinePassed(Exception):
    """The whole request took longer than its timeout."""


class Transport(Protocol):
    """What a destination sends through: one method plus ``close``."""

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
        """Send one request; the answer, or :class:`TransportError`. ``timeout`` bounds it whole."""

    def close(self) -> None: ...


# ---------------------------------------------------------------------------- the error table
#: Every exception any path raises, first match wins, looked for along the exception's causes:
#: (class, reason, may the server have received the request, what to say). ``None`` for "may
#: have been received" means: it depends on whether sending had started (the caller knows).
ERRORS: tuple[tuple[type[BaseException], str, Optional[bool], str], ...] = (
    (DeadlinePassed, "timeout", True, "the whole request took longer than its timeout"),
    (ssl.SSLCertVerificationError, "certificate_error", False, "certificate verify failed"),
    (ssl.CertificateError, "certificate_error", False, "certificate verify failed"),
    (urllib3.exceptions.ProxyError, "proxy_error", False, "proxy error"),
    (requests.exceptions.ProxyError, "proxy_error", False, "proxy error"),
    (urllib3.exceptions.NameResolutionError, "connection_error", False, "name resolution failed"),
    (urllib3.exceptions.NewConnectionError, "connection_error", False, "connection refused"),
    (ConnectionRefusedError, "connection_error", False, "connection refused"),
    (urllib3.exceptions.ConnectTimeoutError, "timeout", False, "connect timeout"),
    (requests.exceptions.ConnectTimeout, "timeout", False, "connect timeout"),
    (urllib3.exceptions.ReadTimeoutError, "timeout", True, "read timeout"),
    (requests.exceptions.ReadTimeout, "timeout", True, "read timeout"),
    (socket.timeout, "timeout", None, "timeout"),
    (TimeoutError, "timeout", None, "timeout"),
    (urllib3.exceptions.ClosedPoolError, "connection_error", False, "request error"),
    (urllib3.exceptions.LocationValueError, "connection_error", False, "request error"),
    (requests.exceptions.InvalidURL, "connection_error", False, "request error"),
    (urllib3.exceptions.InvalidHeader, "connection_error", True, "bad answer"),
    (requests.exceptions.InvalidHeader, "connection_error", False, "request error"),
    (ssl.SSLError, "connection_error", None, "TLS error"),
    (urllib3.exceptions.SSLError, "connection_error", None, "TLS error"),
    (BadAnswer, "connection_error", True, "bad answer"),
    (urllib3.exceptions.ProtocolError, "connection_error", True, "bad answer or connection lost"),
    (urllib3.exceptions.DecodeError, "connection_error", True, "bad answer"),
    (http.client.HTTPException, "connection_error", True, "bad answer"),
    (requests.exceptions.ChunkedEncodingError, "connection_error", True, "bad answer"),
    (requests.exceptions.ContentDecodingError, "connection_error", True, "bad answer"),
    (OSError, "connection_error", None, "connection error"),
    (urllib3.exceptions.HTTPError, "connection_error", True, "connection error"),
    (requests.exceptions.RequestException, "connection_error", True, "request error"),
    (Exception, "connection_error", True, "unexpected error"),
)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it wraps: ``reason``, exception arguments, ``__cause__``, ``__context__``."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        cur = todo.pop(0)
        if not isinstance(cur, BaseException) or id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        todo.append(getattr(cur, "reason", None))
        todo.extend(a for a in cur.args if isinstance(a, BaseException))
        todo.extend((cur.__cause__, cur.__context__))


def classify(exc: BaseException, *, sent: bool, proxy: Optional[str] = None) -> TransportError:
    """The :class:`TransportError` for ``exc``. ``sent``: whether sending had started (used
    where the table says it depends). ``proxy``: the proxy URL in use, named in proxy errors."""
    if isinstance(exc, TransportError):
        return exc
    chain = list(_causes(exc))
    for cls, reason, maybe_sent, text in ERRORS:
        hit = next((c for c in chain if isinstance(c, cls)), None)
        if hit is None:
            continue
        received = sent if maybe_sent is None else maybe_sent
        if reason == "certificate_error":
            return TransportError(reason, f"{text} ({CA_HINT})", maybe_sent=False)
        if reason == "proxy_error":
            return _proxy_error(chain, proxy)
        return TransportError(reason, f"{text} ({_name(hit, chain)})", maybe_sent=received)
    raise AssertionError("unreachable: Exception is the last row")  # pragma: no cover


def _name(hit: BaseException, chain: list[BaseException]) -> str:
    """Exception type names, outermost first, without messages (they may hold URLs)."""
    names: list[str] = []
    for cur in (chain[0], hit, chain[-1]):
        name = type(cur).__name__
        if name not in names:
            names.append(name)
    return ": ".join(names)


def _proxy_error(chain: list[BaseException], proxy: Optional[str]) -> TransportError:
    """A proxy refused, failed the CONNECT tunnel, or asked for credentials (407)."""
    where = f"proxy {proxy_name(proxy)}" if proxy else "the proxy"
    for cur in chain:
        found = _TUNNEL_STATUS.search(str(cur.args[0]) if cur.args else "")
        if found:
            status = int(found.group(1))
            if status == 407:
                return proxy_auth_error(proxy)
            return TransportError(
                "proxy_error",
                f"{where} failed the CONNECT tunnel (HTTP {status} {http.client.responses.get(status, '')})".rstrip(),
                maybe_sent=False,
            )
    names = ": ".join(dict.fromkeys(type(c).__name__ for c in chain))
    return TransportError("proxy_error", f"{where} could not be used ({names})", maybe_sent=False)


def proxy_auth_error(proxy: Optional[str]) -> TransportError:
    """The proxy answered 407: its credentials are missing or wrong (never retried)."""
    where = f"proxy {proxy_name(proxy)}" if proxy else "the proxy"
    return TransportError(
        "proxy_auth",
        f"{where} answered HTTP 407 Proxy Authentication Required: check the user and password in "
        "HTTPS_PROXY / HTTP_PROXY (or the Session's proxies); not retried",
        maybe_sent=False,
    )


def proxy_name(proxy: Optional[str]) -> str:
    """A proxy URL as scheme://host:port: never its user or password."""
    if not proxy:
        return ""
    try:
        parts = urlsplit(proxy if "://" in proxy else "http://" + proxy)
        host = parts.hostname or "?"
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable proxy URL>"
    return f"{parts.scheme}://{host}{port}"
