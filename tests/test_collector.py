"""Tests of cdp_batcher.testing.Collector, the local OpenCDP + Customer.io endpoint."""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
import requests

from cdp_batcher.testing import Collector, RecordedRequest

pytestmark = pytest.mark.timeout(30)

API_KEY = "test-key"
SITE_ID = "site"
CIO_KEY = "cio-key"
AUTH = {"Authorization": API_KEY}
CIO_AUTH = (SITE_ID, CIO_KEY)
TRACK = {"identifier": "user123", "eventName": "purchase_completed", "properties": {"amount": 99.99}}
REPO = Path(__file__).resolve().parent.parent


def cio_event(name: str = "purchase", ident: str = "user123", **attributes: Any) -> dict[str, Any]:
    return {
        "type": "person",
        "identifiers": {"id": ident},
        "action": "event",
        "name": name,
        "id": "01HZX0000000000000000000AA",
        "timestamp": 1_700_000_000,
        "attributes": attributes,
    }


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector(api_key=API_KEY, cio_site_id=SITE_ID, cio_api_key=CIO_KEY) as c:
        yield c


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def track(c: Collector, s: requests.Session, body: Optional[dict[str, Any]] = None) -> requests.Response:
    return s.post(c.url + "/v1/persons/track", json=body or TRACK, headers=AUTH, timeout=10)


def batch(c: Collector, s: requests.Session, entries: list[Any], **kw: Any) -> requests.Response:
    kw.setdefault("auth", CIO_AUTH)
    return s.post(c.url + "/api/v2/batch", json={"batch": entries}, timeout=10, **kw)


# --------------------------------------------------------------------------- lifecycle


def test_start_url_port_and_ping() -> None:
    c = Collector()
    assert c.start() is c
    try:
        assert c.port > 0
        assert c.url == f"http://127.0.0.1:{c.port}"
        r = requests.get(c.url + "/v1/health/ping", timeout=10)
        assert r.status_code == 200
        assert r.json() == {"status": "ok"}
        assert r.headers["Content-Type"] == "application/json"
    finally:
        c.stop()


def test_refuses_non_loopback_host() -> None:
    with pytest.raises(ValueError):
        Collector(host="0.0.0.0")
    with pytest.raises(ValueError):
        Collector(host="192.168.1.10")


def test_stop_is_idempotent_and_leaves_no_threads(session: requests.Session) -> None:
    before = set(threading.enumerate())
    c = Collector(api_key=API_KEY).start()
    c.set_latency(5.0, path="/v1/persons/identify")  # a handler stuck waiting must be woken by stop
    stuck = threading.Thread(target=_swallow_errors, args=(c.url + "/v1/persons/identify",))
    stuck.start()
    for _ in range(3):
        assert track(c, session).status_code == 200  # keeps a keep-alive connection open
    started = time.monotonic()
    c.stop()
    assert time.monotonic() - started < 3.0  # a handler waiting out its latency was woken
    c.stop()
    stuck.join(10)
    assert not stuck.is_alive()
    assert set(threading.enumerate()) == before
    assert not c.running


def _swallow_errors(url: str) -> None:
    with contextlib.suppress(requests.RequestException):
        requests.post(url, json={"identifier": "u"}, headers=AUTH, timeout=10)


def test_context_manager_and_restart_on_same_port(session: requests.Session) -> None:
    with Collector() as c:
        port = c.port
        assert c.running
    assert not c.running
    with c:
        assert c.port == port
        assert session.get(c.url + "/v1/health/ping", timeout=10).status_code == 200


# --------------------------------------------------------------------------- OpenCDP


def test_opencdp_auth(collector: Collector, session: requests.Session) -> None:
    url = collector.url + "/v1/persons/track"
    for headers in ({}, {"Authorization": "wrong"}, {"Authorization": "Bearer " + API_KEY}):
        r = session.post(url, json=TRACK, headers=headers, timeout=10)
        assert r.status_code == 401
        assert r.json() == {"error": "unauthorized"}
    r = session.post(url, json=TRACK, headers=AUTH, timeout=10)
    assert r.status_code == 200
    assert r.json() == {"success": True}
    assert collector.count() == 1
    assert [req.status for req in collector.requests] == [401, 401, 401, 200]


def test_opencdp_any_key_when_api_key_is_none(session: requests.Session) -> None:
    with Collector() as c:
        url = c.url + "/v1/persons/identify"
        assert session.post(url, json={"identifier": "u"}, headers={"Authorization": "x"}).status_code == 200
        assert session.post(url, json={"identifier": "u"}).status_code == 401


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/persons/track", {"identifier": "", "eventName": "e"}, "Identifier cannot be empty"),
        ("/v1/persons/track", {"identifier": "   ", "eventName": "e"}, "Identifier cannot be empty"),
        ("/v1/persons/track", {"identifier": "u"}, "Event name cannot be empty"),
        ("/v1/persons/track", {"identifier": "u", "eventName": " "}, "Event name cannot be empty"),
        ("/v1/persons/identify", {"properties": {}}, "Identifier cannot be empty"),
        ("/v1/persons/identify", {"identifier": 5}, "Identifier cannot be empty"),
        ("/v1/persons/identify", {"identifier": "u", "properties": []}, "properties must be an object"),
        ("/v1/persons/registerDevice", {"identifier": "u", "platform": "ios"}, "device ID required"),
        ("/v1/persons/identify", ["not", "an", "object"], "request body must be a JSON object"),
        ("/v1/send/email", {"to": "a@b.c"}, "identifiers is required"),
        (
            "/v1/send/sms",
            {"identifiers": {"id": "1", "email": "a@b.c"}},
            "identifiers must contain exactly one of: id, email, or cdp_id",
        ),
    ],
)
def test_opencdp_validation(
    collector: Collector, session: requests.Session, path: str, body: Any, message: str
) -> None:
    r = session.post(collector.url + path, json=body, headers=AUTH, timeout=10)
    assert r.status_code == 400
    assert r.json() == {"error": message}
    assert collector.count() == 0


def test_opencdp_non_json_and_empty_body(collector: Collector, session: requests.Session) -> None:
    url = collector.url + "/v1/persons/identify"
    assert session.post(url, data=b"{nope", headers=AUTH, timeout=10).status_code == 400
    assert session.post(url, data=b"", headers=AUTH, timeout=10).status_code == 400
    assert collector.requests[0].json is None


def test_opencdp_recording(collector: Collector, session: requests.Session) -> None:
    device = {"identifier": "user123", "deviceId": "d1", "platform": "android", "fcmToken": "tok"}
    assert session.post(collector.url + "/v1/persons/identify", json={"identifier": "user123"}, headers=AUTH)
    assert track(collector, session).ok
    assert session.post(collector.url + "/v1/persons/registerDevice?x=1", json=device, headers=AUTH).ok
    assert collector.events(destination="opencdp") == [
        {"call": "identify", "path": "/v1/persons/identify", "body": {"identifier": "user123"}},
        {"call": "track", "path": "/v1/persons/track", "body": TRACK},
        {"call": "register_device", "path": "/v1/persons/registerDevice", "body": device},
    ]
    assert collector.count("opencdp") == 3
    assert collector.count("customerio") == 0

    reqs = collector.requests
    assert all(isinstance(r, RecordedRequest) for r in reqs)
    first = reqs[1]
    assert (first.method, first.path, first.status) == ("POST", "/v1/persons/track", 200)
    assert first.json == TRACK
    assert json.loads(first.body) == TRACK
    assert first.header("authorization") == API_KEY
    assert first.header("CONTENT-TYPE") == "application/json"
    assert API_KEY not in repr(first)
    assert reqs[0].time <= reqs[1].time <= reqs[2].time

    # copies: mutating what we got does not change what was recorded
    collector.events()[0]["body"]["identifier"] = "changed"
    assert collector.events()[0]["body"]["identifier"] == "user123"

    collector.clear()
    assert collector.requests == []
    assert collector.events() == []
    assert collector.count() == 0


def test_transactional_sends(collector: Collector, session: requests.Session) -> None:
    body = {"identifiers": {"email": "a@example.com"}, "transactional_message_id": "7"}
    ids = set()
    for kind in ("email", "push", "sms"):
        r = session.post(collector.url + f"/v1/send/{kind}", json=body, headers=AUTH, timeout=10)
        assert r.status_code == 200
        answer = r.json()
        assert answer["success"] is True
        assert isinstance(answer["delivery_id"], str) and answer["delivery_id"]
        ids.add(answer["delivery_id"])
    assert len(ids) == 3
    assert [e["call"] for e in collector.events()] == ["send_email", "send_push", "send_sms"]


def test_unknown_path_and_wrong_method(collector: Collector, session: requests.Session) -> None:
    assert session.post(collector.url + "/v1/persons/nope", json={}, headers=AUTH).status_code == 404
    assert session.get(collector.url + "/", timeout=10).status_code == 404
    assert session.get(collector.url + "/v1/persons/track", headers=AUTH).status_code == 405
    assert session.post(collector.url + "/v1/health/ping", timeout=10).status_code == 405


def test_keep_alive_on_one_connection(collector: Collector) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=10)
    try:
        conn.connect()
        sock = conn.sock
        for i in range(20):
            body = json.dumps({"identifier": f"u{i}", "eventName": "e"})
            conn.request("POST", "/v1/persons/track", body=body, headers=AUTH)
            resp = conn.getresponse()
            assert resp.status == 200
            assert json.loads(resp.read()) == {"success": True}
            assert conn.sock is sock  # the same connection every time
    finally:
        conn.close()
    assert collector.count() == 20


def test_chunked_body(collector: Collector, session: requests.Session) -> None:
    payload = json.dumps(TRACK).encode()
    r = session.post(
        collector.url + "/v1/persons/track",
        data=iter([payload[:10], payload[10:]]),
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 200
    assert collector.events()[0]["body"] == TRACK


def test_many_concurrent_connections(collector: Collector) -> None:
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            with requests.Session() as s:
                for i in range(10):
                    r = track(collector, s, {"identifier": f"u{k}", "eventName": f"e{i}"})
                    assert r.status_code == 200
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(25)
    assert errors == []
    assert collector.count() == 400


def test_wait_for(collector: Collector, session: requests.Session) -> None:
    assert collector.wait_for(0, timeout=0)
    started = time.monotonic()
    assert not collector.wait_for(1, timeout=0.1)
    assert time.monotonic() - started >= 0.1

    def send_later() -> None:
        with requests.Session() as s:
            for _ in range(3):
                track(collector, s)
            batch(collector, s, [cio_event()])

    t = threading.Thread(target=send_later)
    t.start()
    assert collector.wait_for(3, destination="opencdp", timeout=10)
    assert collector.wait_for(1, destination="customerio", timeout=10)
    t.join(10)
    with pytest.raises(ValueError):
        collector.wait_for(1, destination="nowhere")


# --------------------------------------------------------------------------- Customer.io


def test_cio_auth(collector: Collector, session: requests.Session) -> None:
    entries = [cio_event()]
    assert batch(collector, session, entries, auth=None).status_code == 401
    assert batch(collector, session, entries, auth=(SITE_ID, "wrong")).status_code == 401
    assert batch(collector, session, entries, auth=("other", CIO_KEY)).status_code == 401
    r = batch(collector, session, entries, auth=None, headers={"Authorization": "Bearer " + CIO_KEY})
    assert r.status_code == 401
    r = batch(collector, session, entries, auth=None, headers={"Authorization": "Basic !!notbase64"})
    assert r.status_code == 401
    r = batch(collector, session, entries)
    assert r.status_code == 200
    assert r.json() == {}
    assert collector.events("customerio") == entries
    assert collector.count("opencdp") == 0


def test_cio_any_basic_auth_when_credentials_are_none(session: requests.Session) -> None:
    with Collector() as c:
        assert batch(c, session, [cio_event()], auth=("anything", "goes")).status_code == 200
        assert batch(c, session, [cio_event()], auth=None).status_code == 401


def test_cio_bad_body(collector: Collector, session: requests.Session) -> None:
    url = collector.url + "/api/v2/batch"
    bodies: list[bytes] = [b'{"entries": []}', b"[1]", b"not json", b'{"batch": {}}']
    for body in bodies:
        r = session.post(url, data=body, auth=CIO_AUTH, timeout=10)
        assert r.status_code == 400
        assert "errors" in r.json()
    assert collector.count("customerio") == 0


def test_cio_recording_flattens_batches(collector: Collector, session: requests.Session) -> None:
    identify = {"type": "person", "identifiers": {"id": "u1"}, "action": "identify", "attributes": {"a": 1}}
    first, second = [cio_event("a"), identify], [cio_event("b")]
    assert batch(collector, session, first).status_code == 200
    assert batch(collector, session, second).status_code == 200
    assert collector.events("customerio") == first + second
    assert collector.count("customerio") == 3


def test_cio_413(collector: Collector, session: requests.Session) -> None:
    # the real limit by default: bodies over 500,000 bytes
    entries = [cio_event(i=i, blob="x" * 20_000) for i in range(26)]
    r = batch(collector, session, entries)
    assert r.status_code == 413
    assert collector.count("customerio") == 0
    assert batch(collector, session, entries[:20]).status_code == 200

    collector.set_cio_max_body(1_000)
    assert batch(collector, session, [cio_event(blob="x" * 1_000)]).status_code == 413
    assert batch(collector, session, [cio_event()]).status_code == 200
    collector.reset_faults()
    assert batch(collector, session, [cio_event(blob="x" * 1_000)]).status_code == 200


def test_cio_entry_over_32kb_rejected(collector: Collector, session: requests.Session) -> None:
    small, big = cio_event("small"), cio_event("big", blob="x" * 32_000)
    r = batch(collector, session, [small, big, small])
    assert r.status_code == 207
    assert r.json() == {
        "errors": [
            {"batch_index": 1, "reason": "entry too large", "field": "batch[1]", "message": "entry too large"}
        ]
    }
    assert collector.events("customerio") == [small, small]


def test_cio_invalid_entries_rejected(collector: Collector, session: requests.Session) -> None:
    good = cio_event()
    no_name = {k: v for k, v in good.items() if k != "name"}
    r = batch(collector, session, [good, "x", {"action": "event"}, no_name])
    assert r.status_code == 207
    assert [e["batch_index"] for e in r.json()["errors"]] == [1, 2, 3]
    assert collector.events("customerio") == [good]


def test_cio_reject_predicate(collector: Collector, session: requests.Session) -> None:
    collector.reject_cio_entries(lambda e: "bad name" if e.get("name") == "bad" else None)
    entries = [cio_event("ok1"), cio_event("bad"), cio_event("ok2")]
    r = batch(collector, session, entries)
    assert r.status_code == 207
    assert r.json() == {
        "errors": [{"batch_index": 1, "reason": "bad name", "field": "batch[1]", "message": "bad name"}]
    }
    assert [e["name"] for e in collector.events("customerio")] == ["ok1", "ok2"]
    collector.reset_faults()
    assert batch(collector, session, [cio_event("bad")]).status_code == 200


# --------------------------------------------------------------------------- faults


def test_fail_next(collector: Collector, session: requests.Session) -> None:
    collector.fail_next(2)
    r1, r2, r3 = track(collector, session), track(collector, session), track(collector, session)
    assert (r1.status_code, r2.status_code, r3.status_code) == (500, 500, 200)
    assert collector.count() == 1
    assert [r.status for r in collector.requests] == [500, 500, 200]


def test_fail_next_is_evaluated_before_auth(collector: Collector, session: requests.Session) -> None:
    collector.fail_next(1, 502)
    assert session.post(collector.url + "/v1/persons/track", json=TRACK, timeout=10).status_code == 502
    assert session.post(collector.url + "/v1/persons/track", json=TRACK, timeout=10).status_code == 401


def test_fail_next_path_headers_body(collector: Collector, session: requests.Session) -> None:
    collector.fail_next(1, 400, path="/api/v2/batch", headers={"X-Why": "test"}, body={"errors": []})
    assert track(collector, session).status_code == 200  # other path: untouched
    r = batch(collector, session, [cio_event()])
    assert r.status_code == 400
    assert r.headers["X-Why"] == "test"
    assert r.json() == {"errors": []}
    collector.fail_next(1, 500, body="plain text", headers={"Content-Type": "text/plain"})
    r = track(collector, session)
    assert (r.status_code, r.text, r.headers["Content-Type"]) == (500, "plain text", "text/plain")
    assert batch(collector, session, [cio_event()]).status_code == 200
    assert collector.count("customerio") == 1


def test_fail_for(collector: Collector, session: requests.Session) -> None:
    started = time.monotonic()
    collector.fail_for(0.3, path="/v1/persons/track")
    assert track(collector, session).status_code == 503
    assert session.post(collector.url + "/v1/persons/identify", json={"identifier": "u"}, headers=AUTH).ok
    assert track(collector, session).status_code == 503
    time.sleep(max(0.0, started + 0.35 - time.monotonic()))  # let the outage window pass (clock, not threads)
    assert track(collector, session).status_code == 200

    collector.fail_for(10, 500)
    assert track(collector, session).status_code == 500
    collector.reset_faults()
    assert track(collector, session).status_code == 200


def test_rate_limit_next_seconds(collector: Collector, session: requests.Session) -> None:
    collector.rate_limit_next(1, "2")
    r = track(collector, session)
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "2"
    assert track(collector, session).status_code == 200


def test_rate_limit_next_http_date(collector: Collector, session: requests.Session) -> None:
    when = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(seconds=3)
    date_text = email.utils.format_datetime(when, usegmt=True)
    collector.rate_limit_next(1, date_text, path="/api/v2/batch")
    collector.rate_limit_next(1, when, path="/api/v2/batch")
    collector.rate_limit_next(1, None, path="/api/v2/batch")
    first, second, third = (batch(collector, session, [cio_event()]) for _ in range(3))
    assert first.status_code == second.status_code == third.status_code == 429
    assert first.headers["Retry-After"] == date_text
    assert email.utils.parsedate_to_datetime(second.headers["Retry-After"]) == when
    assert "Retry-After" not in third.headers
    assert batch(collector, session, [cio_event()]).status_code == 200


def test_latency(collector: Collector, session: requests.Session) -> None:
    collector.set_latency(0.3, path="/v1/persons/track")
    started = time.monotonic()
    assert track(collector, session).status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert session.get(collector.url + "/v1/health/ping", timeout=10).ok
    assert time.monotonic() - started < 0.3
    # latency applies to injected answers too
    collector.fail_next(1, 500)
    started = time.monotonic()
    assert track(collector, session).status_code == 500
    assert time.monotonic() - started >= 0.3
    collector.set_latency(0, path="/v1/persons/track")
    started = time.monotonic()
    assert track(collector, session).status_code == 200
    assert time.monotonic() - started < 0.3


def test_latency_makes_client_time_out(collector: Collector, session: requests.Session) -> None:
    collector.set_latency(1.0)
    with pytest.raises(requests.Timeout):
        session.post(collector.url + "/v1/persons/track", json=TRACK, headers=AUTH, timeout=0.2)


def test_drop_next_requests(collector: Collector, session: requests.Session) -> None:
    assert track(collector, session).ok  # a pooled keep-alive connection now exists
    collector.drop_next(1)
    with pytest.raises(requests.ConnectionError):
        track(collector, session)
    assert track(collector, session).status_code == 200
    statuses = [r.status for r in collector.requests]
    assert statuses == [200, None, 200]
    assert collector.requests[1].dropped
    assert collector.requests[1].json == TRACK  # the request was read before the drop
    assert collector.count() == 2


def test_drop_next_http_client(collector: Collector) -> None:
    collector.drop_next(1, path="/api/v2/batch")
    conn = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=10)
    try:
        conn.request("GET", "/v1/health/ping")
        assert conn.getresponse().read() == b'{"status":"ok"}'
        conn.request(
            "POST", "/api/v2/batch", body=b'{"batch":[]}', headers={"Content-Type": "application/json"}
        )
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            conn.getresponse()
    finally:
        conn.close()


def test_fault_precedence(collector: Collector, session: requests.Session) -> None:
    collector.fail_for(10, 503)
    collector.rate_limit_next(1, "1")
    collector.fail_next(1, 500)
    collector.drop_next(1)
    with pytest.raises(requests.ConnectionError):
        track(collector, session)  # drop first
    assert track(collector, session).status_code == 429  # then explicit faults, FIFO
    assert track(collector, session).status_code == 500
    assert track(collector, session).status_code == 503  # then the timed outage
    collector.reset_faults()
    assert track(collector, session).status_code == 200


def test_fault_argument_checks(collector: Collector) -> None:
    with pytest.raises(ValueError):
        collector.fail_next(-1)
    with pytest.raises(ValueError):
        collector.fail_next(1, status=99)
    with pytest.raises(ValueError):
        collector.set_latency(-1)
    with pytest.raises(ValueError):
        collector.events("elsewhere")


def test_go_down_and_come_back(collector: Collector, session: requests.Session) -> None:
    port = collector.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/v1/health/ping")
    assert conn.getresponse().read()  # an idle keep-alive connection now exists
    assert track(collector, session).ok  # and one in the requests pool

    collector.go_down()
    collector.go_down()  # idempotent
    assert not collector.running
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    with pytest.raises(requests.ConnectionError):
        track(collector, session)
    with pytest.raises((http.client.HTTPException, ConnectionError)):  # the idle connection was cut
        conn.request("GET", "/v1/health/ping")
        conn.getresponse()
    conn.close()

    collector.come_back()
    assert collector.running
    assert collector.port == port
    assert track(collector, session).status_code == 200
    assert collector.count() == 2


def test_go_down_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        Collector().go_down()


# --------------------------------------------------------------------------- printing and CLI


def test_printer_lines(session: requests.Session) -> None:
    lines: list[str] = []
    with Collector(api_key=API_KEY, cio_site_id=SITE_ID, cio_api_key=CIO_KEY, printer=lines.append) as c:
        track(c, session)
        session.post(c.url + "/v1/persons/track", json=TRACK, headers={"Authorization": "wrong-key"})
        batch(c, session, [cio_event(amount=1)])
        c.reject_cio_entries(lambda e: "nope")
        batch(c, session, [cio_event()])
    assert lines[0] == '[opencdp] track user123 purchase_completed {"amount": 99.99}  (#1)'
    assert lines[1] == "[opencdp] POST /v1/persons/track -> 401"
    assert lines[2] == '[customerio] event user123 purchase {"amount": 1}  (#1)'
    assert lines[3] == "[customerio] rejected batch[0]: nope"
    text = "\n".join(lines)
    for secret in (API_KEY, CIO_KEY, "wrong-key"):
        assert secret not in text


def test_printer_errors_are_swallowed(session: requests.Session) -> None:
    def broken(line: str) -> None:
        raise RuntimeError("boom")

    with Collector(printer=broken) as c:
        assert c.url
        r = session.post(c.url + "/v1/persons/identify", json={"identifier": "u"}, headers=AUTH, timeout=10)
        assert r.status_code == 200


@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGTERM")
def test_cli_main_subprocess() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdp_batcher.testing", "--port", "0", "--api-key", "cli-secret-key"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=str(REPO),
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        first = lines.get(timeout=20)
        assert first.startswith("collector listening on http://127.0.0.1:")
        url = first.rsplit(" ", 1)[1]
        r = requests.post(
            url + "/v1/persons/track", json=TRACK, headers={"Authorization": "cli-secret-key"}, timeout=10
        )
        assert r.status_code == 200
        arrival = lines.get(timeout=10)
        assert arrival == '[opencdp] track user123 purchase_completed {"amount": 99.99}  (#1)'
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        reader.join(10)
        rest = []
        while not lines.empty():
            rest.append(lines.get_nowait())
        assert any(line.startswith("collector stopped") for line in rest)
        assert all("cli-secret-key" not in line for line in [first, arrival, *rest])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
