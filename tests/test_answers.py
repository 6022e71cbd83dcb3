"""Every transport path against a raw-socket server sending real and hostile answers.

The same expectations hold on the fast path (the library's own Session), the public ``urlopen``
path and a user's ``requests.Session``: early answers are read, ``timeout`` bounds the whole
request, odd framing is an error and the connection is never reused after it, informational
answers are skipped, and nothing but TransportError leaves ``request``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest
import requests
import requests.adapters

from cdp_batcher.destinations._http import Answer, HttpTransport, TransportError
from cdp_batcher.destinations._public import PoolTransport

from answer_server import OK, AnswerServer, Script, endless

pytestmark = pytest.mark.timeout(30)

HEADERS = {"Authorization": "secret-key-123", "Content-Type": "application/json"}
BODY = b'{"identifier":"u1","eventName":"e","properties":{}}'
PATHS = ("fast", "urlopen", "session")
#: Slack over the timeout for the whole-request deadline (a loaded 2-core machine).
SLACK = 1.5


class SmallSendBuffer(requests.adapters.HTTPAdapter):
    """An adapter whose sockets have a 16 KiB send buffer: an early answer shows on loopback."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["socket_options"] = [
            (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
            (socket.SOL_SOCKET, socket.SO_SNDBUF, 16384),
        ]
        super().init_poolmanager(*args, **kwargs)


Make = Callable[..., Any]


@pytest.fixture(params=PATHS)
def make(request: pytest.FixtureRequest) -> Iterator[Make]:
    """A factory of transports on the parametrized path (``small_send=True``: 16 KiB SO_SNDBUF)."""
    made: list[Any] = []
    sessions: list[requests.Session] = []

    def factory(*, small_send: bool = False) -> Any:
        adapter = SmallSendBuffer(max_retries=0) if small_send else None
        if request.param == "session":
            session = requests.Session()
            sessions.append(session)
            if adapter is not None:
                session.mount("http://", adapter)
            transport: Any = HttpTransport(session, pool_size=2)
        elif request.param == "fast":
            transport = HttpTransport(None, pool_size=2)
            if adapter is not None:
                transport.session.mount("http://", adapter)
        else:
            session = requests.Session()
            session.mount("http://", adapter or requests.adapters.HTTPAdapter(max_retries=0))
            transport = PoolTransport(session)
        made.append(transport)
        return transport

    yield factory
    for transport in made:
        transport.close()
    for session in sessions:
        session.close()


@pytest.fixture
def server() -> Iterator[AnswerServer]:
    with AnswerServer() as s:
        yield s


def post(transport: Any, url: str, body: bytes = BODY, timeout: float = 5.0) -> Answer:
    answer: Answer = transport.request("POST", url + "/v1/x", body=body, headers=HEADERS, timeout=timeout)
    return answer


def test_fast_path_is_chosen(server: AnswerServer) -> None:
    """The library's own Session takes the fast path after the capability check."""
    transport = HttpTransport(None, pool_size=2)
    assert transport.path == "unchosen"
    assert post(transport, server.url).ok
    assert transport.path == "fast"
    transport.close()


def test_plain_answer_and_keep_alive(make: Make, server: AnswerServer) -> None:
    """Two requests, two answers, one kept-alive connection."""
    transport = make()
    assert post(transport, server.url).ok and post(transport, server.url).ok
    assert server.connections == 1 and server.requests() == 2


def test_early_413_is_read(make: Make) -> None:
    """A server that answers 413 and closes while a 400 KB body is still being sent: the 413
    is the answer (not a reset), on a 16 KiB client send buffer."""
    with AnswerServer(rcvbuf=4096) as server:
        server.push(
            Script(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large",
                read_body=False,
                close=True,
            )
        )
        transport = make(small_send=True)
        answer = post(transport, server.url, body=b"x" * 400_000)
        assert answer.status == 413 and answer.content == b"too large"
        assert post(transport, server.url).ok  # a fresh connection afterwards
        assert server.connections == 2


@pytest.mark.parametrize(
    "script",
    [
        Script(endless(b"HTTP/1.1 200 OK\r\nX-Drip: "), drip=0.1, drip_after=10),
        Script(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100, drip=0.1, drip_after=40),
        Script(endless(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"1\r\nx\r\n"), drip=0.02),
        Script(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", drip=0.3),
    ],
    ids=["endless-header", "drip-body", "endless-chunks", "slow-head"],
)
def test_timeout_bounds_the_whole_request(make: Make, server: AnswerServer, script: Script) -> None:
    """A dripping server cannot hold a request past its timeout (connect + send + head + body)."""
    server.push(script)
    transport = make()
    start = time.monotonic()
    with pytest.raises(TransportError) as info:
        post(transport, server.url, timeout=1.0)
    elapsed = time.monotonic() - start
    assert info.value.reason == "timeout" and info.value.maybe_sent is True
    assert elapsed < 1.0 + SLACK, elapsed
    assert post(transport, server.url).ok


BAD = {
    "differing-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2, 7\r\n\r\n{}",
    "two-length-fields": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "negative-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\n{}\r\n0\r\n\r\n",
    "closed-without-head": b"",
    "not-http": b"HELLO 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    "short-body": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",
}


@pytest.mark.parametrize("raw", list(BAD.values()), ids=list(BAD))
def test_odd_answers_are_errors_and_never_reused(make: Make, server: AnswerServer, raw: bytes) -> None:
    """Odd framing is a TransportError (maybe sent: the server had the request), and the next
    request goes on a new connection."""
    server.push(Script(raw, close=True))
    transport = make()
    with pytest.raises(TransportError) as info:
        post(transport, server.url)
    assert info.value.reason == "connection_error" and info.value.maybe_sent is True
    assert "secret-key" not in str(info.value)
    assert post(transport, server.url).ok
    assert server.connections == 2


LENIENT = {
    "hex-prefix-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\n{}\r\n0\r\n\r\n",
    "plus-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+2\r\n{}\r\n0\r\n\r\n",
    "plus-length": b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n{}",
}


@pytest.mark.parametrize("raw", list(LENIENT.values()), ids=list(LENIENT))
def test_fast_path_refuses_what_lenient_parsers_take(server: AnswerServer, raw: bytes) -> None:
    """The fast path's reader: chunk sizes are hex digits only, lengths digits only (RFC 9112);
    on such an answer the connection is closed."""
    server.push(Script(raw))
    transport = HttpTransport(None, pool_size=2)
    with pytest.raises(TransportError, match="bad answer"):
        post(transport, server.url)
    assert post(transport, server.url).ok and server.connections == 2
    transport.close()


def test_same_length_twice_is_accepted(server: AnswerServer) -> None:
    """``Content-Length: 2, 2`` is one length (RFC 9112 6.3) on the fast path (http.client,
    under the public paths, takes the list as no length at all)."""
    server.push(Script(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n{}"))
    transport = HttpTransport(None, pool_size=2)
    assert post(transport, server.url).content == b"{}"
    transport.close()


@pytest.mark.parametrize("separately", [False, True], ids=["same-write", "own-write"])
def test_stray_bytes_after_the_body_are_never_misread(
    make: Make, server: AnswerServer, separately: bool
) -> None:
    """Bytes after the body: the answer counts and the next answer is not misread (the fast
    path closes the connection; http.client drops its read buffer with the answer)."""
    server.push(Script(OK, then=b"xx") if separately else Script(OK + b"xx"))
    transport = make()
    assert post(transport, server.url).content == b"{}"
    assert post(transport, server.url).content == b"{}"
    assert post(transport, server.url).content == b"{}"
    if isinstance(transport, HttpTransport) and transport.path == "fast" and not separately:
        assert server.connections == 2


@pytest.mark.parametrize(
    "informational",
    [
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
    ],
    ids=["103", "100-then-103"],
)
def test_informational_answers_are_skipped(make: Make, server: AnswerServer, informational: bytes) -> None:
    """1xx answers (Early Hints, Continue) are not the answer: the 201 after them is."""
    server.push(Script(informational + b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone"))
    transport = make()
    answer = post(transport, server.url)
    assert answer.status == 201 and answer.content == b"done"
    assert post(transport, server.url).ok


def test_http_10_answer_is_read_and_not_kept(make: Make, server: AnswerServer) -> None:
    """An HTTP/1.0 answer without keep-alive: read to its length, the connection closed after."""
    server.push(Script(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}"))
    transport = make()
    assert post(transport, server.url).ok
    assert post(transport, server.url).ok and server.connections == 2


def test_close_delimited_body(make: Make, server: AnswerServer) -> None:
    """No length: the body runs to the end of the connection."""
    server.push(Script(b"HTTP/1.1 500 Oops\r\nConnection: close\r\n\r\nbroken\r\nbackend", close=True))
    answer = post(make(), server.url)
    assert answer.status == 500 and answer.error_text() == "broken backend"


def test_refused_is_not_sent(make: Make) -> None:
    """Nothing listening: connection_error, surely not sent."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransportError) as info:
        post(make(), f"http://127.0.0.1:{port}")
    assert info.value.reason == "connection_error" and info.value.maybe_sent is False
