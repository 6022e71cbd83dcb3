"""Customer.io dual-write: entries, batching, answers, isolation from OpenCDP, accounting.

Every test runs against the real local collector on 127.0.0.1, and every ``/api/v2/batch`` body
the library sent is validated against Customer.io's official OpenAPI description (the whole
request body schema, then each entry against the schema of its action).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import jsonschema
import pytest
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from cdp_batcher import CDPClient, ConfigError, CustomerIoConfig, FailedEvent
from cdp_batcher._retry import RetryPolicy
from cdp_batcher.destinations import customerio
from cdp_batcher.destinations.customerio import (
    BATCH_PATH,
    MAX_BODY_BYTES,
    MAX_ENTRY_BYTES,
    CustomerIoDestination,
)
from cdp_batcher.testing import Collector, RecordingLogger

from conftest import Paces, RecordingControl

pytestmark = pytest.mark.timeout(60)

OPENAPI = Path(__file__).resolve().parent / "data" / "customerio-track-api-openapi.json"
_DOC_URI = "urn:customerio:track-api-openapi"
_BATCH_SCHEMA = "/paths/~1api~1v2~1batch/post/requestBody/content/application~1json/schema"
_ENTRY_SCHEMAS = {"identify": "identify_person", "event": "person_event", "add_device": "person_add_device"}
_ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

KEY = "cdp-test-key"
SITE = "site-123"
CIO_KEY = "cio-secret-key"
FAST: dict[str, Any] = {
    "flush_interval": 0.05,
    "max_retries": 3,
    "retry_max_time": 5.0,
    "timeout_ms": 3_000,
    "shutdown_timeout": 3.0,
    "cdp_fallback_endpoints": [],
}


# ------------------------------------------------------------------------------ schema check
@functools.cache
def _validators() -> tuple[jsonschema.Draft202012Validator, dict[str, jsonschema.Draft202012Validator]]:
    """Validators built from the OpenAPI file; a missing file fails the test (never a skip)."""
    assert OPENAPI.is_file(), f"Customer.io OpenAPI description missing: {OPENAPI}"
    doc = json.loads(OPENAPI.read_text(encoding="utf-8"))
    registry: Registry[Any] = Registry().with_resource(_DOC_URI, DRAFT202012.create_resource(doc))

    def validator(pointer: str) -> jsonschema.Draft202012Validator:
        return jsonschema.Draft202012Validator(
            {"$ref": f"{_DOC_URI}#{pointer}"},
            registry=registry,
            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
        )

    entries = {action: validator(f"/components/schemas/{name}") for action, name in _ENTRY_SCHEMAS.items()}
    return validator(_BATCH_SCHEMA), entries


def validate_cio_body(body: bytes) -> dict[str, Any]:
    """Validate one batch body against the OpenAPI request schema (and each entry's own schema)."""
    assert len(body) < MAX_BODY_BYTES, f"batch body of {len(body)} bytes"
    batch_validator, entry_validators = _validators()
    doc = json.loads(body)
    batch_validator.validate(doc)
    assert isinstance(doc, dict) and set(doc) == {"batch"} and doc["batch"], doc
    for entry in doc["batch"]:
        assert entry.get("action") in entry_validators, entry
        entry_validators[entry["action"]].validate(entry)
    return doc


def assert_cio_bodies_valid(*collectors: Collector) -> int:
    """Validate every ``/api/v2/batch`` body the collectors received; returns how many."""
    n = 0
    for collector in collectors:
        for request in collector.requests:
            if request.path == BATCH_PATH:
                assert request.method == "POST"
                assert request.header("Content-Type") == "application/json"
                validate_cio_body(request.body)
                n += 1
    return n


# ------------------------------------------------------------------------------------ helpers
def batch_requests(collector: Collector, status: Optional[int] = None) -> list[Any]:
    return [r for r in collector.requests if r.path == BATCH_PATH and (status is None or r.status == status)]


def entries_of(request: Any) -> list[dict[str, Any]]:
    return list(json.loads(request.body)["batch"])


def assert_invariant(client: CDPClient) -> None:
    """``enqueued == delivered + failed + dropped + queued + in_flight`` for every destination."""
    for name, d in client.stats().destinations.items():
        total = d.delivered + d.failed_total + d.dropped_total + d.queued + d.in_flight
        assert d.enqueued == total, (name, d)


def ulid_ms(ulid: str) -> int:
    value = 0
    for ch in ulid[:10]:
        value = value * 32 + _CROCKFORD.index(ch)
    return value


class Errors:
    """An ``on_error`` callback that records calls and lets a test wait for records."""

    def __init__(self) -> None:
        self.calls: list[tuple[BaseException, list[FailedEvent]]] = []
        self._cond = threading.Condition()

    def __call__(self, error: BaseException, events: Sequence[Any]) -> None:
        with self._cond:
            self.calls.append((error, list(events)))
            self._cond.notify_all()

    def records(self, destination: Optional[str] = None) -> list[FailedEvent]:
        with self._cond:
            return [e for _, evs in self.calls for e in evs if destination in (None, e.destination)]

    def wait(self, n: int, destination: str, timeout: float = 5.0) -> bool:
        """Wait until ``n`` records for ``destination`` arrived (on_error runs in the route's threads)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: sum(e.destination == destination for _, evs in self.calls for e in evs) >= n,
                timeout,
            )


# ----------------------------------------------------------------------------------- fixtures
def _start() -> Collector:
    return Collector(api_key=KEY, cio_site_id=SITE, cio_api_key=CIO_KEY).start()


@pytest.fixture
def hub() -> Iterator[Collector]:
    """A collector for both destinations; its Customer.io bodies are validated at teardown too."""
    collector = _start()
    try:
        yield collector
    finally:
        collector.stop()
    assert_cio_bodies_valid(collector)


@pytest.fixture
def cio() -> Iterator[Collector]:
    """A second collector used as Customer.io only (so it can go down on its own)."""
    collector = _start()
    try:
        yield collector
    finally:
        collector.stop()
    assert_cio_bodies_valid(collector)


MakeClient = Callable[..., CDPClient]


@pytest.fixture
def make_client(hub: Collector) -> Iterator[MakeClient]:
    """Dual-write clients on ``hub`` (``cio_url=`` points Customer.io elsewhere); all shut down."""
    made: list[CDPClient] = []

    def make(cio_url: Optional[str] = None, cio_key: str = CIO_KEY, **overrides: Any) -> CDPClient:
        settings: dict[str, Any] = {
            "cdp_api_key": KEY,
            "cdp_endpoint": hub.url,
            "send_to_customer_io": True,
            "customer_io": CustomerIoConfig(site_id=SITE, api_key=cio_key, url=cio_url or hub.url),
            **FAST,
        }
        settings.update(overrides)
        client = CDPClient(**settings)
        made.append(client)
        return client

    yield make
    for client in made:
        client.shutdown(timeout=3.0)


# -------------------------------------------------------------------------------------- tests
def test_openapi_schema_loads_and_rejects_bad_entries() -> None:
    """The OpenAPI file is there, and the validator built from it has teeth."""
    good = {
        "type": "person",
        "identifiers": {"id": "u1"},
        "action": "event",
        "name": "purchase",
        "id": "01HZX0000000000000000000AA",
        "timestamp": 1_700_000_000,
        "attributes": {"amount": 9.5},
    }
    validate_cio_body(json.dumps({"batch": [good]}).encode())
    device = {
        "type": "person",
        "identifiers": {"id": "u1"},
        "action": "add_device",
        "device": {"token": "t", "platform": "ios", "last_used": 1, "attributes": {"n": "1"}},
    }
    validate_cio_body(json.dumps({"batch": [device]}).encode())
    bad_entries = [
        {k: v for k, v in good.items() if k != "name"},  # event without a name
        {**good, "timestamp": "2024-01-01"},  # timestamp must be an integer
        {**good, "identifiers": {"id": "u1", "email": "a@example.com"}},  # two identifiers
        {**device, "device": {**device["device"], "platform": "web"}},  # no web devices
        {**device, "device": {**device["device"], "attributes": {"n": 1}}},  # string values only
    ]
    for entry in bad_entries:
        with pytest.raises(jsonschema.ValidationError):
            validate_cio_body(json.dumps({"batch": [entry]}).encode())


def test_entry_shapes_basic_auth_and_call_time_ids(hub: Collector, make_client: MakeClient) -> None:
    """identify / event / add_device entries have Customer.io's shapes, Basic auth, ULIDs fixed at call time."""
    client = make_client(flush_interval=5.0)
    before = time.time()
    client.identify("user-1", {"plan": "pro", "seats": 3})
    client.track("user-1", "purchase", {"amount": 99.5, "tags": ["a", "b"]})
    client.track("user-1", "purchase", {"amount": 1})
    client.register_device(
        "user-1",
        device_id="dev-1",
        platform="ios",
        apn_token="apn-token",
        os_version="17.2",
        model="iPhone15,2",
        app_version="2.1.0",
        last_active_at=1_700_000_000_123,  # milliseconds
        attributes={"push_enabled": True, "locale": "en-GB"},
    )
    client.register_device("user-2", device_id="dev-2", platform="android", fcm_token="fcm-token")
    client.register_device("user-3", device_id="dev-3", platform="ios", fcm_token="fcm-on-ios")
    after = time.time()
    assert client.flush(timeout=10.0)

    requests = batch_requests(hub)
    assert len(requests) == 1 and requests[0].status == 200
    expected_auth = "Basic " + base64.b64encode(f"{SITE}:{CIO_KEY}".encode()).decode()
    assert requests[0].header("Authorization") == expected_auth
    identify, event, event2, ios, android, ios_fcm = entries_of(requests[0])

    ts = identify.pop("timestamp")
    assert int(before) <= ts <= int(after) and type(ts) is int
    assert identify == {
        "type": "person",
        "identifiers": {"id": "user-1"},
        "action": "identify",
        "attributes": {"plan": "pro", "seats": 3},
    }
    for e in (event, event2):
        assert _ULID.match(e["id"]), e["id"]
        assert int(before * 1000) - 1 <= ulid_ms(e["id"]) <= int(after * 1000) + 1
        assert int(before) <= e["timestamp"] <= int(after)
    assert event["id"] != event2["id"]
    assert {k: v for k, v in event.items() if k not in ("id", "timestamp")} == {
        "type": "person",
        "identifiers": {"id": "user-1"},
        "action": "event",
        "name": "purchase",
        "attributes": {"amount": 99.5, "tags": ["a", "b"]},
    }
    assert ios == {
        "type": "person",
        "identifiers": {"id": "user-1"},
        "action": "add_device",
        "device": {
            "token": "apn-token",
            "platform": "ios",
            "last_used": 1_700_000_000,
            "attributes": {
                "push_enabled": "true",
                "locale": "en-GB",
                "device_os": "17.2",
                "device_model": "iPhone15,2",
                "app_version": "2.1.0",
            },
        },
    }
    assert android["device"]["token"] == "fcm-token" and android["device"]["platform"] == "android"
    assert int(before) <= android["device"]["last_used"] <= int(after)
    assert "attributes" not in android["device"]
    assert ios_fcm["device"] == {
        "token": "fcm-on-ios",
        "platform": "ios",
        "last_used": ios_fcm["device"]["last_used"],
    }

    assert hub.count("opencdp") == 6
    stats = client.stats().destinations
    assert stats["customerio"].delivered == 6 and stats["opencdp"].delivered == 6
    assert_invariant(client)
    assert assert_cio_bodies_valid(hub) == 1


def test_region_urls() -> None:
    """us and eu resolve to Customer.io's track hosts; ``url`` overrides (trailing / dropped)."""
    policy = RetryPolicy()
    cases = [
        (CustomerIoConfig(site_id="s", api_key="k"), "https://track.customer.io"),
        (CustomerIoConfig(site_id="s", api_key="k", region="us"), "https://track.customer.io"),
        (CustomerIoConfig(site_id="s", api_key="k", region="eu"), "https://track-eu.customer.io"),
        (
            CustomerIoConfig(site_id="s", api_key="k", region="eu", url="http://127.0.0.1:9/"),
            "http://127.0.0.1:9",
        ),
    ]
    for config, host in cases:
        assert config.base_url == host
        dest = CustomerIoDestination(config, timeout=1.0, max_batch_size=10, policy=policy)
        try:
            assert dest.url == host + "/api/v2/batch"
            assert "k" not in repr(dest).replace("track", "")
        finally:
            dest.close()
    assert "'k'" not in repr(cases[0][0])


@pytest.mark.parametrize(
    "build",
    [
        lambda: CDPClient(cdp_api_key="k", send_to_customer_io=True),
        lambda: CustomerIoConfig(site_id="", api_key="k"),
        lambda: CustomerIoConfig(site_id="  ", api_key="k"),
        lambda: CustomerIoConfig(site_id="s", api_key=""),
        lambda: CustomerIoConfig(site_id="s", api_key="k", region="ap"),
        lambda: CustomerIoConfig(site_id="s", api_key="k", url="ftp://example.com"),
        lambda: CDPClient(cdp_api_key="k", send_to_customer_io=True, customer_io={"site_id": "s"}),
    ],
    ids=["no-config", "empty-site", "blank-site", "empty-key", "unknown-region", "bad-url", "not-a-config"],
)
def test_config_errors(build: Callable[[], object]) -> None:
    """Dual-write misconfiguration is a ConfigError at construction."""
    with pytest.raises(ConfigError):
        build()


def test_dual_write_off_sends_nothing_to_customerio(hub: Collector, make_client: MakeClient) -> None:
    """Without send_to_customer_io (even with a config), nothing goes to /api/v2/batch."""
    client = make_client(send_to_customer_io=False)
    client.identify("u", {"a": 1})
    client.track("u", "e", {"b": 2})
    client.register_device("u", device_id="d", platform="android", fcm_token="t")
    assert client.flush(timeout=10.0)
    assert hub.count("opencdp") == 3
    assert batch_requests(hub) == []
    assert set(client.stats().destinations) == {"opencdp"}
    assert_invariant(client)
    assert assert_cio_bodies_valid(hub) == 0


@pytest.mark.slow  # make test runs it; the matrix cells skip it (CI time)
def test_thousands_of_large_events_split_under_500kb(hub: Collector, make_client: MakeClient) -> None:
    """2,000 events of 5-10 KB: every body < 500,000 bytes, none lost, order kept, ids unique."""
    client = make_client(max_batch_size=250, flush_interval=0.2)
    n = 2000
    for i in range(n):
        props = {f"field_{k}": chr(97 + k) * 700 for k in range(7 + i % 7)}  # 7..13 values of 700 bytes
        props["n"] = i
        client.track(f"user-{i % 13}", "big_event", props)
    report = client.flush(timeout=30.0)
    assert report, report

    ok = batch_requests(hub)
    assert all(r.status == 200 for r in ok)
    sizes = [len(r.body) for r in ok]
    assert max(sizes) < MAX_BODY_BYTES
    assert max(sizes) > 400_000  # units are filled close to the limit, not cut needlessly small
    events = hub.events("customerio")
    assert [e["attributes"]["n"] for e in events] == list(range(n))
    assert len({e["id"] for e in events}) == n
    assert hub.count("opencdp") == n
    stats = client.stats().destinations
    assert stats["customerio"].delivered == n and stats["opencdp"].delivered == n
    assert_invariant(client)
    assert assert_cio_bodies_valid(hub) == len(ok)


def test_entry_over_32kb_dropped_too_large(hub: Collector, make_client: MakeClient) -> None:
    """An entry over 32,000 bytes is dropped for Customer.io (too_large, on_error); OpenCDP gets it."""
    errors = Errors()
    client = make_client(on_error=errors)
    client.track("u-big", "huge", {"blob": "x" * 40_000})
    near = {"blob": "y" * (MAX_ENTRY_BYTES - 300)}
    client.track("u-near", "near_limit", near)
    assert errors.wait(1, "customerio")
    client.flush(timeout=10.0)

    (record,) = errors.records("customerio")
    assert (record.reason, record.identifier, record.event_name, record.call) == (
        "too_large",
        "u-big",
        "huge",
        "track",
    )
    assert record.properties == {"blob": "x" * 40_000}
    assert [e["name"] for e in hub.events("customerio")] == ["near_limit"]
    assert sorted(e["body"]["eventName"] for e in hub.events("opencdp")) == ["huge", "near_limit"]
    stats = client.stats().destinations
    assert dict(stats["customerio"].dropped) == {"too_large": 1} and stats["customerio"].delivered == 1
    assert stats["opencdp"].delivered == 2 and not stats["opencdp"].dropped
    assert_invariant(client)
    assert assert_cio_bodies_valid(hub) == 1


def test_web_device_is_not_mirrored(hub: Collector, make_client: MakeClient) -> None:
    """A web device goes to OpenCDP only; Customer.io counts it dropped (unsupported_platform)."""
    errors = Errors()
    client = make_client(on_error=errors)
    client.register_device("u", device_id="browser-1", platform="web", fcm_token="web-push")
    client.register_device("u", device_id="phone-1", platform="android", fcm_token="fcm")
    assert errors.wait(1, "customerio")
    assert client.flush(timeout=10.0).destinations["opencdp"]
    (record,) = errors.records("customerio")
    assert (record.reason, record.call, record.identifier) == ("unsupported_platform", "register_device", "u")
    assert [e["device"]["token"] for e in hub.events("customerio")] == ["fcm"]
    assert hub.count("opencdp") == 2
    assert dict(client.stats().destinations["customerio"].dropped) == {"unsupported_platform": 1}
    assert_invariant(client)
    assert assert_cio_bodies_valid(hub) == 1


def test_207_partial_failure_exact_accounting(hub: Collector, make_client: MakeClient) -> None:
    """207: the named entries fail (rejected, Customer.io's reason), the rest count delivered, nothing resent."""
    hub.reject_cio_entries(lambda e: "invalid event name" if e.get("name") == "bad" else None)
    hub.reject_cio_entries(lambda e: "attribute too long" if (e.get("attributes") or {}).get("bad") else None)
    errors = Errors()
    client = make_client(on_error=errors, flush_interval=5.0)
    client.identify("u-0", {"bad": True})
    for i in range(10):
        client.track(f"u-{i}", "bad" if i in (2, 7) else "good", {"i": i})
    report = client.flush(timeout=10.0)
    assert errors.wait(3, "customerio")

    (request,) = batch_requests(hub)
    assert request.status == 207
    assert [e["attributes"]["i"] for e in hub.events("customerio")] == [0, 1, 3, 4, 5, 6, 8, 9]
    cio = report.destinations["customerio"]
    assert (cio.delivered, dict(cio.failed), cio.pending) == (8, {"rejected": 3}, 0)
    assert report.destinations["opencdp"].delivered == 11
    stats = client.stats().destinations["customerio"]
    assert (stats.delivered, dict(stats.failed), stats.retried, stats.dropped_total) == (
        8,
        {"rejected": 3},
        0,
        0,
    )

    records = errors.records("customerio")
    assert errors.records("opencdp") == []
    assert sorted((r.call, r.identifier, r.event_name, r.reason) for r in records) == [
        ("identify", "u-0", None, "rejected"),
        ("track", "u-2", "bad", "rejected"),
        ("track", "u-7", "bad", "rejected"),
    ]
    assert sorted(r.properties.get("i", -1) for r in records) == [-1, 2, 7]
    messages = {type(err).__name__: str(err) for err, evs in errors.calls if evs[0].event_name == "bad"}
    assert "invalid event name" in messages["DeliveryError"]
    assert any("attribute too long" in str(err) for err, _ in errors.calls)
    assert_invariant(client)
    assert assert_cio_bodies_valid(hub) == 1


def test_413_splits_in_halves_and_drops_a_single_too_large_entry(
    hub: Collector, make_client: MakeClient
) -> None:
    """413 splits the batch in halves until each fits; one entry that still gets 413 is dropped."""
    hub.set_cio_max_body(4000)
    errors = Errors()
    client = make_client(on_error=errors, flush_interval=5.0)
    for i in range(7):
        size = 4500 if i == 3 else 300
        client.track("u", f"e{i}", {"pad": "p" * size, "i": i})
    report = client.flush(timeout=10.0)
    assert errors.wait(1, "customerio")

    statuses = [(r.status, [e["attributes"]["i"] for e in entries_of(r)]) for r in batch_requests(hub)]
    assert statuses == [
        (413, [0, 1, 2, 3, 4, 5, 6]),
        (200, [0, 1, 2]),
        (413, [3, 4, 5, 6]),
        (413, [3, 4]),
        (413, [3]),
        (200, [4]),
        (200, [5, 6]),
    ]
    assert [e["attributes"]["i"] for e in hub.events("customerio")] == [0, 1, 2, 4, 5, 6]
    cio = report.destinations["customerio"]
    assert (cio.delivered, dict(cio.dropped), dict(cio.failed)) == (6, {"too_large": 1}, {})
    (record,) = errors.records("customerio")
    assert (record.reason, record.event_name) == ("too_large", "e3")
    assert hub.count("opencdp") == 7
    assert_invariant(client)
    assert assert_cio_bodies_valid(hub) == 7


def test_429_retry_after_is_honoured_and_resend_keeps_ids(hub: Collector, make_client: MakeClient) -> None:
    """429 with Retry-After: 1 waits at least a second, then resends the identical body (same ids)."""
    hub.rate_limit_next(1, retry_after="1", path=BATCH_PATH)
    client = make_client(flush_interval=5.0)
    for i in range(5):
        client.track("u", "e", {"i": i})
    assert client.flush(timeout=10.0)

    first, second = batch_requests(hub)
    assert (first.status, second.status) == (429, 200)
    assert second.time - first.time >= 0.95
    assert first.body == second.body
    stats = client.stats().destinations["customerio"]
    assert (stats.delivered, stats.retried, stats.failed_total) == (5, 5, 0)
    assert len({e["id"] for e in hub.events("customerio")}) == 5
    assert_invariant(client)
    assert assert_cio_bodies_valid(hub) == 2


def test_5xx_is_retried_until_accepted(hub: Collector, make_client: MakeClient) -> None:
    """503 and 500 are retried with the shared policy; the batch is then delivered once."""
    hub.fail_next(1, 503, path=BATCH_PATH)
    hub.fail_next(1, 500, path=BATCH_PATH)
    client = make_client(flush_interval=5.0)
    client.identify("u", {"a": 1})
    client.track("u", "e", {"b": 2})
    assert client.flush(timeout=10.0)
    assert [r.status for r in batch_requests(hub)] == [503, 500, 200]
    assert hub.count("customerio") == 2
    assert client.stats().destinations["customerio"].retried == 4
    assert_invariant(client)
    assert assert_cio_bodies_valid(hub) == 3


def test_400_fails_the_batch_without_retry(hub: Collector, make_client: MakeClient) -> None:
    """400: the whole batch fails (http_400), reported once per entry, never resent; OpenCDP unaffected."""
    hub.fail_next(1, 400, path=BATCH_PATH, body={"errors": [{"reason": "malformed batch"}]})
    errors = Errors()
    client = make_client(on_error=errors, flush_interval=5.0)
    for i in range(4):
        client.track("u", "e", {"i": i})
    report = client.flush(timeout=10.0)
    assert errors.wait(4, "customerio")
    assert [r.status for r in batch_requests(hub)] == [400]
    assert dict(report.destinations["customerio"].failed) == {"http_400": 4}
    assert report.destinations["opencdp"].delivered == 4
    (error, records) = errors.calls[0]
    assert "HTTP 400" in str(error) and "malformed batch" in str(error) and len(records) == 4
    assert client.stats().destinations["customerio"].retried == 0
    assert_invariant(client)
    assert assert_cio_bodies_valid(hub) == 1


def test_401_fails_and_warns_once_about_credentials(hub: Collector, make_client: MakeClient) -> None:
    """401: failed, not retried, one credentials warning for many batches; keys never logged."""
    log = RecordingLogger()
    errors = Errors()
    client = make_client(cio_key="wrong-key", logger=log, on_error=errors, flush_interval=5.0)
    for round_ in range(3):
        client.track("u", "e", {"round": round_})
        client.flush(timeout=10.0)
    assert errors.wait(3, "customerio")
    assert [r.status for r in batch_requests(hub)] == [401, 401, 401]
    stats = client.stats().destinations
    assert dict(stats["customerio"].failed) == {"http_401": 3} and stats["customerio"].retried == 0
    assert stats["opencdp"].delivered == 3
    credential_lines = [line for _, line in log.lines if "check customer_io site_id and api_key" in line]
    assert len(credential_lines) == 1
    secrets = ("wrong-key", base64.b64encode(f"{SITE}:wrong-key".encode()).decode(), KEY)
    texts = [line for _, line in log.lines] + [str(err) for err, _ in errors.calls]
    assert not [t for t in texts for s in secrets if s in t]
    assert_invariant(client)
    assert assert_cio_bodies_valid(hub) == 3


@pytest.mark.parametrize("trouble", ["down", "slow"])
def test_customerio_trouble_does_not_slow_opencdp_then_catches_up(
    trouble: str, hub: Collector, cio: Collector, make_client: MakeClient
) -> None:
    """Customer.io down (refusing) or slow: OpenCDP gets the same events as fast as with it
    healthy (within 1 s of the baseline); afterwards Customer.io gets everything, no duplicate ids."""
    client = make_client(cio_url=cio.url, max_retries=50, retry_max_time=30.0, timeout_ms=5_000)
    n = 300
    client.track("warm", "up", {})
    assert client.flush(timeout=10.0)

    def phase(tag: str, total: int) -> float:
        start = time.monotonic()
        for i in range(n):
            client.track(f"user-{i % 17}", "viewed", {"phase": tag, "i": i})
        assert hub.wait_for(total, "opencdp", timeout=20.0)
        return time.monotonic() - start

    baseline = phase("baseline", 1 + n)
    assert client.flush(timeout=10.0)
    if trouble == "down":
        cio.go_down()
    else:
        cio.set_latency(1.5, path=BATCH_PATH)
    troubled = phase("trouble", 1 + 2 * n)
    opencdp = client.stats().destinations["opencdp"]
    cio_stats = client.stats().destinations["customerio"]
    assert troubled <= baseline + 1.0, (baseline, troubled)
    assert cio_stats.delivered <= 1 + n < cio_stats.enqueued  # Customer.io really was behind
    assert (opencdp.failed_total, opencdp.dropped_total) == (0, 0)
    sent = Counter(
        (e["body"]["properties"].get("phase"), e["body"]["properties"].get("i")) for e in hub.events()
    )
    assert sent == Counter([(None, None)] + [(p, i) for p in ("baseline", "trouble") for i in range(n)])

    if trouble == "down":
        cio.come_back()
    else:
        cio.set_latency(0, path=BATCH_PATH)
    report = client.flush(timeout=30.0)
    assert report, report
    events = cio.events("customerio")
    assert len(events) == 1 + 2 * n
    assert len({e["id"] for e in events}) == len(events)
    assert [(e["attributes"].get("phase"), e["attributes"].get("i")) for e in events] == [(None, None)] + [
        (p, i) for p in ("baseline", "trouble") for i in range(n)
    ]
    assert batch_requests(hub) == []  # Customer.io went to its own host only
    opencdp = client.stats().destinations["opencdp"]
    assert (opencdp.delivered, opencdp.failed_total, opencdp.dropped_total) == (1 + 2 * n, 0, 0)
    assert_invariant(client)
    assert assert_cio_bodies_valid(cio) >= 2


def test_backlog_is_bounded_newest_dropped_opencdp_unaffected(
    hub: Collector, cio: Collector, make_client: MakeClient
) -> None:
    """While Customer.io is down its queue stays bounded: the newest calls are dropped (queue_full),
    the oldest are kept in order and delivered when it is back; OpenCDP loses nothing."""
    client = make_client(
        cio_url=cio.url, max_queue_size=40, max_batch_size=20, max_retries=50, retry_max_time=30.0
    )
    cio.go_down()
    n = 200
    for chunk in range(n // 20):
        for i in range(chunk * 20, chunk * 20 + 20):
            client.track("u", "e", {"i": i})
        assert hub.wait_for(chunk * 20 + 20, "opencdp", timeout=10.0)
    during = client.stats().destinations["customerio"]
    assert during.queued <= 40
    assert during.dropped.get("queue_full", 0) >= n - 60
    cio.come_back()
    assert client.flush(timeout=30.0).destinations["customerio"].pending == 0

    kept = [e["attributes"]["i"] for e in cio.events("customerio")]
    assert 40 <= len(kept) <= 60
    assert kept == list(range(len(kept)))  # the oldest, in order: the newest were dropped
    stats = client.stats().destinations
    assert dict(stats["customerio"].dropped) == {"queue_full": n - len(kept)}
    assert stats["customerio"].delivered == len(kept) and stats["customerio"].failed_total == 0
    assert (stats["opencdp"].delivered, stats["opencdp"].dropped_total, stats["opencdp"].failed_total) == (
        n,
        0,
        0,
    )
    assert_invariant(client)
    assert assert_cio_bodies_valid(cio) >= 1


def test_flush_returns_after_the_on_error_reports_of_call_time_drops(
    hub: Collector, make_client: MakeClient
) -> None:
    """Drops decided at call time (web device, 32 KB entry) are reported before flush() returns."""
    errors = Errors()

    def slow_on_error(error: BaseException, events: Sequence[FailedEvent]) -> None:
        time.sleep(0.02)  # a callback doing real work (e.g. writing to a dead-letter store)
        errors(error, events)

    client = make_client(on_error=slow_on_error, flush_interval=5.0)
    for i in range(20):
        client.register_device("u", device_id=f"browser-{i}", platform="web", fcm_token="web-push")
    client.track("u", "huge", {"blob": "x" * 40_000})
    assert client.flush(timeout=10.0).destinations["opencdp"]
    reasons = sorted(r.reason for r in errors.records("customerio"))  # no waiting: already reported
    assert reasons == ["too_large"] + ["unsupported_platform"] * 20
    assert_invariant(client)


def test_entries_built_from_records_match_call_time_entries_byte_for_byte() -> None:
    """A record (the OpenCDP body and a ULID value) becomes the very bytes the call-time encoder
    makes from the same call: same Structs, same id, timestamp and properties JSON."""
    from cdp_batcher._event import IDENTIFY, TRACK, Raw, encode, format_ulid, ulid_seconds, ulid_value
    from cdp_batcher.destinations.opencdp import OpenCdpDestination

    cio = CustomerIoDestination(
        CustomerIoConfig(site_id=SITE, api_key=CIO_KEY), timeout=1.0, max_batch_size=10, policy=RetryPolicy()
    )
    ocdp = OpenCdpDestination(
        api_key=KEY, endpoints=["http://127.0.0.1:9"], timeout=1.0, concurrency=1, policy=RetryPolicy()
    )
    props = {"amount": 99.5, "tags": ["a", "é", '"q"'], "nested": {"x": None}}
    for identifier, name in (("user-1", "purchase"), ('we"ird\\id ü', "näme \n")):
        value = ulid_value()
        raw = Raw(encode(props))
        body = ocdp.encode_track(identifier, name, raw, 0.0)
        entry = cio.entry((TRACK, body, value))
        expected = encode(
            _event_struct("event", identifier, name, format_ulid(value), ulid_seconds(value), raw)
        )
        assert entry == expected
        assert json.loads(entry)["id"] == format_ulid(value)
        validate_cio_body(b'{"batch":[' + entry + b"]}")
        person = cio.entry((IDENTIFY, ocdp.encode_identify(identifier, raw, 0.0), value))
        assert person == encode(_event_struct("identify", identifier, None, None, ulid_seconds(value), raw))
        assert cio.entry((TRACK, entry)) is entry  # finished entries pass through
    cio.close()
    ocdp.close()


def _event_struct(action: str, identifier: str, name: Any, event_id: Any, seconds: int, raw: Any) -> Any:
    from cdp_batcher._event import CioEvent, CioIdentifiers, CioIdentify

    if action == "event":
        return CioEvent(CioIdentifiers(identifier), "event", name, event_id, seconds, raw)
    return CioIdentify(CioIdentifiers(identifier), "identify", raw, seconds)


def test_entry_of_exactly_32000_bytes_is_sent_and_one_more_byte_is_dropped(
    hub: Collector, make_client: MakeClient
) -> None:
    """At the record limit's edge (the fast path's bound is conservative by a byte) the exact
    check decides: entries of 31,999 (fast path) and 32,000 bytes go out, 32,001 is too_large."""
    errors = Errors()
    client = make_client(on_error=errors)
    probe = len(b'{"type":"person","identifiers":{"id":"u-edge"},"action":"event","name":"edge","id":"')
    overhead = probe + len('01HZX0000000000000000000AA","timestamp":1700000000,"attributes":{"blob":""}}')
    assert len(str(int(time.time()))) == 10
    for extra in (-1, 0, 1):
        client.track("u-edge", "edge", {"blob": "z" * (MAX_ENTRY_BYTES - overhead + extra)})
    assert errors.wait(1, "customerio")
    assert client.flush(timeout=10.0).destinations["opencdp"].delivered == 3
    sizes = [len(e) for r in batch_requests(hub) for e in re.findall(rb'\{"type".*?\}\}', r.body)]
    assert sizes == [MAX_ENTRY_BYTES - 1, MAX_ENTRY_BYTES]
    (record,) = errors.records("customerio")
    assert record.reason == "too_large" and len(record.properties["blob"]) == MAX_ENTRY_BYTES - overhead + 1
    assert_invariant(client)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_dual_write_in_a_forked_child_pairs_its_own_queues(hub: Collector, make_client: MakeClient) -> None:
    """After a fork the child's two fresh queues share a fresh lock again (one put for both) and
    it delivers its own calls to both destinations; the parent's queued calls stay the parent's."""
    client = make_client(flush_interval=60.0)
    client.track("parent", "before_fork", {"n": 1})
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report through the pipe, never raise past this point
        code = 1
        try:
            routes = client._routes
            paired = routes[1].queue.lock is routes[0].queue.lock and routes[1]._lock is routes[0]._lock
            empty = len(routes[0].queue) == 0 and len(routes[1].queue) == 0
            for i in range(3):
                client.track("child", "in_child", {"n": i})
            client.identify("child", {"plan": "pro"})
            report = client.flush(timeout=10.0)
            result = {"paired": paired, "empty": empty, "ok": bool(report)}
            result.update({name: d.delivered for name, d in report.destinations.items()})
            os.write(write, json.dumps(result).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0, data
    assert json.loads(data) == {"paired": True, "empty": True, "ok": True, "opencdp": 4, "customerio": 4}
    assert client.flush(timeout=10.0)
    names = Counter((e["identifiers"]["id"], e.get("name")) for e in hub.events("customerio"))
    assert names == {("child", "in_child"): 3, ("child", None): 1, ("parent", "before_fork"): 1}
    assert_invariant(client)


# ---------------------------------------------------------------------------------- pacing
def test_unhurried_units_are_built_in_slices_with_a_pause_after_each(
    hub: Collector, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A unit nobody waits for is built SLICE entries at a time with a pause after each slice
    (the last one before the request); every entry still arrives once, in call order."""
    from cdp_batcher.destinations.customerio import SLICE

    paces = Paces(monkeypatch, customerio)
    client = make_client(max_batch_size=100, flush_interval=60.0, max_queue_size=10_000)
    n = 3 * 100
    for i in range(n):  # three full batches: each goes out at once, with no flush waiting
        client.track(f"user-{i}", "sliced", {"seq": i})
    assert hub.wait_for(n, "customerio", timeout=20)
    sizes = [len(entries_of(r)) for r in batch_requests(hub, 200)]
    assert sum(sizes) == n
    assert paces.count == sum(-(-size // SLICE) for size in sizes) >= 3 * (100 // SLICE)
    events = hub.events("customerio")
    assert [e["attributes"]["seq"] for e in events] == list(range(n))
    assert len({e["id"] for e in events}) == n
    assert client.flush(timeout=10)
    assert_invariant(client)


def test_a_flush_or_shutdown_is_never_paced_by_customerio(
    hub: Collector, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries a flush() or shutdown() waits for are built and sent with no pause. The batch
    size is above what is queued, so no full batch starts an (unhurried) send before the call."""
    paces = Paces(monkeypatch, customerio)
    client = make_client(max_batch_size=1000, flush_interval=60.0)
    for i in range(250):
        client.track(f"user-{i}", "waited", {"seq": i})
    assert client.flush(timeout=10)
    assert len(hub.events("customerio")) == 250 and paces.count == 0
    for i in range(250, 500):
        client.track(f"user-{i}", "waited", {"seq": i})
    assert client.shutdown(timeout=10)
    assert paces.count == 0
    assert [e["attributes"]["seq"] for e in hub.events("customerio")] == list(range(500))


def test_a_record_that_cannot_be_read_back_fails_alone_in_a_paced_unit(
    hub: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a paced (sliced) build, one record that cannot be read back is failed on its own
    (internal_error) and the other entries of the unit go out in one request, in order."""
    from cdp_batcher._event import TRACK, Raw, encode, ulid_value
    from cdp_batcher.destinations.customerio import SLICE
    from cdp_batcher.destinations.opencdp import OpenCdpDestination

    paces = Paces(monkeypatch, customerio)
    cio = CustomerIoDestination(
        CustomerIoConfig(site_id=SITE, api_key=CIO_KEY, url=hub.url),
        timeout=3.0,
        max_batch_size=100,
        policy=RetryPolicy(),
    )
    ocdp = OpenCdpDestination(
        api_key=KEY, endpoints=["http://127.0.0.1:9"], timeout=1.0, concurrency=1, policy=RetryPolicy()
    )
    try:
        items: list[Any] = [
            (TRACK, ocdp.encode_track(f"user-{i}", "paced", Raw(encode({"seq": i})), 0.0), ulid_value())
            for i in range(3 * SLICE)
        ]
        bad = (TRACK, b"{not json", ulid_value())
        items.insert(2 * SLICE + 3, bad)  # in the third slice, after two were built
        ctl = RecordingControl(unhurried=True)
        cio.send(items, ctl)
    finally:
        cio.close()
        ocdp.close()
    assert ctl.failed_calls == [([bad], "internal_error")]
    assert [item for batch in ctl.delivered_calls for item in batch] == [i for i in items if i is not bad]
    (request,) = batch_requests(hub, 200)
    assert [e["attributes"]["seq"] for e in entries_of(request)] == list(range(3 * SLICE))
    # the sliced build paused before its second and third slices, then once before the request
    assert paces.count == 3
