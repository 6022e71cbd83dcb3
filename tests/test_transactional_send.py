"""send_email / send_push / send_sms against the local collector: wire bodies, validation before
any request, and the at-most-once retry rules (CONTRACT.md, "Retry policy for transactional sends")."""

from __future__ import annotations

import decimal
import functools
import re
import time
from typing import Any, Callable

import pytest

from cdp_batcher import (
    CDPClient,
    CustomerIoConfig,
    DeliveryError,
    SendEmailRequest,
    SendPushRequest,
    SendResult,
    SendSmsRequest,
    SerializationError,
    ValidationError,
)
from cdp_batcher.testing import Collector, RecordingLogger

from transactional_fields import push, sms
from transactional_fields import template_email as email

pytestmark = pytest.mark.timeout(60)

KEY = "sk_test_transactional_0123456789"

MakeClient = Callable[..., CDPClient]


@pytest.fixture
def make_client(make_failover_client: MakeClient) -> MakeClient:
    """Clients on the primary/fallback pair of collectors (conftest)."""
    return functools.partial(make_failover_client, retry_max_time=10.0)


SENDS = [
    pytest.param("send_email", email, "/v1/send/email", id="email"),
    pytest.param("send_push", push, "/v1/send/push", id="push"),
    pytest.param("send_sms", sms, "/v1/send/sms", id="sms"),
]


def only_event(collector: Collector) -> dict[str, Any]:
    events = collector.events()
    assert len(events) == 1, events
    return events[0]


def arrivals(*collectors: Collector) -> int:
    """Requests that reached any of the collectors (dropped or answered)."""
    return sum(len(c.requests) for c in collectors)


# -- wire bodies --------------------------------------------------------------------------------------


def test_email_wire_body_uses_wire_names_and_omits_none(make_client: MakeClient, primary: Collector) -> None:
    """from_ -> from, amp_body -> body_amp, plaintext_body -> body_plain; None fields are left off."""
    client = make_client()
    result = client.send_email(
        identifiers={"email": "ann@example.com"},
        to="ann@example.com",
        from_="shop@example.com",
        subject="Your receipt",
        body="<p>Thanks</p>",
        amp_body="<amp>Thanks</amp>",
        plaintext_body="Thanks",
        message_data={"order": "A-1", "total": 9.5},
        cc=["c@example.com"],
        bcc="b@example.com",
        language="en",
        attachments={"receipt.txt": "aGk="},
        reply_to=None,
        preheader=None,
        transactional_message_id=None,
    )
    event = only_event(primary)
    assert event["call"] == "send_email" and event["path"] == "/v1/send/email"
    assert event["body"] == {
        "identifiers": {"email": "ann@example.com"},
        "to": "ann@example.com",
        "from": "shop@example.com",
        "subject": "Your receipt",
        "body": "<p>Thanks</p>",
        "body_amp": "<amp>Thanks</amp>",
        "body_plain": "Thanks",
        "message_data": {"order": "A-1", "total": 9.5},
        "cc": ["c@example.com"],
        "bcc": "b@example.com",
        "attachments": {"receipt.txt": "aGk="},
        "language": "en",
    }
    request = primary.requests[0]
    assert request.header("Authorization") == KEY
    assert request.header("Content-Type") == "application/json"
    assert result and result.ok and isinstance(result, SendResult)
    assert result.status_code == 200 and result.host == primary.url and result.attempts == 1
    assert result["success"] is True and isinstance(result["delivery_id"], str)
    assert result.body == dict(result) and result.error is None and result.reason == "ok"


def test_decimal_goes_out_as_a_number_from_sends_as_from_track(
    make_client: MakeClient, primary: Collector
) -> None:
    """One encoder: a Decimal in message_data arrives as a JSON number, exactly as the same
    Decimal in track() properties does (it used to arrive as the string "19.99")."""
    client = make_client()
    assert client.send_push(**push(message_data={"price": decimal.Decimal("19.99")}))
    client.track("u1", "bought", {"price": decimal.Decimal("19.99")})
    assert client.flush(timeout=10)
    sent, tracked = primary.events()
    assert b'"price":19.99' in primary.requests[0].body
    assert sent["body"]["message_data"] == {"price": 19.99} == tracked["body"]["properties"]


def test_key_paths_read_the_same_from_sends_and_from_track(
    make_client: MakeClient, primary: Collector
) -> None:
    """One key-path format: send_push() names an unencodable value the way track() does
    (``message_data['order']['items'][1]``, it used to be ``message_data.order.items[1]``)."""
    client = make_client()
    bad = {"order": {"items": [1, object()]}}
    with pytest.raises(SerializationError) as sent:
        client.send_push(**push(message_data=bad))
    with pytest.raises(SerializationError) as tracked:
        client.track("u1", "bought", bad)
    assert str(sent.value).startswith("message_data['order']['items'][1] cannot be serialized to JSON: ")
    assert str(tracked.value).startswith("properties['order']['items'][1] cannot be serialized to JSON: ")
    assert str(sent.value).split(" ", 1)[1] == str(tracked.value).split(" ", 1)[1]
    assert arrivals(primary) == 0


def test_template_email_push_and_sms_wire_bodies(make_client: MakeClient, primary: Collector) -> None:
    """Template ids keep their type for email/push; SMS sends the id as a string (as the Node SDK)."""
    client = make_client()
    assert client.send_email(**email(transactional_message_id=12, message_data={"name": "Ann"}))
    assert client.send_push(**push(title="Shipped", body="Your order is on its way", message_data={"o": 1}))
    assert client.send_sms(
        identifiers={"cdp_id": "cdp_9"}, transactional_message_id=77, to="+15550001111", from_="+15550002222"
    )
    assert client.send_push(identifiers={"id": 42}, transactional_message_id=5)
    assert [e["body"] for e in primary.events()] == [
        {
            "identifiers": {"id": "user_1"},
            "to": "ann@example.com",
            "transactional_message_id": 12,
            "message_data": {"name": "Ann"},
        },
        {
            "identifiers": {"id": "user_1"},
            "transactional_message_id": "PUSH_1",
            "title": "Shipped",
            "body": "Your order is on its way",
            "message_data": {"o": 1},
        },
        {
            "identifiers": {"cdp_id": "cdp_9"},
            "transactional_message_id": "77",
            "to": "+15550001111",
            "from": "+15550002222",
        },
        {"identifiers": {"id": 42}, "transactional_message_id": 5},
    ]
    assert [e["call"] for e in primary.events()] == ["send_email", "send_push", "send_sms", "send_push"]


@pytest.mark.parametrize(
    ("method", "request_obj", "fields"),
    [
        pytest.param(
            "send_email",
            SendEmailRequest(**email(from_="s@example.com")),
            email(from_="s@example.com"),
            id="email",
        ),
        pytest.param("send_push", SendPushRequest(**push(title="t")), push(title="t"), id="push"),
        pytest.param(
            "send_sms", SendSmsRequest(**sms(from_="+15550002222")), sms(from_="+15550002222"), id="sms"
        ),
    ],
)
def test_request_object_and_keywords_send_the_same_body(
    make_client: MakeClient, primary: Collector, method: str, request_obj: Any, fields: dict[str, Any]
) -> None:
    """A typed request object and keyword fields produce the same wire body."""
    client = make_client()
    assert getattr(client, method)(request_obj)
    assert getattr(client, method)(**fields)
    first, second = primary.events()
    assert first["body"] == second["body"]
    assert primary.requests[0].body == primary.requests[1].body


def test_never_queued_never_mirrored_to_customer_io(primary: Collector) -> None:
    """Transactional sends are synchronous and OpenCDP only, even with dual-write on."""
    client = CDPClient(
        cdp_api_key=KEY,
        cdp_endpoint=primary.url,
        cdp_fallback_endpoints=[],
        send_to_customer_io=True,
        customer_io=CustomerIoConfig(site_id="site", api_key="cio-key", url=primary.url),
    )
    try:
        assert client.send_email(**email())
        assert client.send_push(**push())
        assert client.send_sms(**sms())
        assert primary.count() == 3  # arrived before the calls returned
        assert client.flush(timeout=5.0)
        stats = client.stats()
        assert stats.enqueued == 0
        assert all(d.enqueued == 0 for d in stats.destinations.values())
        assert primary.count(destination="customerio") == 0
        assert not [r for r in primary.requests if r.path.startswith("/api/")]
    finally:
        client.shutdown(timeout=2.0)


# -- validation before any request --------------------------------------------------------------------

VALIDATION_CASES = [
    ("send_email", email(identifiers=None), "identifiers is required"),
    ("send_email", email(identifiers={}), "identifiers must contain exactly one of: id, email, or cdp_id"),
    (
        "send_email",
        email(identifiers={"id": "u", "email": "a@example.com"}),
        "identifiers must contain exactly one of: id, email, or cdp_id",
    ),
    ("send_email", email(to=None), "to is required"),
    ("send_email", email(to="  "), "Email address cannot be empty"),
    ("send_email", email(to="not-an-email"), "Invalid email address format"),
    ("send_email", email(from_="shop"), "Invalid email address format"),
    ("send_email", email(cc=["ok@example.com", "bad"]), "Invalid email address format"),
    ("send_email", email(bcc="bad@"), "Invalid email address format"),
    ("send_email", email(reply_to="nope"), "Invalid email address format"),
    ("send_email", email(send_at=-1), "send_at must be a positive integer"),
    ("send_email", email(body=" "), "body cannot be empty if provided"),
    ("send_email", email(amp_body=""), "amp_body cannot be empty if provided"),
    ("send_email", email(plaintext_body="\n"), "plaintext_body cannot be empty if provided"),
    ("send_email", email(headers=["X-A: 1"]), "headers must be an object"),
    (
        "send_email",
        email(transactional_message_id=None),
        "When not using a template: body is required when not using a template, subject is required "
        "when not using a template, from is required when not using a template",
    ),
    (
        "send_email",
        email(transactional_message_id=None, body="<p>x</p>", from_="s@example.com"),
        "When not using a template: subject is required when not using a template",
    ),
    ("send_push", push(identifiers=None), "identifiers is required"),
    (
        "send_push",
        push(identifiers={"phone": "+1555"}),
        "identifiers must contain exactly one of: id, email, or cdp_id",
    ),
    ("send_push", push(transactional_message_id=None), "transactional_message_id is required"),
    ("send_push", push(body="  "), "body cannot be empty if provided"),
    ("send_push", push(message_data=[1]), "message_data must be an object"),
    ("send_sms", sms(identifiers=None), "identifiers is required"),
    ("send_sms", sms(body=None), "body is required when not using a template"),
    ("send_sms", sms(to=" "), "Phone number cannot be empty"),
    ("send_sms", sms(to="08012345678"), "Phone number must be in international format (e.g., +1234567890)"),
    ("send_sms", sms(from_="+0123"), "Phone number must be in international format (e.g., +1234567890)"),
    ("send_sms", sms(transactional_message_id="T", body=" "), "body cannot be empty if provided"),
    ("send_sms", sms(message_data="x"), "message_data must be an object"),
]


@pytest.mark.parametrize("fail_on_exception", [False, True], ids=["log", "raise"])
@pytest.mark.parametrize(("method", "fields", "message"), VALIDATION_CASES)
def test_validation_raises_before_any_request(
    make_client: MakeClient,
    primary: Collector,
    fallback: Collector,
    method: str,
    fields: dict[str, Any],
    message: str,
    fail_on_exception: bool,
) -> None:
    """Each SDK message is raised as ValidationError whatever fail_on_exception says; nothing is sent."""
    client = make_client(fail_on_exception=fail_on_exception)
    with pytest.raises(ValidationError, match="^" + re.escape(message) + "$"):
        getattr(client, method)(**fields)
    assert arrivals(primary, fallback) == 0


def test_validation_of_a_request_object(make_client: MakeClient, primary: Collector) -> None:
    """A typed request is validated too; a request plus keywords is refused."""
    client = make_client()
    with pytest.raises(ValidationError, match=r"^to is required$"):
        client.send_email(SendEmailRequest(identifiers={"id": "u"}, transactional_message_id="T"))
    with pytest.raises(ValidationError, match="either a SendSmsRequest or keyword fields"):
        client.send_sms(SendSmsRequest(**sms()), body="x")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="expects a SendPushRequest"):
        client.send_push(SendSmsRequest(**sms()))  # type: ignore[arg-type]
    assert arrivals(primary) == 0


def test_unknown_keyword_names_the_call_and_hints_the_python_name(
    make_client: MakeClient, primary: Collector
) -> None:
    """Wire names given as keywords are a TypeError naming send_email() and the Python name."""
    client = make_client()
    with pytest.raises(
        TypeError, match=r"^send_email\(\) got unexpected keyword argument 'from' \(did you mean 'from_'\?\)"
    ):
        client.send_email(**email(**{"from": "s@example.com"}))
    with pytest.raises(TypeError, match=r"^send_push\(\) got unexpected keyword argument 'subject'"):
        client.send_push(**push(subject="x"))
    assert arrivals(primary) == 0


def test_unencodable_value_is_a_serialization_error_before_any_request(
    make_client: MakeClient, primary: Collector
) -> None:
    """A message_data value that cannot become JSON raises SerializationError (a ValidationError)."""
    client = make_client(fail_on_exception=False)
    with pytest.raises(SerializationError, match=r"^message_data\['when'\] cannot be serialized to JSON"):
        client.send_push(**push(message_data={"when": object()}))
    assert arrivals(primary) == 0


# -- unsupported fields -------------------------------------------------------------------------------


def test_unsupported_fields_warn_once_per_field_set(make_client: MakeClient, primary: Collector) -> None:
    """Fields the backend ignores are sent with one warning naming them, not one per call."""
    log = RecordingLogger()
    client = make_client(logger=log)
    for _ in range(3):
        assert client.send_email(**email(send_at=0, tracked=True, reply_to="help@example.com"))
    assert client.send_email(**email(preheader="Hi"))
    assert client.send_email(**email())
    assert client.send_push(**push())
    assert client.send_sms(**sms())
    warnings = log.at("warning")
    assert len(warnings) == 2, warnings
    assert warnings[0].endswith("send_at, tracked, reply_to")
    assert "not yet processed by the backend" in warnings[0]
    assert warnings[1].endswith(": preheader")
    assert primary.count() == 7
    assert primary.events()[0]["body"]["send_at"] == 0  # still sent, as the Node SDK does


# -- failover and retries that are safe ---------------------------------------------------------------


@pytest.mark.parametrize(("method", "fields", "path"), SENDS)
def test_connection_refused_fails_over_to_the_next_host(
    make_client: MakeClient, primary: Collector, fallback: Collector, method: str, fields: Any, path: str
) -> None:
    """Primary refuses connections: the fallback takes the message, exactly once."""
    primary.go_down()
    client = make_client()
    result = getattr(client, method)(**fields())
    assert result and result.host == fallback.url and result.attempts == 2
    assert only_event(fallback)["path"] == path
    primary.come_back()
    assert arrivals(primary) == 0


@pytest.mark.parametrize("status", [429, 503])
def test_refused_before_processing_fails_over(
    make_client: MakeClient, primary: Collector, fallback: Collector, status: int
) -> None:
    """A 429/503 means the request was not processed: the next host gets it at once."""
    if status == 429:
        primary.rate_limit_next(1, retry_after="5")
    else:
        primary.fail_next(1, status)
    client = make_client()
    started = time.monotonic()
    result = client.send_email(**email())
    assert result and result.host == fallback.url and result.attempts == 2
    assert time.monotonic() - started < 2.0  # failover does not wait for the primary's Retry-After
    assert primary.count() == 0 and len(primary.requests) == 1
    assert only_event(fallback)["call"] == "send_email"


def test_single_host_429_honours_retry_after(make_client: MakeClient, primary: Collector) -> None:
    """With one host, a 429 is retried after its Retry-After, then delivered exactly once."""
    primary.rate_limit_next(1, retry_after="1")
    client = make_client(cdp_fallback_endpoints=[])
    started = time.monotonic()
    result = client.send_sms(**sms())
    elapsed = time.monotonic() - started
    assert result and result.attempts == 2
    assert 0.9 <= elapsed < 5.0
    assert [r.status for r in primary.requests] == [429, 200]
    assert primary.count() == 1


def test_every_host_refusing_is_retried_in_rounds(
    make_client: MakeClient, primary: Collector, fallback: Collector
) -> None:
    """503 from both hosts, then the primary recovers: one delivery after a backoff round."""
    primary.fail_next(1, 503)
    fallback.fail_next(1, 503)
    client = make_client()
    result = client.send_push(**push())
    assert result and result.attempts == 3 and result.host == primary.url
    assert primary.count() + fallback.count() == 1
    assert [r.status for r in primary.requests] == [503, 200]


def test_retry_after_beyond_the_time_budget_fails_at_once(
    make_client: MakeClient, primary: Collector
) -> None:
    """A Retry-After that would end past retry_max_time is not waited for: the 429 is reported."""
    primary.rate_limit_next(1, retry_after="30")
    client = make_client(cdp_fallback_endpoints=[], retry_max_time=2.0, fail_on_exception=True)
    started = time.monotonic()
    with pytest.raises(DeliveryError) as info:
        client.send_email(**email())
    assert time.monotonic() - started < 1.5
    assert info.value.status_code == 429 and info.value.host == primary.url
    assert primary.count() == 0 and len(primary.requests) == 1


def test_all_hosts_down_fails_within_the_budget(
    make_client: MakeClient, primary: Collector, fallback: Collector
) -> None:
    """Nothing listening anywhere: rounds of retries until retry_max_time, then a failure."""
    primary.go_down()
    fallback.go_down()
    client = make_client(retry_max_time=0.5)
    started = time.monotonic()
    result = client.send_sms(**sms())
    assert time.monotonic() - started < 3.0
    assert not result and result.reason == "connection_error" and result.status_code is None
    assert result.attempts >= 2
    assert result.error is not None and result.error.hosts_tried == (primary.url, fallback.url)
    primary.come_back()
    fallback.come_back()
    assert arrivals(primary, fallback) == 0


# -- never twice: no retry, no failover once the request may have been processed ----------------------


@pytest.mark.parametrize(("method", "fields", "path"), SENDS)
def test_dropped_connection_after_sending_is_not_retried(
    make_client: MakeClient, primary: Collector, fallback: Collector, method: str, fields: Any, path: str
) -> None:
    """The primary reads the request then resets: it may have been processed, so no retry, no failover."""
    primary.drop_next(1)
    client = make_client()
    result = getattr(client, method)(**fields())
    assert not result and result.reason == "connection_error" and result.attempts == 1
    assert result.host == primary.url and result.status_code is None
    assert len(primary.requests) == 1 and primary.requests[0].dropped
    assert arrivals(fallback) == 0


def test_slow_answer_beyond_timeout_is_not_retried(
    make_client: MakeClient, primary: Collector, fallback: Collector
) -> None:
    """A read timeout is ambiguous: reported, never resent; the message arrives at most once."""
    primary.set_latency(1.5)
    client = make_client(timeout_ms=300)
    result = client.send_email(**email())
    assert not result and result.reason == "timeout" and result.attempts == 1
    assert result.error is not None and "may have reached the server" in str(result.error)
    assert primary.wait_for(1, timeout=10.0)  # the slow server did process it, once
    primary.set_latency(0)
    assert primary.count() == 1 and len(primary.requests) == 1
    assert arrivals(fallback) == 0


@pytest.mark.parametrize("status", [500, 502, 504, 400, 401, 404, 408, 422])
def test_other_statuses_are_reported_not_retried(
    make_client: MakeClient, primary: Collector, fallback: Collector, status: int
) -> None:
    """Any status but 2xx/429/503 is reported as is: one request, no failover."""
    primary.fail_next(1, status, body={"message": f"server said {status}"})
    client = make_client()
    result = client.send_push(**push())
    assert not result and result.status_code == status and result.reason == f"http_{status}"
    assert result.host == primary.url and result.attempts == 1
    assert result.error is not None and result.error.server_message == f"server said {status}"
    assert result["message"] == f"server said {status}"  # the parsed error answer
    assert len(primary.requests) == 1 and arrivals(fallback) == 0


# -- fail_on_exception --------------------------------------------------------------------------------


def test_fail_on_exception_true_raises_delivery_error(make_client: MakeClient, primary: Collector) -> None:
    """DeliveryError carries status, host and the server's message; never the key."""
    primary.fail_next(1, 500, body={"error": "template WELCOME not found"})
    client = make_client(fail_on_exception=True, cdp_fallback_endpoints=[])
    with pytest.raises(DeliveryError) as info:
        client.send_email(**email())
    error = info.value
    assert error.status_code == 500 and error.host == primary.url
    assert error.server_message == "template WELCOME not found"
    assert "HTTP 500" in str(error) and "/v1/send/email" in str(error)
    assert KEY not in str(error) and KEY not in repr(error)


def test_fail_on_exception_false_logs_and_returns_a_falsy_result(
    make_client: MakeClient, primary: Collector
) -> None:
    """The failure is logged (no key, no message content) and returned as a falsy SendResult."""
    log = RecordingLogger()
    primary.fail_next(1, 500, body={"error": "boom"})
    client = make_client(logger=log, cdp_fallback_endpoints=[])
    result = client.send_email(**email(message_data={"secret_code": "XYZ-991"}))
    assert not result and isinstance(result.error, DeliveryError)
    assert result.error.status_code == 500 and result.error.server_message == "boom"
    warnings = log.at("warning")
    assert len(warnings) == 1
    assert "send_email() failed (http_500, HTTP 500)" in warnings[0] and primary.url in warnings[0]
    for line in [text for _, text in log.lines] + [repr(result), str(result.error)]:
        assert KEY not in line and "XYZ-991" not in line


def test_send_disabled_and_after_shutdown(make_client: MakeClient, primary: Collector) -> None:
    """send=False validates but sends nothing; after shutdown() a send is a delivery failure."""
    quiet = make_client(send=False, fail_on_exception=True)
    result = quiet.send_sms(**sms())
    assert not result and result.reason == "disabled" and result.error is None
    with pytest.raises(ValidationError):
        quiet.send_sms(**sms(to="bad"))

    closed = make_client(fail_on_exception=True)
    closed.shutdown(timeout=1.0)
    with pytest.raises(DeliveryError, match=r"after shutdown\(\)"):
        closed.send_push(**push())
    lenient = make_client()
    lenient.shutdown(timeout=1.0)
    result = lenient.send_push(**push())
    assert not result and result.reason == "shutdown"
    assert arrivals(primary) == 0
