"""HTTP for the destinations, on a pooled keep-alive ``requests`` Session.

The only module that imports ``requests``. Requests never follow redirects (a redirect is an
answer like any non-2xx), so credentials are never sent to another host. Errors are sorted by
whether the request could have reached the server (for non-idempotent sends).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Optional

import requests
import requests.adapters

from .._retry import parse_retry_after

__all__ = ["Answer", "HttpTransport", "TransportError"]

#: How much of an error answer is kept for messages (never request bodies).
_MAX_ERROR_TEXT = 300


@dataclasses.dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, Retry-After in seconds (if any) and the body."""

    status: int
    retry_after: Optional[float]
    content: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def error_text(self) -> str:
        text = self.content[:_MAX_ERROR_TEXT].decode("utf-8", "replace").strip()
        return text.replace("\n", " ")


class TransportError(Exception):
    """No HTTP answer. ``reason`` is ``connection_error`` or ``timeout``; ``maybe_sent`` tells whether
    the server may have received the request (read timeout, reset after sending)."""

    def __init__(self, reason: str, message: str, *, maybe_sent: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.maybe_sent = maybe_sent


def _describe(exc: BaseException) -> str:
    """A short cause without URLs' query strings or bodies."""
    name = type(exc).__name__
    inner: Any = exc.args[0] if exc.args else None
    reason = getattr(inner, "reason", None)
    if reason is not None:
        return f"{name}: {type(reason).__name__}"
    return name


class HttpTransport:
    """POST/GET with per-request timeouts on one pooled Session (the user's or our own)."""

    def __init__(self, session: Optional[requests.Session], *, pool_size: int) -> None:
        self._own = session is None
        self._pool_size = pool_size
        self.session = session if session is not None else self._new_session()

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

    def after_fork(self) -> None:
        """Forget the parent's connections (a user's Session is the user's to manage)."""
        if self._own:
            self.session = self._new_session()
        else:
            for adapter in self.session.adapters.values():
                adapter.close()

    def close(self) -> None:
        if self._own:
            self.session.close()


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
