"""HTTP for the destinations: one :class:`HttpTransport`, whichever path it takes underneath.

The only place that chooses a path (``requests`` and ``urllib3`` live in this package only):

- a **user's Session**: :class:`~._public.SessionTransport` (``session.request`` every time);
- the **library's own Session**: :class:`~._fast.FastTransport` (one ``sendall`` and a small
  strict reader on the adapter's urllib3 pool: about a quarter of the CPU of ``urlopen``), when
  :func:`~._fast.capable` finds the internals it relies on at the first request; otherwise
  :class:`~._public.PoolTransport` (the pool's public ``urlopen``), or ``session.request`` when
  even the adapter's pool methods are missing — said once at INFO.

Every path: ``timeout`` bounds the whole request (connect, send, head and body); redirects are
never followed (credentials never go to another host); an answer the server sent before it
stopped reading the body (an early 413) is read; and nothing but :class:`TransportError`
leaves ``request``, sorted by :data:`~._transport.ERRORS` into a reason and whether the server
may have received the request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Optional, Union

import requests
import requests.adapters

from ._fast import FastTransport, capable
from ._public import PoolTransport, SessionTransport
from ._transport import Answer, Transport, TransportError, classify

__all__ = ["Answer", "HttpTransport", "Transport", "TransportError"]

logger = logging.getLogger("cdp_batcher")

_fallback_logged = False
_fallback_lock = threading.Lock()


class HttpTransport:
    """POST/GET within a whole-request timeout on one pooled Session (the user's or our own)."""

    def __init__(self, session: Optional[requests.Session], *, pool_size: int) -> None:
        self._own = session is None
        self._pool_size = pool_size
        self.session = session if session is not None else self._new_session()
        self._path: Optional[Transport] = None if self._own else SessionTransport(self.session)

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=4, pool_maxsize=max(self._pool_size, 10), max_retries=0, pool_block=False
        )
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

    @property
    def path(self) -> str:
        """Which path requests take: ``fast``, ``urlopen``, ``session`` (``unchosen`` before the first)."""
        path = self._path
        if path is None:
            return "unchosen"
        return {FastTransport: "fast", PoolTransport: "urlopen"}.get(type(path), "session")

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

        ``timeout`` bounds the whole request. ``headers`` is treated as immutable: on the fast
        path the request head is encoded once per (URL, method, headers object, auth).
        """
        path = self._path or self._choose(url)
        try:
            return path.request(method, url, body=body, headers=headers, timeout=timeout, auth=auth)
        except TransportError:
            raise
        except Exception as exc:  # a path's own bug must not leave the transport either
            raise classify(exc, sent=True) from None

    @property
    def groups(self) -> bool:
        """Whether :meth:`request_group` sends a group at once (the fast path, once chosen)."""
        return isinstance(self._path, FastTransport)

    def request_group(
        self,
        method: str,
        requests_: Sequence[tuple[str, Optional[bytes]]],
        *,
        headers: Mapping[str, str],
        timeout: float,
    ) -> list[Union[Answer, TransportError]]:
        """Several requests (URL, body), each its answer or its TransportError, in order.

        On the fast path (:attr:`groups`) they are all sent on kept-alive connections before
        their answers are read (:meth:`FastTransport.request_group`), ``timeout`` counting from
        now for each; otherwise one after the other, each with its own ``timeout``.
        """
        path = self._path
        if isinstance(path, FastTransport):
            try:
                return path.request_group(method, requests_, headers=headers, timeout=timeout)
            except TransportError as exc:
                return [exc] * len(requests_)
            except Exception as exc:  # a path's own bug must not leave the transport either
                return [classify(exc, sent=True)] * len(requests_)
        results: list[Union[Answer, TransportError]] = []
        for url, body in requests_:
            try:
                results.append(self.request(method, url, body=body, headers=headers, timeout=timeout))
            except TransportError as exc:
                results.append(exc)
        return results

    def _choose(self, url: str) -> Transport:
        """The capability check, at the first request: the fast path, else a public one."""
        try:
            missing = capable(self.session, url)
        except Exception as exc:
            missing = f"the check raised {type(exc).__name__}"
        path: Transport
        if missing is None:
            path = FastTransport(self.session)
        else:
            adapter = self.session.get_adapter(url) if url else None
            if callable(getattr(adapter, "get_connection_with_tls_context", None)):
                path = PoolTransport(self.session)
            else:
                path = SessionTransport(self.session, own=True)
            _log_fallback(missing, path)
        self._path = path
        return path

    # ----------------------------------------------------------------------------- lifecycle
    def after_fork(self) -> None:
        """Forget the parent's connections (a user's Session is the user's to manage)."""
        if self._own:
            self.session = self._new_session()
            self._path = None
        else:
            for adapter in self.session.adapters.values():
                adapter.close()

    def close(self) -> None:
        """Close the library's own Session's pools (a user's Session stays open)."""
        path = self._path
        if self._own and path is not None:
            path.close()
        elif self._own:
            self.session.close()


def _log_fallback(missing: str, path: Transport) -> None:
    global _fallback_logged
    with _fallback_lock:
        if _fallback_logged:
            return
        _fallback_logged = True
    logger.info(
        "cdp_batcher: HTTP fast path unavailable (%s not as expected with requests %s); using %s",
        missing,
        requests.__version__,
        type(path).__name__,
    )
