"""OpenCDP SDK parity: register_device validation and wire names, ping failover, the error tree,
fail_on_exception, custom loggers and debug output that never shows the API key."""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import pytest

from cdp_batcher import (
    CDPClient,
    CDPError,
    ConfigError,
    DeliveryError,
    PingResult,
    SendResult,
    ValidationError,
)
from cdp_batcher.testing import Collector, RecordingLogger

pytestmark = pytest.mark.timeout(60)

KEY = "sk_live_parity_SECRET_4f9a2c7e"

MakeClient = Callable[..., CDPClient]


@pytest.fixture
def make_client(make_failover_client: MakeClient) -> MakeClient:
    """Clients on the primary/fallback pair of collectors (conftest)."""
    return make_failover_client


@pytest.fixture
def library_logger() -> Iterator[logging.Logger]:
    """The default ``cdp_batcher`` logger; its level is restored (debug=True lowers it)."""
    logger = logging.getLogger("cdp_batcher")
    level = logger.level
    yield logger
    logger.setLevel(level)


# -- register_device ----------------------------------------------------------------------------------


def test_register_device_wire_names(make_client: MakeClient, primary: Collector) -> None:
    """Python keywords become the SDK's wire names: deviceId, fcmToken, apnToken, osVersion, ..."""
    client = make_client()
    client.register_device(
        "user_1",
        device_id="dev-1",
        platform="ios",
        fcm_token="fcm-abc",
        apn_token="apn-def",
        name="Ann's phone",
        os_version="17.4",
        model="iPhone15,2",
        app_version="3.1.0",
        last_active_at=1_700_000_000,
        attributes={"locale": "en-GB", "push_enabled": True},
    )
    client.register_device("user_2", device_id="dev-2", platform="web", fcm_token="fcm-only")
    client.register_device("user_3", device_id="dev-3", platform="android", apn_token="apn-only")
    assert client.flush(timeout=10.0)
    # several requests are in flight at once: arrival order is not call order
    bodies = sorted((e["body"] for e in primary.events()), key=lambda body: str(body["identifier"]))
    assert [e["call"] for e in primary.events()] == ["register_device"] * 3
    assert bodies[0] == {
        "identifier": "user_1",
        "deviceId": "dev-1",
        "platform": "ios",
        "fcmToken": "fcm-abc",
        "apnToken": "apn-def",
        "name": "Ann's phone",
        "osVersion": "17.4",
        "model": "iPhone15,2",
        "appVersion": "3.1.0",
        "last_active_at": 1_700_000_000,
        "attributes": {"locale": "en-GB", "push_enabled": True},
    }
    assert bodies[1] == {
        "identifier": "user_2",
        "deviceId": "dev-2",
        "platform": "web",
        "fcmToken": "fcm-only",
    }
    assert bodies[2] == {
        "identifier": "user_3",
        "deviceId": "dev-3",
        "platform": "android",
        "apnToken": "apn-only",
    }
    assert all(r.path == "/v1/persons/registerDevice" for r in primary.requests)


DEVICE_OK: dict[str, Any] = {"device_id": "dev-1", "platform": "android", "fcm_token": "tok"}
PLATFORM_MESSAGE = "platform must be one of: android, ios, web"


@pytest.mark.parametrize(
    ("identifier", "overrides", "message"),
    [
        ("user_1", {"device_id": None}, "device ID required"),
        ("user_1", {"device_id": ""}, "device ID required"),
        ("user_1", {"device_id": "   "}, "device ID required"),
        ("user_1", {"fcm_token": None}, "fcmToken or apnToken required"),
        ("user_1", {"fcm_token": ""}, "fcmToken or apnToken required"),
        ("user_1", {"fcm_token": "  ", "apn_token": "\t"}, "fcmToken or apnToken required"),
        ("user_1", {"platform": "windows"}, PLATFORM_MESSAGE),
        ("user_1", {"platform": "iOS"}, PLATFORM_MESSAGE),
        ("user_1", {"platform": None}, PLATFORM_MESSAGE),
        ("", {}, "Identifier cannot be empty"),
        (None, {}, "Identifier cannot be empty"),
    ],
)
def test_register_device_validation_messages(
    make_client: MakeClient,
    primary: Collector,
    fallback: Collector,
    identifier: Any,
    overrides: dict[str, Any],
    message: str,
) -> None:
    """Each contract message is raised in the caller; nothing is queued or sent."""
    client = make_client(fail_on_exception=True)
    with pytest.raises(ValidationError, match="^" + re.escape(message)):
        client.register_device(identifier, **{**DEVICE_OK, **overrides})
    assert client.flush(timeout=5.0)
    assert client.stats().enqueued == 0
    assert not primary.requests and not fallback.requests


# -- ping -------------------------------------------------------------------------------------------------


def test_ping_reports_the_host_that_answered(
    make_client: MakeClient, primary: Collector, fallback: Collector
) -> None:
    """Primary up: it answers. Primary down: the fallback answers and is named."""
    client = make_client()
    first = client.ping()
    assert isinstance(first, PingResult) and first.host == primary.url and first.status == 200
    primary.go_down()
    second = client.ping()
    assert second.host == fallback.url and second.status == 200 and second.elapsed >= 0
    assert [r.path for r in fallback.requests] == ["/v1/health/ping"]
    assert KEY not in repr(second)


def test_ping_fails_over_on_a_5xx(make_client: MakeClient, primary: Collector, fallback: Collector) -> None:
    """A non-2xx ping answer moves on to the next host."""
    primary.fail_next(1, 503)
    assert make_client().ping().host == fallback.url


def test_ping_with_every_host_down_names_each_host(
    make_client: MakeClient, primary: Collector, fallback: Collector
) -> None:
    """DeliveryError names every host, in the order tried; host is the last one tried."""
    client = make_client()
    primary.go_down()
    assert client.ping().host == fallback.url  # the fallback is now tried first
    fallback.go_down()
    with pytest.raises(DeliveryError) as info:
        client.ping()
    error = info.value
    assert primary.url in str(error) and fallback.url in str(error)
    assert error.hosts_tried == (fallback.url, primary.url)
    assert error.host == primary.url and error.status_code is None
    assert KEY not in str(error) and KEY not in repr(error)


# -- the error tree and fail_on_exception --------------------------------------------------------------


def test_error_hierarchy() -> None:
    """ValidationError and ConfigError are also ValueErrors; DeliveryError is a CDPError."""
    assert issubclass(ValidationError, CDPError) and issubclass(ValidationError, ValueError)
    assert issubclass(ConfigError, CDPError) and issubclass(ConfigError, ValueError)
    assert issubclass(DeliveryError, CDPError) and not issubclass(DeliveryError, ValueError)
    with pytest.raises(ConfigError):
        CDPClient(cdp_api_key="")


def test_delivery_error_fields_survive_pickling(make_client: MakeClient, primary: Collector) -> None:
    """status_code, host, server_message and hosts_tried; the key is nowhere in it."""
    primary.fail_next(1, 422, body={"message": "unknown template"})
    client = make_client(fail_on_exception=True)
    with pytest.raises(DeliveryError) as info:
        client.send_push(identifiers={"id": "u1"}, transactional_message_id="NOPE")
    error = info.value
    assert (error.status_code, error.host, error.server_message) == (422, primary.url, "unknown template")
    assert error.hosts_tried == (primary.url,)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.status_code, copy.host, copy.server_message, copy.hosts_tried, str(copy)) == (
        422,
        primary.url,
        "unknown template",
        (primary.url,),
        str(error),
    )
    assert KEY.encode() not in pickle.dumps(error)


SENDS: Sequence[Any] = [
    pytest.param(
        "send_email",
        {"identifiers": {"id": "u1"}, "to": "a@example.com", "transactional_message_id": 1},
        id="email",
    ),
    pytest.param("send_push", {"identifiers": {"id": "u1"}, "transactional_message_id": 1}, id="push"),
    pytest.param("send_sms", {"identifiers": {"id": "u1"}, "to": "+15550001111", "body": "hi"}, id="sms"),
]


@pytest.mark.parametrize(("method", "fields"), SENDS)
def test_fail_on_exception_true_raises(
    make_client: MakeClient, primary: Collector, method: str, fields: Any
) -> None:
    """fail_on_exception=True: a delivery failure raises DeliveryError; nothing is logged as a warning."""
    log = RecordingLogger()
    primary.fail_next(1, 500)
    client = make_client(fail_on_exception=True, logger=log)
    with pytest.raises(DeliveryError) as info:
        getattr(client, method)(**fields)
    assert info.value.status_code == 500 and info.value.host == primary.url
    assert log.at("warning") == []


@pytest.mark.parametrize(("method", "fields"), SENDS)
def test_fail_on_exception_false_returns_falsy(
    make_client: MakeClient, primary: Collector, method: str, fields: Any
) -> None:
    """fail_on_exception=False (the default): a warning and a falsy result holding the error."""
    log = RecordingLogger()
    primary.fail_next(1, 500)
    client = make_client(logger=log)
    result = getattr(client, method)(**fields)
    assert isinstance(result, SendResult) and not result and result.ok is False
    assert isinstance(result.error, DeliveryError) and result.error.status_code == 500
    assert len(log.at("warning")) == 1 and f"{method}() failed" in log.at("warning")[0]
    ok = getattr(client, method)(**fields)
    assert ok and ok["success"] is True


# -- logging ------------------------------------------------------------------------------------------------


def test_custom_logger_receives_the_library_warnings(
    make_client: MakeClient, primary: Collector, fallback: Collector
) -> None:
    """Warnings from the calls and from the delivery threads go to the user's logger."""
    log = RecordingLogger()
    client = make_client(logger=log, retry_max_time=0.2, max_retries=1)
    client.identify("ann@example.com", {"plan": "pro"})  # the contract discourages email identifiers
    client.send_email(identifiers={"id": "u1"}, to="a@example.com", transactional_message_id=1, tracked=True)
    primary.fail_next(1, 500)
    client.send_sms(identifiers={"id": "u1"}, to="+15550001111", body="hi")
    primary.fail_next(1, 400)
    client.track("u1", "rejected_event")
    client.flush(timeout=10.0)
    text = "\n".join(log.at("warning"))
    assert "email address as identifier" in text
    assert "not yet processed by the backend" in text and "tracked" in text
    assert "send_sms() failed" in text
    assert len(log.at("warning")) >= 4, log.lines
    assert log.at("debug") == []  # debug=False: no debug lines


def test_debug_raises_verbosity_on_a_custom_logger(make_client: MakeClient, primary: Collector) -> None:
    """debug=True: the transactional path explains itself at debug level."""
    log = RecordingLogger()
    primary.go_down()
    client = make_client(logger=log, debug=True)
    assert client.send_push(identifiers={"id": "u1"}, transactional_message_id=1)
    debug = "\n".join(log.at("debug"))
    assert "was not reached" in debug and "trying the next host" in debug
    assert "send_push() accepted by" in debug


def test_debug_never_shows_the_key(
    make_client: MakeClient,
    primary: Collector,
    fallback: Collector,
    library_logger: logging.Logger,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A run with failures of every kind: the key is in no log record, message or repr."""
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    seen: list[str] = []
    client = make_client(
        debug=True,
        retry_max_time=0.3,
        max_retries=1,
        on_error=lambda error, events: errors.append(error),
    )
    assert library_logger.isEnabledFor(logging.DEBUG)
    email = {"identifiers": {"id": "u1"}, "to": "a@example.com", "transactional_message_id": 1}

    seen.append(repr(client.send_email(**email, reply_to="r@example.com")))
    primary.fail_next(1, 500, body={"error": "boom"})
    seen.append(repr(client.send_email(**email)))
    primary.drop_next(1)
    seen.append(repr(client.send_sms(identifiers={"id": "u1"}, to="+15550001111", body="hi")))
    primary.fail_next(1, 401)
    client.track("u1", "will_fail")
    client.register_device("u1", device_id="d", platform="web", fcm_token="t")
    seen.append(repr(client.flush(timeout=10.0)))
    primary.go_down()
    fallback.go_down()
    seen.append(repr(client.send_push(identifiers={"id": "u1"}, transactional_message_id=1)))
    client.track("u1", "nowhere_to_go")
    seen.append(repr(client.flush(timeout=10.0)))
    with pytest.raises(DeliveryError) as ping_error:
        client.ping()
    errors.append(ping_error.value)
    strict = make_client(debug=True, fail_on_exception=True, retry_max_time=0.2)
    with pytest.raises(DeliveryError) as send_error:
        strict.send_push(identifiers={"id": "u1"}, transactional_message_id=1)
    errors.append(send_error.value)
    with pytest.raises(ValidationError) as invalid:
        strict.send_sms(identifiers={"id": "u1"}, to="nope", body="hi")
    errors.append(invalid.value)
    seen += [repr(client), repr(client.config), repr(client.stats()), repr(client.shutdown(timeout=2.0))]

    assert any("not yet processed" in r.getMessage() for r in caplog.records)
    assert any(r.levelno == logging.DEBUG and r.name == "cdp_batcher" for r in caplog.records)
    assert len(errors) >= 4
    for record in caplog.records:
        assert KEY not in record.getMessage(), record.getMessage()
        assert KEY not in str(record.args)
    assert KEY not in caplog.text
    for error in errors:
        assert KEY not in str(error) and KEY not in repr(error)
        assert KEY not in repr(vars(error))
    for text in seen:
        assert KEY not in text
