"""Through a real forward proxy: squid on 127.0.0.1, started by the test with its own config.

HTTP_PROXY (absolute-form requests), HTTPS_PROXY (a CONNECT tunnel to a local TLS server whose
certificate comes from a private CA made here), NO_PROXY, and proxy authentication (squid's
basic_ncsa_auth with an htpasswd file written here) on the library's own Session and on a user's
Session. Skipped, naming what is missing, where squid or openssl is not installed (`.ci/run`
installs squid from Debian's packages).
"""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cdp_batcher.destinations._http import HttpTransport, TransportError
from cdp_batcher.testing import Collector

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]

KEY = "proxy-test-key"
HEADERS = {"Authorization": KEY, "Content-Type": "application/json"}
BODY = b'{"identifier":"u1","eventName":"through_proxy","properties":{}}'
PASSWORD = "s3cret-proxy-pw"
SQUID = shutil.which("squid") or ("/usr/sbin/squid" if os.path.exists("/usr/sbin/squid") else None)
NCSA = next(
    (p for p in ("/usr/lib/squid/basic_ncsa_auth", "/usr/lib64/squid/basic_ncsa_auth") if os.path.exists(p)),
    None,
)
PROXY_VARS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, timeout=60)


class Squid:
    def __init__(self, root: Path, open_port: int, auth_port: int, proc: subprocess.Popen[bytes]) -> None:
        self.root = root
        self.open_url = f"http://127.0.0.1:{open_port}"
        self.auth_port = auth_port
        self.proc = proc

    def auth_url(self, password: str) -> str:
        return f"http://tester:{password}@127.0.0.1:{self.auth_port}"

    def wait_for_log(self, text: str, timeout: float = 10.0) -> bool:
        """Whether ``text`` shows in the access log within ``timeout`` (squid writes it itself)."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)  # another process's file: nothing to wait on but the file itself
        return True

    def log(self) -> str:
        path = self.root / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="module")
def squid() -> Iterator[Squid]:
    """squid -N on two loopback ports: one open, one requiring basic auth (tester / PASSWORD)."""
    if SQUID is None:
        pytest.skip("squid is not installed (Debian package: squid; .ci/run installs it)")
    if NCSA is None:
        pytest.skip("squid's basic_ncsa_auth helper is missing (Debian package: squid)")
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed for the proxy password hash")
    # Started as root, squid runs as its own user: its directory must be reachable and writable
    # by that user, so it sits directly in the system temp directory, not in pytest's (0700).
    root = Path(tempfile.mkdtemp(prefix="cdp-batcher-squid-"))
    root.chmod(0o777)
    hashed = subprocess.run(
        ["openssl", "passwd", "-apr1", PASSWORD], check=True, capture_output=True, text=True
    ).stdout.strip()
    (root / "htpasswd").write_text(f"tester:{hashed}\n")
    open_port, auth_port = _free_port(), _free_port()
    (root / "squid.conf").write_text(
        f"""
http_port 127.0.0.1:{open_port} name=open
http_port 127.0.0.1:{auth_port} name=auth
pid_filename {root}/squid.pid
cache_log {root}/cache.log
access_log stdio:{root}/access.log
coredump_dir {root}
cache deny all
cache_mem 4 MB
netdb_filename none
visible_hostname cdp-batcher-test
shutdown_lifetime 0 seconds
forwarded_for delete
via off
auth_param basic program {NCSA} {root}/htpasswd
auth_param basic realm cdp-batcher-test
acl open_port myportname open
acl authed proxy_auth REQUIRED
acl CONNECT method CONNECT
http_access allow open_port
http_access allow authed
http_access deny all
"""
    )
    for name in ("squid.conf", "htpasswd"):
        (root / name).chmod(0o644)
    proc = subprocess.Popen(
        [SQUID, "-N", "-f", str(root / "squid.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                log = (
                    (root / "cache.log").read_text(errors="replace") if (root / "cache.log").exists() else ""
                )
                pytest.fail(f"squid did not start: {err[-500:]} {log[-500:]}")
            try:
                with (
                    socket.create_connection(("127.0.0.1", auth_port), timeout=0.5),
                    socket.create_connection(("127.0.0.1", open_port), timeout=0.5),
                ):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("squid did not listen within 20 s")
                time.sleep(0.05)  # polling a port another process opens: no event to wait on
        yield Squid(root, open_port, auth_port, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (*PROXY_VARS, "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _proxy(env: pytest.MonkeyPatch, scheme: str, url: str) -> None:
    env.setenv(f"{scheme.upper()}_PROXY", url)
    env.setenv(f"{scheme}_proxy", url)


@pytest.fixture(params=["own", "session"])
def transport(request: pytest.FixtureRequest) -> Iterator[HttpTransport]:
    session = requests.Session() if request.param == "session" else None
    t = HttpTransport(session, pool_size=2)
    yield t
    t.close()
    if session is not None:
        session.close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector(api_key=KEY) as c:
        yield c


def test_http_proxy(
    squid: Squid, env: pytest.MonkeyPatch, transport: HttpTransport, collector: Collector
) -> None:
    """HTTP_PROXY: the request goes through squid (its log has it) and arrives whole."""
    _proxy(env, "http", squid.open_url)
    answer = transport.request(
        "POST", collector.url + "/v1/persons/track", body=BODY, headers=HEADERS, timeout=10
    )
    assert answer.ok, answer
    (req,) = collector.requests
    assert req.body == BODY and req.header("Authorization") == KEY
    assert squid.wait_for_log(f"POST {collector.url}/v1/persons/track"), squid.log()


def test_no_proxy_goes_direct(
    squid: Squid, env: pytest.MonkeyPatch, transport: HttpTransport, collector: Collector
) -> None:
    """NO_PROXY naming the host: straight to it (squid never sees it); the own Session keeps the fast path."""
    _proxy(env, "http", squid.open_url)
    env.setenv("NO_PROXY", "127.0.0.1")
    env.setenv("no_proxy", "127.0.0.1")
    path = f"/v1/persons/track?direct={id(transport)}"
    assert transport.request("POST", collector.url + path, body=BODY, headers=HEADERS, timeout=10).ok
    assert collector.count() == 1 and path not in squid.log()
    if transport.path != "session":
        assert transport.path == "fast"


def test_proxy_auth(
    squid: Squid, env: pytest.MonkeyPatch, transport: HttpTransport, collector: Collector
) -> None:
    """Basic proxy auth: the right password passes; a wrong one is proxy_auth, naming the proxy
    (scheme://host:port) and never the password."""
    _proxy(env, "http", squid.auth_url(PASSWORD))
    assert transport.request(
        "POST", collector.url + "/v1/persons/track", body=BODY, headers=HEADERS, timeout=10
    ).ok


def test_wrong_proxy_password(
    squid: Squid, env: pytest.MonkeyPatch, transport: HttpTransport, collector: Collector
) -> None:
    """A wrong proxy password: reason proxy_auth, the proxy named, its password never shown."""
    wrong = "wrong-pw-123"
    _proxy(env, "http", squid.auth_url(wrong))
    with pytest.raises(TransportError) as info:
        transport.request("POST", collector.url + "/v1/persons/track", body=BODY, headers=HEADERS, timeout=10)
    text = str(info.value)
    assert info.value.reason == "proxy_auth" and info.value.permanent and not info.value.maybe_sent
    assert f"proxy http://127.0.0.1:{squid.auth_port}" in text and "407" in text
    assert wrong not in text and "tester" not in text
    assert collector.count() == 0


# ----------------------------------------------------------------------------- HTTPS via CONNECT
@pytest.fixture(scope="module")
def tls_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A 127.0.0.1 HTTPS server with a certificate from a private CA: (base URL, CA file)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test CA")
    d = tmp_path_factory.mktemp("ca")
    ca_key, ca, key, csr, cert, ext = (
        str(d / n) for n in ("ca.key", "ca.pem", "k.pem", "c.csr", "c.pem", "ext")
    )
    # What Python 3.13's strict verification (VERIFY_X509_STRICT) wants of a leaf certificate.
    Path(ext).write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
         "-days", "1", "-subj", "/CN=cdp-batcher test CA",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    _run(
        "openssl",
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        key,
        "-out",
        csr,
        "-subj",
        "/CN=127.0.0.1",
    )
    _run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "1", "-extfile", ext)  # fmt: skip
    seen: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            seen.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
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
    thread = threading.Thread(target=server.serve_forever, name="cdp-collector-tls-origin", daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", ca
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_https_proxy_connect(
    squid: Squid, env: pytest.MonkeyPatch, transport: HttpTransport, tls_origin: tuple[str, str]
) -> None:
    """HTTPS_PROXY: a CONNECT tunnel through squid, TLS verified end to end against the private CA."""
    url, ca = tls_origin
    _proxy(env, "https", squid.open_url)
    env.setenv("REQUESTS_CA_BUNDLE", ca)
    if transport.path == "session":
        transport.session.verify = ca
    for _ in range(2):
        assert transport.request("POST", url + "/v1/persons/track", body=BODY, headers=HEADERS, timeout=10).ok
    transport.close()  # squid logs a tunnel when it ends
    if transport.session is not None:
        transport.session.close()
    assert squid.wait_for_log(f"CONNECT {url.removeprefix('https://')}")


def test_https_proxy_connect_without_the_ca_is_a_certificate_error(
    squid: Squid, env: pytest.MonkeyPatch, tls_origin: tuple[str, str]
) -> None:
    """Through the tunnel, an untrusted certificate is certificate_error naming the CA variables."""
    url, _ = tls_origin
    _proxy(env, "https", squid.open_url)
    transport = HttpTransport(None, pool_size=2)
    with pytest.raises(TransportError) as info:
        transport.request("POST", url + "/v1/persons/track", body=BODY, headers=HEADERS, timeout=10)
    transport.close()
    assert info.value.reason == "certificate_error" and "REQUESTS_CA_BUNDLE" in str(info.value)


def test_https_proxy_wrong_password(
    squid: Squid, env: pytest.MonkeyPatch, transport: HttpTransport, tls_origin: tuple[str, str]
) -> None:
    """A CONNECT refused with 407: proxy_auth naming the proxy, never the password."""
    url, ca = tls_origin
    wrong = "wrong-connect-pw"
    _proxy(env, "https", squid.auth_url(wrong))
    env.setenv("REQUESTS_CA_BUNDLE", ca)
    with pytest.raises(TransportError) as info:
        transport.request("POST", url + "/v1/persons/track", body=BODY, headers=HEADERS, timeout=10)
    text = str(info.value)
    assert info.value.reason == "proxy_auth", text
    assert f"127.0.0.1:{squid.auth_port}" in text and wrong not in text
