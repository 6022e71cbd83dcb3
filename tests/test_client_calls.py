"""The three queued calls: wire bodies (golden vectors), auth, validation and serialization."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import logging
import math
import uuid
from pathlib import Path
from typing import Any

import pytest

from cdp_batcher import (
    CDPClient,
    ConfigError,
    SerializationError,
    ValidationError,
)
from cdp_batcher.testing import Collector

from conftest import API_KEY, MakeClient

pytestmark = pytest.mark.timeout(30)

VECTORS_PATH = Path(__file__).resolve().parent / "data" / "opencdp-conformance-vectors.json"


def _vectors() -> dict[str, Any]:
    # A missing file must fail the tests, not skip them.
    data = json.loads(VECTORS_PATH.read_text())
    return {v["id"]: v for v in data["vectors"]}


def test_golden_vectors_identify_track_device(collector: Collector, make_client: MakeClient) -> None:
    """identify/track/registerDevice send exactly the conformance vectors' bodies to their paths."""
    vectors = _vectors()
    client = make_client()
    client.identify("user_123", {"plan": "pro", "name": "Alice"})
    client.track("user_123", "purchase", {"amount": 99.9})
    client.register_device(
        "user_123",
        device_id="device-abc",
        platform="android",
        fcm_token="fcm-token-xyz",
        model="Pixel 8",
        os_version="14",
        app_version="1.0.0",
    )
    assert client.flush(timeout=10)
    got = {(r.method, r.path): r.json for r in collector.requests}
    for vid in ("identify-basic", "track-basic", "register-device-android"):
        v = vectors[vid]
        assert got[(v["method"], v["path"])] == v["body"], vid


def test_golden_body_bytes_are_compact_json_in_vector_key_order(
    collector: Collector, make_client: MakeClient
) -> None:
    """The body on the wire is compact JSON with the contract's key order."""
    client = make_client()
    client.track("user_123", "purchase", {"amount": 99.9})
    assert client.flush(timeout=10)
    (req,) = [r for r in collector.requests if r.path == "/v1/persons/track"]
    assert req.body == b'{"identifier":"user_123","eventName":"purchase","properties":{"amount":99.9}}'


def test_ping_vector_and_auth_header(collector: Collector, make_client: MakeClient) -> None:
    """ping() GETs /v1/health/ping; every request carries the raw key and JSON content type."""
    vector = _vectors()["ping"]
    client = make_client()
    result = client.ping()
    assert result.host == collector.url and result.status == 200
    client.track("u", "e")
    assert client.flush(timeout=10)
    ping = [r for r in collector.requests if r.path == vector["path"]]
    assert ping and ping[0].method == "GET" and ping[0].body == b""
    track = next(r for r in collector.requests if r.path == "/v1/persons/track")
    assert track.header("Authorization") == API_KEY
    assert track.header("Content-Type") == "application/json"


def test_properties_default_to_empty_object(collector: Collector, make_client: MakeClient) -> None:
    """properties left out (or None) are sent as {} for identify and track."""
    client = make_client()
    client.identify("u1")
    client.track("u1", "signed_in", None)
    assert client.flush(timeout=10)
    bodies = [e["body"] for e in collector.events()]
    assert {"identifier": "u1", "properties": {}} in bodies
    assert {"identifier": "u1", "eventName": "signed_in", "properties": {}} in bodies


def test_unset_device_fields_are_omitted_not_null(collector: Collector, make_client: MakeClient) -> None:
    """Optional device fields left unset are omitted from the body, never sent as null."""
    client = make_client()
    client.register_device("u1", device_id="d1", platform="ios", apn_token="apn")
    assert client.flush(timeout=10)
    (event,) = collector.events()
    assert event["body"] == {"identifier": "u1", "deviceId": "d1", "platform": "ios", "apnToken": "apn"}


def test_mutating_properties_after_the_call_changes_nothing(
    collector: Collector, make_client: MakeClient
) -> None:
    """The event is encoded at call time: later changes to the caller's dict are not sent."""
    client = make_client()
    props: dict[str, Any] = {"items": ["a"], "total": 1}
    client.track("u1", "cart", props)
    props["total"] = 2
    props["items"].append("b")
    props["new"] = True
    assert client.flush(timeout=10)
    assert collector.events()[0]["body"]["properties"] == {"items": ["a"], "total": 1}


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


def test_rich_values_serialize(collector: Collector, make_client: MakeClient) -> None:
    """datetime, date, Decimal, UUID, enum, set, tuple and dataclasses become JSON."""
    client = make_client()
    uid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    client.track(
        "u1",
        "rich",
        {
            "when": datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone.utc),
            "day": datetime.date(2024, 5, 1),
            "price": decimal.Decimal("19.99"),
            "id": uid,
            "color": Color.RED,
            "tags": {"x"},
            "pair": (1, 2),
            "point": Point(1, 2),
        },
    )
    assert client.flush(timeout=10)
    props = collector.events()[0]["body"]["properties"]
    assert props == {
        "when": "2024-05-01T12:30:00Z",
        "day": "2024-05-01",
        "price": 19.99,
        "id": str(uid),
        "color": "red",
        "tags": ["x"],
        "pair": [1, 2],
        "point": {"x": 1, "y": 2},
    }


def test_nan_and_infinity_never_produce_invalid_json(collector: Collector, make_client: MakeClient) -> None:
    """NaN and ±Infinity are sent as null: the body stays valid JSON."""
    client = make_client()
    client.track("u1", "nums", {"a": math.nan, "b": math.inf, "c": -math.inf, "d": 1.5})
    assert client.flush(timeout=10)
    (req,) = [r for r in collector.requests if r.path == "/v1/persons/track"]
    assert json.loads(req.body.decode())["properties"] == {"a": None, "b": None, "c": None, "d": 1.5}


@pytest.mark.parametrize("identifier", [None, "", "   ", "\t\n"])
def test_empty_identifier_rejected_in_caller(make_client: MakeClient, identifier: Any) -> None:
    """None, empty and white-space identifiers raise 'Identifier cannot be empty' for every call."""
    client = make_client()
    for call in (
        lambda: client.track(identifier, "e"),
        lambda: client.identify(identifier),
        lambda: client.register_device(identifier, device_id="d", platform="ios", apn_token="t"),
    ):
        with pytest.raises(ValidationError, match="^Identifier cannot be empty$"):
            call()
    assert client.stats().enqueued == 0


@pytest.mark.parametrize("name", [None, "", "  "])
def test_empty_event_name_rejected(make_client: MakeClient, name: Any) -> None:
    """Empty or white-space event names raise 'Event name cannot be empty'; nothing is queued."""
    client = make_client()
    with pytest.raises(ValidationError, match="^Event name cannot be empty$"):
        client.track("u1", name)
    assert client.stats().destinations["opencdp"].enqueued == 0


def test_properties_must_be_a_mapping(make_client: MakeClient) -> None:
    """A list or string as properties is rejected, naming the type; ValidationError is a ValueError."""
    client = make_client()
    with pytest.raises(ValidationError, match="properties must be a mapping.*list") as info:
        client.track("u1", "e", ["a"])  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    with pytest.raises(ValidationError, match="properties must be a mapping.*str"):
        client.identify("u1", "plan=pro")  # type: ignore[arg-type]


def test_unserializable_value_names_the_key(make_client: MakeClient) -> None:
    """A value that cannot become JSON raises SerializationError (TypeError) naming the key path."""
    client = make_client()

    class Opaque:
        pass

    with pytest.raises(SerializationError, match=r"properties\['cart'\]\['item'\]") as info:
        client.track("u1", "e", {"ok": 1, "cart": {"item": Opaque()}})
    assert isinstance(info.value, TypeError)
    assert "Opaque" in str(info.value)
    with pytest.raises(SerializationError, match=r"properties\['when'\]"):
        client.identify("u1", {"when": object()})
    assert client.stats().enqueued == 0


def test_bad_event_does_not_poison_the_next(collector: Collector, make_client: MakeClient) -> None:
    """After a rejected call, the good calls around it are delivered."""
    client = make_client()
    client.track("u1", "before")
    with pytest.raises(SerializationError):
        client.track("u1", "bad", {"x": object()})
    client.track("u1", "after")
    assert client.flush(timeout=10)
    assert sorted(e["body"]["eventName"] for e in collector.events()) == ["after", "before"]
    assert client.stats().destinations["opencdp"].delivered == 2


def test_integer_identifier_is_sent_as_string(collector: Collector, make_client: MakeClient) -> None:
    """An int identifier is accepted and sent as its decimal string."""
    client = make_client()
    client.track(42, "e")  # type: ignore[arg-type]
    assert client.flush(timeout=10)
    assert collector.events()[0]["body"]["identifier"] == "42"


def test_identify_with_email_identifier_warns_once(
    collector: Collector, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """An email-looking identifier logs one warning (not one per call) and is still sent."""
    client = make_client()
    with caplog.at_level(logging.WARNING, logger="cdp_batcher"):
        client.identify("a@example.com", {"plan": "pro"})
        client.identify("b@example.com", {"plan": "pro"})
    assert client.flush(timeout=10)
    warnings = [r for r in caplog.records if "email address" in r.getMessage()]
    assert len(warnings) == 1
    assert collector.count() == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device_id": "", "platform": "ios", "apn_token": "t"}, "device ID required"),
        ({"device_id": None, "platform": "ios", "apn_token": "t"}, "device ID required"),
        ({"device_id": "d", "platform": "ios"}, "fcmToken or apnToken required"),
        (
            {"device_id": "d", "platform": "windows", "apn_token": "t"},
            "platform must be one of: android, ios, web",
        ),
    ],
)
def test_register_device_validation(make_client: MakeClient, kwargs: dict[str, Any], message: str) -> None:
    """register_device validates device id, token and platform with the SDK messages."""
    client = make_client()
    with pytest.raises(ValidationError, match=message):
        client.register_device("u1", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"cdp_api_key": ""}, "cdp_api_key must be a non-empty string"),
        ({"cdp_api_key": "k", "timeout_ms": 0}, "timeout_ms must be > 0"),
        ({"cdp_api_key": "k", "timeout_ms": "10"}, "timeout_ms must be an integer"),
        ({"cdp_api_key": "k", "max_batch_size": 0}, "max_batch_size must be >= 1"),
        ({"cdp_api_key": "k", "flush_interval": -1}, "flush_interval must be > 0"),
        ({"cdp_api_key": "k", "max_queue_size": True}, "max_queue_size must be an integer"),
        ({"cdp_api_key": "k", "cdp_endpoint": "ftp://x"}, "cdp_endpoint must be an http(s) URL"),
        (
            {"cdp_api_key": "k", "cdp_fallback_endpoints": "https://a"},
            "cdp_fallback_endpoints must be a list",
        ),
        ({"cdp_api_key": "k", "on_error": 3}, "on_error must be callable"),
        ({"cdp_api_key": "k", "logger": object()}, "logger must have debug/info/warning/error"),
        ({"cdp_api_key": "k", "send": "yes"}, "send must be True or False"),
        ({"cdp_api_key": "k", "retry_max_time": float("nan")}, "retry_max_time must be finite"),
    ],
)
def test_config_errors_are_precise(kwargs: dict[str, Any], fragment: str) -> None:
    """Bad settings raise ConfigError (a ValueError) naming the field and what was given."""
    with pytest.raises(ConfigError) as info:
        CDPClient(**kwargs)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_endpoints_are_normalized_and_deduplicated() -> None:
    """Base URLs are trimmed, trailing slashes dropped, duplicates removed, primary first."""
    client = CDPClient(
        cdp_api_key="k",
        cdp_endpoint="  http://127.0.0.1:9/base/ ",
        cdp_fallback_endpoints=["http://127.0.0.1:9/base", "http://127.0.0.1:10/"],
        send=False,
    )
    try:
        assert client.config.endpoints == ("http://127.0.0.1:9/base", "http://127.0.0.1:10")
    finally:
        client.shutdown(timeout=1)


def test_default_endpoints_and_concurrency_cap() -> None:
    """Defaults are the official gateways; max_concurrent_requests is capped at 30."""
    client = CDPClient(cdp_api_key="k", max_concurrent_requests=100, send=False)
    try:
        assert client.config.endpoints == (
            "https://api.opencdp.io/gateway/data-gateway",
            "https://api.opencdp.com/gateway/data-gateway",
            "https://api.opencdp.xyz/gateway/data-gateway",
        )
        assert client.config.max_concurrent_requests == 30
    finally:
        client.shutdown(timeout=1)


def test_key_never_in_repr_or_config_repr() -> None:
    """The API key never appears in the client's or the config's repr."""
    secret = "sk_live_very_secret_123"
    client = CDPClient(cdp_api_key=secret, send=False)
    try:
        assert secret not in repr(client)
        assert secret not in repr(client.config)
        assert secret not in str(client.config)
    finally:
        client.shutdown(timeout=1)


def test_send_false_validates_and_counts_but_sends_nothing(
    collector: Collector, make_client: MakeClient
) -> None:
    """send=False: calls are validated and counted as dropped (reason 'disabled'); nothing is sent."""
    client = make_client(send=False)
    client.track("u1", "e", {"a": 1})
    client.identify("u1")
    with pytest.raises(SerializationError):
        client.track("u1", "e", {"bad": object()})
    report = client.flush(timeout=5)
    stats = client.stats()
    assert stats.enqueued == 2
    assert stats.destinations["opencdp"].dropped == {"disabled": 2}
    assert report.pending == 0
    assert collector.requests == []
