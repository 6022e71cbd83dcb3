"""Tests of destinations._http.HttpTransport against a real 127.0.0.1 server (the Collector)."""

from __future__ import annotations

import errno
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any, Optional

import pytest
import requests
import requests.adapters

from cdp_batcher.destinations import _fast
from cdp_batcher.destinations._fast import FastTransport
from cdp_batcher.destinations._http import Answer, HttpTransport, TransportError
from cdp_batcher.destinations._reader import read_answer
from cdp_batcher.destinations._transport import BadAnswer, classify
from cdp_batcher.testing import Collector

pytestmark = pytest.mark.timeout(30)

API_KEY = "secret-key-123"
HEADERS = {"Authorization": API_KEY, "Content-Type": "application/json"}
BODY = b'{"identifier":"user123","eventName":"purchase_completed","properties":{"amount":99.99}}'
TRACK = "/v1/persons/track"


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector(api_key=API_KEY) as c:
        yield c


@pytest.fixture
def own() -> Iterator[HttpTransport]:
    transport = HttpTransport(None, pool_size=4)
    yield transport
    transport.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------- the library's own Session
def test_post_delivers_with_headers_and_body(collector: Collector, own: HttpTransport) -> None:
    """A POST arrives with the caller's headers, a Content-Length and the exact body."""
    answer = own.request("POST", collector.url + TRACK, body=BODY, headers=HEADERS, timeout=5)
    assert answer.ok and answer.status == 200
    (req,) = collector.requests
    assert req.method == "POST" and req.path == TRACK and req.body == BODY
    assert req.header("Authorization") == API_KEY
    assert req.header("Content-Length") == str(len(BODY))
    assert req.header("Host") == f"127.0.0.1:{collector.port}"


def test_keep_alive_reuses_one_connection(collector: Collector, own: HttpTransport) -> None:
    """Sequential requests share one pooled keep-alive connection."""
    for _ in range(5):
        assert own.request("POST", collector.url + TRACK, body=BODY, headers=HEADERS, timeout=5).ok
    assert collector.count() == 5
    assert own._path._lanes[collector.url + TRACK].pool.num_connections == 1


def test_get_without_body(collector: Collector, own: HttpTransport) -> None:
    """A GET carries no body and no Content-Length."""
    answer = own.request("GET", collector.url + "/v1/health/ping", body=None, headers=HEADERS, timeout=5)
    assert answer.ok
    (req,) = collector.requests
    assert req.method == "GET" and req.body == b"" and req.header("Content-Length") is None


def test_basic_auth_argument(collector: Collector, own: HttpTransport) -> None:
    """``auth=(user, password)`` becomes a Basic Authorization header."""
    own.request(
        "POST",
        collector.url + "/api/v2/batch",
        body=b'{"batch":[]}',
        headers={"Content-Type": "application/json"},
        timeout=5,
        auth=("site", "cio-key"),
    )
    (req,) = collector.requests
    assert req.header("Authorization") == "Basic c2l0ZTpjaW8ta2V5"


def test_each_headers_mapping_gets_its_own_head(collector: Collector, own: HttpTransport) -> None:
    """Heads are cached per headers object: another mapping for the same URL sends its own values."""
    url = collector.url + TRACK
    own.request("POST", url, body=BODY, headers=HEADERS, timeout=5)
    own.request("POST", url, body=BODY, headers={**HEADERS, "X-Extra": "1"}, timeout=5)
    first, second = collector.requests
    assert first.header("X-Extra") is None and second.header("X-Extra") == "1"


def test_header_injection_is_refused(collector: Collector, own: HttpTransport) -> None:
    """A header value with CR/LF is refused before anything is sent."""
    with pytest.raises(TransportError) as info:
        own.request("POST", collector.url + TRACK, body=BODY, headers={"X-Bad": "a\r\nX-Evil: 1"}, timeout=5)
    assert info.value.maybe_sent is False
    assert collector.requests == []


def test_error_status_and_retry_after(collector: Collector, own: HttpTransport) -> None:
    """Non-2xx answers come back as answers; Retry-After is parsed on 429."""
    collector.rate_limit_next(1, retry_after="7")
    answer = own.request("POST", collector.url + TRACK, body=BODY, headers=HEADERS, timeout=5)
    assert answer.status == 429 and not answer.ok and answer.retry_after == 7.0
    collector.fail_next(1, 500)
    answer = own.request("POST", collector.url + TRACK, body=BODY, headers=HEADERS, timeout=5)
    assert answer.status == 500 and answer.retry_after is None and b"injected fault" in answer.content


def test_redirect_is_not_followed(collector: Collector, own: HttpTransport) -> None:
    """A 3xx is returned as is: the Location is never requested (credentials stay put)."""
    collector.fail_next(1, 307, headers={"Location": collector.url + "/elsewhere"})
    answer = own.request("POST", collector.url + TRACK, body=BODY, headers=HEADERS, timeout=5)
    assert answer.status == 307
    assert [r.path for r in collector.requests] == [TRACK]


def _assert_times_out(collector: Collector, own: HttpTransport, timeout: float) -> None:
    """An answer 2 s late ends the request as ``timeout``, maybe sent, within about ``timeout``."""
    collector.set_latency(2.0)
    start = time.monotonic()
    with pytest.raises(TransportError) as info:
        own.request("POST", collector.url + TRACK, body=BODY, headers=HEADERS, timeout=timeout)
    assert time.monotonic() - start < 1.5
    assert info.value.reason == "timeout" and info.value.maybe_sent is True


def test_read_timeout_maybe_sent(collector: Collector, own: HttpTransport) -> None:
    """A read timeout is ``timeout`` and the server may have the request."""
    _assert_times_out(collector, own, 0.2)


def test_connection_refused_not_sent(own: HttpTransport) -> None:
    """Nothing listening: ``connection_error`` and surely not sent."""
    url = f"http://127.0.0.1:{_closed_port()}{TRACK}"
    with pytest.raises(TransportError) as info:
        own.request("POST", url, body=BODY, headers=HEADERS, timeout=2)
    assert info.value.reason == "connection_error" and info.value.maybe_sent is False
    assert API_KEY not in str(info.value) and "purchase" not in str(info.value)


def test_reset_after_sending_maybe_sent(collector: Collector, own: HttpTransport) -> None:
    """A connection reset after the request was read: ``connection_error``, maybe sent; the next
    request opens a new connection and succeeds."""
    collector.drop_next(1)
    with pytest.raises(TransportError) as info:
        own.request("POST", collector.url + TRACK, body=BODY, headers=HEADERS, timeout=5)
    assert info.value.reason == "connection_error" and info.value.maybe_sent is True
    assert API_KEY not in str(info.value) and "purchase" not in str(info.value)
    assert own.request("POST", collector.url + TRACK, body=BODY, headers=HEADERS, timeout=5).ok


def test_server_restart_between_requests(collector: Collector, own: HttpTransport) -> None:
    """A pooled connection the server closed is detected and replaced before sending."""
    assert own.request("POST", collector.url + TRACK, body=BODY, headers=HEADERS, timeout=5).ok
    collector.go_down()
    collector.come_back()
    assert own.request("POST", collector.url + TRACK, body=BODY, headers=HEADERS, timeout=5).ok


def test_close_then_use_again(collector: Collector, own: HttpTransport) -> None:
    """close() drops the pools; a later request opens new ones (a sender may still send)."""
    assert own.request("POST", collector.url + TRACK, body=BODY, headers=HEADERS, timeout=5).ok
    own.close()
    assert own.request("POST", collector.url + TRACK, body=BODY, headers=HEADERS, timeout=5).ok
    own.after_fork()
    assert own.request("POST", collector.url + TRACK, body=BODY, headers=HEADERS, timeout=5).ok


def test_pool_closed_during_the_check_keeps_the_fast_path(
    collector: Collector, own: HttpTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another first request made a pool for the same key at the same moment and the PoolManager
    closed the one the check holds (urllib3 1.x under gevent): the check asks again, the fast
    path stays chosen."""
    real = _fast._pool
    closed: list[Any] = []

    def evicted_once(session: requests.Session, url: str) -> Any:
        pool = real(session, url)
        if not closed:  # evicted: closed and out of the manager, as a newer pool replaced it
            session.get_adapter(url).poolmanager.clear()
            if pool.pool is not None:  # clear() closed it on some urllib3 versions (twice raises on 1.21)
                pool.close()
            closed.append(pool)
        return pool

    monkeypatch.setattr(_fast, "_pool", evicted_once)
    assert own.request("POST", collector.url + TRACK, body=BODY, headers=HEADERS, timeout=5).ok
    assert closed and own.path == "fast"
    assert collector.count() == 1


def test_concurrent_requests(collector: Collector, own: HttpTransport) -> None:
    """Several threads share the transport; every request is delivered once."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                assert own.request("POST", collector.url + TRACK, body=BODY, headers=HEADERS, timeout=5).ok
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, name="cdp_batcher-test") for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors and collector.count() == 80


def test_kept_connections_are_bounded_and_closed_with_the_transport(
    collector: Collector, own: HttpTransport
) -> None:
    """Kept-alive connections wait in the lane (at most the pool's size, the rest go back to
    the pool) and are reused; close() closes every one of them."""
    test_concurrent_requests(collector, own)  # 4 threads x 20 requests
    lane = own._path._lanes[collector.url + TRACK]
    kept = list(lane.idle)
    assert 1 <= len(kept) <= lane.keep == lane.pool.pool.maxsize
    assert all(conn.sock is not None for conn in kept)
    assert own.request("POST", collector.url + TRACK, body=BODY, headers=HEADERS, timeout=5).ok
    assert lane.idle[-1] is kept[-1]  # the last one kept was taken and given back
    own.close()
    assert not lane.idle and all(conn.sock is None for conn in kept)


def test_a_kept_connection_with_bytes_waiting_is_not_used(collector: Collector, own: HttpTransport) -> None:
    """A kept connection that has something to read before a request (the server closed it,
    or wrote unasked) is closed, and the request goes on a new connection."""
    assert own.request("POST", collector.url + TRACK, body=BODY, headers=HEADERS, timeout=5).ok
    lane = own._path._lanes[collector.url + TRACK]
    (stale,) = lane.idle
    peer = stale.sock
    collector.go_down()  # closes the server's side: EOF waits in the kept socket
    collector.come_back()
    select.select([peer], [], [], 5.0)  # the cut reaches the socket (bounded wait, no sleep)
    assert _fast._readable(peer)
    assert own.request("POST", collector.url + TRACK, body=BODY, headers=HEADERS, timeout=5).ok
    assert peer.fileno() == -1  # closed, not sent on
    assert collector.count() == 2


@pytest.mark.skipif(not _fast._KERNEL_TIMEOUTS, reason="kernel socket timeouts are used on Linux only")
def test_a_kept_plain_socket_is_blocking_with_kernel_timeouts(
    collector: Collector, own: HttpTransport
) -> None:
    """On Linux a kept plain socket is blocking (no poll before each send and recv) with both
    kernel timeouts at the request's timeout; a slow answer on it still ends as ``timeout``
    (maybe sent) within about that timeout, and the next request opens a connection and works."""
    assert own.request("POST", collector.url + TRACK, body=BODY, headers=HEADERS, timeout=0.4).ok
    lane = own._path._lanes[collector.url + TRACK]
    (conn,) = lane.idle
    sock = conn.sock
    assert sock.gettimeout() is None
    for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
        seconds, micros = struct.unpack("ll", sock.getsockopt(socket.SOL_SOCKET, option, 16))
        assert 0.39 <= seconds + micros / 1e6 <= 0.41
    _assert_times_out(collector, own, 0.3)
    assert sock.fileno() == -1  # a connection that timed out is never used again
    collector.set_latency(0)
    assert own.request("POST", collector.url + TRACK, body=BODY, headers=HEADERS, timeout=5).ok


def test_a_large_body_goes_in_slices_and_the_next_request_is_blocking_again(
    collector: Collector, own: HttpTransport
) -> None:
    """A request past one send (64 KiB) goes in slices under the socket's own timeout; the body
    arrives whole, and the next small request on the same connection has the kernel's timeouts
    again (blocking where they are used)."""
    big = b'{"identifier":"user123","eventName":"big","properties":{"blob":"%s"}}' % (b"x" * 300_000)
    assert own.request("POST", collector.url + TRACK, body=big, headers=HEADERS, timeout=5).ok
    lane = own._path._lanes[collector.url + TRACK]
    (conn,) = lane.idle
    assert conn.sock.gettimeout() is not None  # left in the socket's own timeout by the slices
    assert own.request("POST", collector.url + TRACK, body=BODY, headers=HEADERS, timeout=5).ok
    assert lane.idle == [conn]
    assert (conn.sock.gettimeout() is None) == _fast._KERNEL_TIMEOUTS
    assert [r.body for r in collector.requests] == [big, BODY]


def test_a_kernel_timeout_is_a_timeout() -> None:
    """A blocking socket's kernel timeout ends the call with EAGAIN (BlockingIOError); within
    the slack it can come just before the deadline, and is then classified as ``timeout``
    (maybe sent), not as a lost connection."""
    error = classify(
        _fast._timed_out(BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")), sent=True
    )
    assert error.reason == "timeout" and error.maybe_sent is True
    other = ConnectionResetError(errno.ECONNRESET, "reset")
    assert _fast._timed_out(other) is other


def test_a_kept_socket_handed_to_urllib3_works_there(collector: Collector, own: HttpTransport) -> None:
    """A connection the fast path used (blocking, kernel timeouts) and gave to its pool is used
    by urllib3's own urlopen as any other: urllib3 sets the socket's timeout again."""
    assert own.request("POST", collector.url + TRACK, body=BODY, headers=HEADERS, timeout=5).ok
    lane = own._path._lanes[collector.url + TRACK]
    (conn,) = lane.idle
    lane.idle.clear()
    lane.pool._put_conn(conn)
    answer = lane.pool.urlopen("POST", TRACK, body=BODY, headers=HEADERS, retries=False, timeout=5)
    assert answer.status == 200
    assert collector.count() == 2


def test_environment_proxy_is_honoured(
    collector: Collector, own: HttpTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY from the environment is resolved for the library's own Session: a request to a
    host that does not exist reaches the (loopback) proxy, with the absolute URL as target."""
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", collector.url)
    monkeypatch.setenv("http_proxy", collector.url)
    url = "http://gateway.example.invalid" + TRACK
    answer = own.request("POST", url, body=BODY, headers=HEADERS, timeout=5)
    assert answer.ok
    lane = own._path._lanes[url]
    assert lane.direct is False and lane.target == url
    assert lane.settings["proxies"].get("http") == collector.url
    (req,) = collector.requests
    assert req.path == TRACK and req.body == BODY


def test_tls_verification_stays_on() -> None:
    """An https URL resolves to a pool that verifies certificates against a CA bundle."""
    transport = HttpTransport(None, pool_size=2)
    lane = FastTransport(transport.session)._resolve("https://gateway.example.invalid/v1/persons/track")
    assert lane.direct and lane.target == "/v1/persons/track"
    assert lane.pool.cert_reqs == "CERT_REQUIRED" and lane.pool.ca_certs
    transport.close()


@pytest.fixture
def tls_server(tmp_path: Any) -> Iterator[tuple[str, str]]:
    """A 127.0.0.1 HTTPS server with a self-signed certificate: (base URL, certificate path)."""
    import http.server
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="cdp-collector-tls", daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", cert
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_tls_verifies_and_honours_the_environment_ca_bundle(
    tls_server: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A self-signed server is refused (verification on, nothing sent); with REQUESTS_CA_BUNDLE
    naming its certificate the same request succeeds over TLS on one kept-alive connection."""
    url, cert = tls_server
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    strict = HttpTransport(None, pool_size=2)
    with pytest.raises(TransportError) as info:
        strict.request("POST", url + TRACK, body=BODY, headers=HEADERS, timeout=5)
    assert info.value.maybe_sent is False and info.value.reason == "certificate_error"
    assert "REQUESTS_CA_BUNDLE" in str(info.value) and "CURL_CA_BUNDLE" in str(info.value)
    strict.close()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", cert)
    trusting = HttpTransport(None, pool_size=2)
    for _ in range(3):
        assert trusting.request("POST", url + TRACK, body=BODY, headers=HEADERS, timeout=5).ok
    assert trusting._path._lanes[url + TRACK].pool.num_connections == 1
    trusting.close()


def test_connect_errors_are_not_sent() -> None:
    """Failures to connect (refused, timeout, TLS) never count as maybe sent."""
    for exc in (ConnectionRefusedError(), socket.timeout(), OSError("unreachable")):
        error = classify(exc, sent=False)
        assert error.maybe_sent is False
    assert classify(socket.timeout(), sent=False).reason == "timeout"


# ------------------------------------------------------------------------------- a user's Session
def test_user_session_hooks_auth_and_adapters(collector: Collector) -> None:
    """A user's Session keeps its normal path: its adapter sends, its hooks run, its auth applies."""
    seen: list[int] = []
    sent: list[str] = []

    class CountingAdapter(requests.adapters.HTTPAdapter):
        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            sent.append(str(request.url))
            return super().send(request, *args, **kwargs)

    with requests.Session() as session:
        session.mount("http://", CountingAdapter())
        session.hooks["response"].append(lambda r, *a, **k: seen.append(r.status_code))
        session.auth = ("user", "pass")
        transport = HttpTransport(session, pool_size=2)
        answer = transport.request(
            "POST", collector.url + "/api/v2/batch", body=b'{"batch":[]}', headers={}, timeout=5
        )
        assert answer.status in (200, 400)
        assert sent == [collector.url + "/api/v2/batch"] and seen == [answer.status]
        (req,) = collector.requests
        assert req.header("Authorization") == "Basic dXNlcjpwYXNz"
        transport.close()  # a user's Session stays open
        assert transport.request(
            "GET", collector.url + "/v1/health/ping", body=None, headers=HEADERS, timeout=5
        )


def test_user_session_errors_are_classified(collector: Collector) -> None:
    """Through a user's Session: refused is not sent, a reset after sending may be."""
    with requests.Session() as session:
        transport = HttpTransport(session, pool_size=2)
        with pytest.raises(TransportError) as info:
            transport.request(
                "POST", f"http://127.0.0.1:{_closed_port()}{TRACK}", body=BODY, headers=HEADERS, timeout=2
            )
        assert info.value.maybe_sent is False
        collector.drop_next(1)
        with pytest.raises(TransportError) as info:
            transport.request("POST", collector.url + TRACK, body=BODY, headers=HEADERS, timeout=5)
        assert info.value.maybe_sent is True
        assert API_KEY not in str(info.value)


# ------------------------------------------------------------------------------------- the reader
class _Feed:
    """A socket stand-in that hands out pre-set pieces, then EOF."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)

    def recv(self, n: int) -> bytes:
        if not self.pieces:
            return b""
        piece = self.pieces.pop(0)
        if len(piece) > n:
            self.pieces.insert(0, piece[n:])
            piece = piece[:n]
        return piece


def _read(*pieces: bytes, head_only: bool = False) -> tuple[int, Optional[str], bytes, bool]:
    return read_answer(_Feed(*pieces).recv, head_only)


def test_reader_content_length_in_pieces() -> None:
    """Head and body split across reads; keep-alive by default on HTTP/1.1."""
    assert _read(b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 5\r\n\r\nhel", b"lo") == (
        200,
        None,
        b"hello",
        True,
    )


def test_reader_chunked_with_trailer() -> None:
    """Chunked bodies are joined; trailers are skipped."""
    raw = b"HTTP/1.1 207 Multi\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab\r\n\r\n3;x=1\r\ncde\r\n0\r\nT: 1\r\n\r\n"
    assert _read(raw[:30], raw[30:41], raw[41:]) == (207, None, b"ab\r\ncde", True)


def test_reader_chunked_one_byte_at_a_time() -> None:
    """Chunk-size lines, data and trailers split at every byte still decode to the same body."""
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab\r\n\r\n3;x=1\r\ncde\r\n0\r\nT: 1\r\n\r\n"
    pieces = [raw[i : i + 1] for i in range(len(raw))]
    assert _read(*pieces) == (200, None, b"ab\r\ncde", True)


def test_reader_rejects_an_endless_chunk_line_or_trailer() -> None:
    """A chunk-size line or a trailer with no end is refused once past the head limit."""
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    endless = b"a" * 4096
    with pytest.raises(BadAnswer, match="too long"):
        _read(head + b"1", *([endless] * 20))
    with pytest.raises(BadAnswer, match="too long"):
        _read(head + b"0\r\nTrailer: ", *([endless] * 20))


def test_reader_close_delimited_and_connection_close() -> None:
    """Without a length the body runs to EOF and the connection is not reused; so with close."""
    assert _read(b"HTTP/1.1 500 X\r\n\r\nbody", b" end") == (500, None, b"body end", False)
    assert _read(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")[3] is False
    assert _read(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")[3] is False


def test_reader_skips_informational_and_reads_retry_after() -> None:
    """A 100 Continue is skipped; Retry-After is returned as text."""
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\nRetry-After: 12\r\nContent-Length: 0\r\n\r\n"
    assert _read(raw) == (503, "12", b"", True)


def test_reader_head_and_no_content() -> None:
    """HEAD answers and 204 have no body."""
    assert _read(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", head_only=True) == (200, None, b"", True)
    assert _read(b"HTTP/1.1 204 No Content\r\n\r\n") == (204, None, b"", True)


@pytest.mark.parametrize(
    "raw",
    [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", b"garbage\r\n\r\n", b"HTTP/1.1 abc\r\n\r\n"],
)
def test_reader_bad_answers(raw: bytes) -> None:
    """Truncated or malformed answers raise (classified as connection errors, maybe sent)."""
    with pytest.raises(BadAnswer):
        _read(raw)


def test_answer_value() -> None:
    """Answer keeps status, Retry-After and body; error text is short and on one line."""
    answer = Answer(500, None, b"line one\nline two" + b"x" * 1000)
    assert not answer.ok and "\n" not in answer.error_text() and len(answer.error_text()) <= 300
    assert Answer(200, None, b"{}") == Answer(200, None, b"{}") and Answer(204, None, b"").ok


def test_reader_no_body_answers_still_check_their_framing() -> None:
    """A HEAD, 204 or 304 answer has no body, but a bad Content-Length is still a bad answer,
    and one with both Transfer-Encoding and Content-Length does not keep the connection
    (found by test_reader_fuzz: a HEAD answer with "Content-Length:\\x00 2" was kept)."""
    bad = b"HTTP/1.1 200 OK\r\nContent-Length:\x00 2\r\n\r\n"
    with pytest.raises(BadAnswer):
        _read(bad, head_only=True)
    with pytest.raises(BadAnswer):
        _read(b"HTTP/1.1 204 No Content\r\nContent-Length: 1, 2\r\n\r\n")
    both = b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n"
    assert _read(both) == (304, None, b"", False)
    plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    assert _read(plain, head_only=True) == (200, None, b"", True)
