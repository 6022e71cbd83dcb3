"""The public path: urllib3's ``urlopen`` on the adapter's pool, or a user's ``requests.Session``.

- :class:`SessionTransport` sends through ``session.request(...)`` every time: its adapters,
  auth, hooks, cookies, verify, cert and proxies (its own and the environment's) all apply.
- :class:`PoolTransport` sends on the library's own Session through the pool its adapter gives
  for the URL (``get_connection_with_tls_context``, ``cert_verify``, ``request_url``: the public
  methods requests documents for adapter subclasses) with the pool's public ``urlopen``. The fast
  path uses it for proxied URLs, and falls back to it when its internals are not as expected.

Both bound the whole request by its deadline with :data:`._deadline.WATCHDOG`, never follow a
redirect, skip informational answers (a 103 Early Hints is not the answer), treat a 407 as the
proxy's error, and raise nothing but :class:`~._transport.TransportError`.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Mapping
from typing import Any, Optional

import requests
import requests.structures
import requests.utils
import urllib3

from .._retry import parse_retry_after
from ._deadline import WATCHDOG
from ._reader import read_answer
from ._transport import (
    Answer,
    BadAnswer,
    DeadlinePassed,
    classify,
    proxy_auth_error,
)

__all__ = ["PoolTransport", "SessionTransport"]

_MAX_CACHED = 64
_clock = time.monotonic


def _proxy_for(session: requests.Session, url: str) -> Optional[str]:
    """The proxy a Session would use for ``url`` (its own proxies, then the environment's)."""
    try:
        proxies = dict(session.proxies or {})
        settings = session.merge_environment_settings(url, proxies, None, None, None)
        proxy: Optional[str] = requests.utils.select_proxy(url, settings.get("proxies") or {})
        return proxy
    except Exception:
        return None


def _final_answer(raw: Any, head_only: bool) -> tuple[int, Optional[str], bytes]:
    """After an informational answer, read the real one from the same connection's buffer."""
    fp = getattr(getattr(raw, "_fp", None), "fp", None)
    read1 = getattr(fp, "read1", None)
    if read1 is None:
        raise BadAnswer("informational answer, and its connection's buffer cannot be read")
    status, retry_after, content, _ = read_answer(read1, head_only)
    return status, retry_after, content


def _answer(status: int, retry_after: Optional[str], content: bytes) -> Answer:
    if retry_after is not None or status in (429, 503):
        return Answer(status, parse_retry_after(retry_after), content)
    return Answer(status, None, content)


class PoolTransport:
    """Requests through the adapter's urllib3 pool with ``urlopen`` (library's own Session)."""

    def __init__(self, session: requests.Session) -> None:
        self.session = session
        self._lanes: dict[str, tuple[Any, str, Optional[str]]] = {}
        self._timeouts: dict[float, urllib3.Timeout] = {}

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
        deadline = _clock() + timeout
        lane = self._lanes.get(url) or self._resolve(url)
        merged = requests.structures.CaseInsensitiveDict(self.session.headers)
        merged.update(headers)
        merged["Accept-Encoding"] = "identity"
        if auth is not None:
            pair = f"{auth[0]}:{auth[1]}".encode("latin-1")
            merged["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        clean = {k: v for k, v in merged.items() if v is not None}
        return self.send_pool(lane[0], lane[1], method, body, clean, deadline, proxy=lane[2])

    def _resolve(self, url: str) -> tuple[Any, str, Optional[str]]:
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
        except Exception as exc:
            raise classify(exc, sent=False) from None
        if len(self._lanes) >= _MAX_CACHED:
            self._lanes = {}
        lane = (pool, target, proxy)
        self._lanes[url] = lane
        return lane

    def send_pool(
        self,
        pool: Any,
        target: str,
        method: str,
        body: Optional[bytes],
        headers: Mapping[str, Any],
        deadline: float,
        *,
        proxy: Optional[str],
    ) -> Answer:
        """One request with the pool's ``urlopen``, bounded by ``deadline`` (a monotonic time)."""
        left = deadline - _clock()
        if left <= 0:
            raise classify(DeadlinePassed(), sent=False)
        response: Any = None
        with WATCHDOG.guard(deadline) as guard:
            try:
                response = pool.urlopen(
                    method=method,
                    url=target,
                    body=body,
                    headers=dict(headers),
                    redirect=False,
                    assert_same_host=False,
                    preload_content=False,
                    decode_content=False,
                    retries=urllib3.Retry(0, read=False, redirect=False),
                    timeout=urllib3.Timeout(connect=left, read=left),
                )
                status = int(response.status)
                if 100 <= status < 200:
                    status, retry_text, content = _final_answer(response, method == "HEAD")
                    response.close()
                else:
                    retry_text = response.headers.get("Retry-After")
                    content = bytes(response.read() or b"")
            except Exception as exc:
                if response is not None:
                    _close(response)
                if guard.late or _clock() >= deadline:
                    raise classify(DeadlinePassed(), sent=True) from None
                raise classify(exc, sent=True, proxy=proxy) from None
            finally:
                if response is not None:
                    response.release_conn()
        if guard.late:  # cut short: whatever came is not the answer
            raise classify(DeadlinePassed(), sent=True)
        if status == 407 and proxy:
            raise proxy_auth_error(proxy)
        return _answer(status, retry_text, content)

    def close(self) -> None:
        self.session.close()
        self._lanes = {}


def _whole(raw: Any) -> None:
    """A streamed read (requests' ``.content``) that ended before the Content-Length did is an
    error: urllib3 2 raises it itself, urllib3 1.26 (``enforce_content_length`` off) returns the
    short body as if whole. ``length_remaining`` counts the bytes on the wire, before decoding."""
    left = getattr(raw, "length_remaining", None)
    if isinstance(left, int) and left > 0:
        raise BadAnswer("closed mid-answer (shorter than its Content-Length)")


def _close(response: Any) -> None:
    with contextlib.suppress(Exception):
        response.close()


class SessionTransport:
    """Requests through ``session.request`` (a user's Session: everything it configures applies)."""

    def __init__(self, session: requests.Session, *, own: bool = False) -> None:
        self.session = session
        self._own = own

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
        deadline = _clock() + timeout
        response: Any = None
        with WATCHDOG.guard(deadline) as guard:
            try:
                response = self.session.request(
                    method,
                    url,
                    data=body,
                    headers=dict(headers),
                    timeout=timeout,
                    allow_redirects=False,
                    auth=auth,
                    stream=True,
                )
                status = int(response.status_code)
                if 100 <= status < 200:
                    status, retry_text, content = _final_answer(response.raw, method == "HEAD")
                else:
                    retry_text = response.headers.get("Retry-After")
                    content = response.content
                    _whole(response.raw)
            except Exception as exc:
                if guard.late or _clock() >= deadline:
                    raise classify(DeadlinePassed(), sent=True) from None
                raise classify(exc, sent=True, proxy=_proxy_for(self.session, url)) from None
            finally:
                if response is not None:
                    _close(response)
        if guard.late:  # cut short: whatever came is not the answer
            raise classify(DeadlinePassed(), sent=True)
        if status == 407:  # only a proxy sends 407
            raise proxy_auth_error(_proxy_for(self.session, url))
        return _answer(status, retry_text, content)

    def close(self) -> None:
        """Close the Session only when it is the library's own (a user's stays open)."""
        if self._own:
            self.session.close()
