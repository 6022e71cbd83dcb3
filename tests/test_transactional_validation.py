"""Transactional request types: validation messages, wire bodies, build_* forms, unsupported fields."""

from __future__ import annotations

import base64
import decimal
import json
import re
from typing import Any

import pytest

from cdp_batcher._errors import SerializationError, ValidationError
from cdp_batcher._transactional import (
    PATHS,
    SendEmailRequest,
    SendPushRequest,
    SendSmsRequest,
    build_email,
    build_push,
    build_sms,
    encode_request,
    unsupported_fields,
)
from cdp_batcher._validate import validate_email, validate_push, validate_sms

from transactional_fields import push, raw_email, sms, template_email

pytestmark = pytest.mark.timeout(30)

IDENTIFIERS_REQUIRED = "identifiers is required"
IDENTIFIERS_ONE = "identifiers must contain exactly one of: id, email, or cdp_id"
EMAIL_EMPTY = "Email address cannot be empty"
EMAIL_FORMAT = "Invalid email address format"
PHONE_EMPTY = "Phone number cannot be empty"
PHONE_FORMAT = "Phone number must be in international format (e.g., +1234567890)"


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


# -- identifiers (all three sends) ------------------------------------------------------------------

BUILDERS = [
    pytest.param(build_email, template_email, id="email"),
    pytest.param(build_push, push, id="push"),
    pytest.param(build_sms, sms, id="sms"),
]


@pytest.mark.parametrize(("build", "fields"), BUILDERS)
def test_missing_identifiers_is_required(build: Any, fields: Any) -> None:
    """A missing or None identifiers gives the SDK's `identifiers is required`."""
    with pytest.raises(ValidationError, match=exact(IDENTIFIERS_REQUIRED)):
        build(**fields(identifiers=None))
    with pytest.raises(ValidationError, match=exact(IDENTIFIERS_REQUIRED)):
        kwargs = fields()
        del kwargs["identifiers"]
        build(**kwargs)


@pytest.mark.parametrize(("build", "fields"), BUILDERS)
@pytest.mark.parametrize(
    "identifiers",
    [
        {},
        {"id": ""},
        {"id": "   "},
        {"id": None, "email": None},
        {"id": "u1", "email": "a@example.com"},
        {"id": "u1", "cdp_id": "c1"},
        {"email": "a@example.com", "cdp_id": "c1"},
        {"phone": "+15550001111"},
        {"id": "u1", "cio_id": "x"},
        "user_1",
        ["id", "u1"],
    ],
)
def test_identifiers_must_hold_exactly_one_key(build: Any, fields: Any, identifiers: Any) -> None:
    """Zero, two or unknown identifier keys, or a non-dict, are all rejected with the SDK message."""
    with pytest.raises(ValidationError, match=exact(IDENTIFIERS_ONE)):
        build(**fields(identifiers=identifiers))


@pytest.mark.parametrize(("build", "fields"), BUILDERS)
@pytest.mark.parametrize(
    "identifiers",
    [{"id": "u1"}, {"id": 42}, {"email": "a@example.com"}, {"cdp_id": "c1"}, {"id": "u1", "email": None}],
)
def test_each_identifier_kind_is_accepted(build: Any, fields: Any, identifiers: Any) -> None:
    """Exactly one of id, email or cdp_id passes; a None sibling does not count."""
    build(**fields(identifiers=identifiers))


@pytest.mark.parametrize(
    ("identifiers", "message"),
    [
        ({"id": True}, "identifiers.id must be a string or an integer, got bool"),
        ({"id": 1.5}, "identifiers.id must be a string or an integer, got float"),
        ({"email": 7}, "identifiers.email must be a string, got int"),
        ({"cdp_id": 7}, "identifiers.cdp_id must be a string, got int"),
    ],
)
def test_identifier_value_types(identifiers: dict[str, Any], message: str) -> None:
    """An identifier of the wrong type is a ValidationError naming it."""
    with pytest.raises(ValidationError, match=exact(message)):
        build_push(**push(identifiers=identifiers))


# -- email --------------------------------------------------------------------------------------------


def test_email_to_is_required() -> None:
    """No `to` gives `to is required`."""
    with pytest.raises(ValidationError, match=exact("to is required")):
        build_email(**raw_email(to=None))


@pytest.mark.parametrize(
    "overrides",
    [
        {"to": ""},
        {"to": "   "},
        {"from_": ""},
        {"from_": " \t"},
        {"cc": ""},
        {"cc": ["a@example.com", " "]},
        {"cc": "a@example.com, "},
        {"bcc": ""},
        {"bcc": [""]},
        {"reply_to": ""},
    ],
)
def test_email_address_cannot_be_empty(overrides: dict[str, Any]) -> None:
    """Empty or blank to/from/cc/bcc/reply_to give `Email address cannot be empty`."""
    with pytest.raises(ValidationError, match=exact(EMAIL_EMPTY)):
        build_email(**raw_email(**overrides))


@pytest.mark.parametrize(
    "overrides",
    [
        {"to": "not-an-email"},
        {"to": "ann@example"},
        {"to": "ann @example.com"},
        {"to": "a@example.com,b@example.com"},
        {"to": "ann@example.com\n"},
        {"from_": "shop"},
        {"cc": "a@example.com, nope"},
        {"cc": ["a@example.com", "nope"]},
        {"bcc": "x@@example.com"},
        {"bcc": ["ok@example.com", "bad@"]},
        {"reply_to": "reply@"},
    ],
)
def test_invalid_email_address_format(overrides: dict[str, Any]) -> None:
    """Malformed addresses anywhere (each of a cc/bcc list checked) give `Invalid email address format`."""
    with pytest.raises(ValidationError, match=exact(EMAIL_FORMAT)):
        build_email(**raw_email(**overrides))


def test_cc_bcc_accept_comma_separated_strings_and_lists() -> None:
    """cc/bcc may be one comma-separated string or a list; every address is valid here."""
    build_email(**raw_email(cc="a@example.com, b@example.com", bcc=["c@example.com", "d@example.org"]))
    build_email(**raw_email(cc=[], reply_to="r@example.com"))


@pytest.mark.parametrize("send_at", [-1, True, 1.5, "1700000000"])
def test_send_at_must_be_a_non_negative_int(send_at: Any) -> None:
    """A negative, boolean, float or string send_at gives `send_at must be a positive integer`."""
    with pytest.raises(ValidationError, match=exact("send_at must be a positive integer")):
        build_email(**template_email(send_at=send_at))


def test_send_at_zero_and_positive_are_accepted() -> None:
    """0 and a unix time are accepted (the check is non-negative)."""
    build_email(**template_email(send_at=0))
    build_email(**template_email(send_at=1_700_000_000))


@pytest.mark.parametrize("field", ["body", "amp_body", "plaintext_body"])
@pytest.mark.parametrize("value", ["", "   ", "\n\t"])
def test_email_bodies_cannot_be_blank_if_provided(field: str, value: str) -> None:
    """A blank body/amp_body/plaintext_body gives `<python name> cannot be empty if provided`."""
    with pytest.raises(ValidationError, match=exact(f"{field} cannot be empty if provided")):
        build_email(**template_email(**{field: value}))


@pytest.mark.parametrize("headers", [[], "X-A: 1", 5])
def test_headers_must_be_an_object(headers: Any) -> None:
    """Non-dict headers give `headers must be an object`."""
    with pytest.raises(ValidationError, match=exact("headers must be an object")):
        build_email(**template_email(headers=headers))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"body": None, "subject": None, "from_": None},
            "When not using a template: body is required when not using a template, "
            "subject is required when not using a template, from is required when not using a template",
        ),
        ({"body": None}, "When not using a template: body is required when not using a template"),
        ({"subject": None}, "When not using a template: subject is required when not using a template"),
        ({"subject": "  "}, "When not using a template: subject is required when not using a template"),
        ({"from_": None}, "When not using a template: from is required when not using a template"),
        (
            {"body": None, "from_": None},
            "When not using a template: body is required when not using a template, "
            "from is required when not using a template",
        ),
        (
            {"subject": None, "transactional_message_id": "  "},
            "When not using a template: subject is required when not using a template",
        ),
    ],
)
def test_raw_email_lists_only_missing_fields(overrides: dict[str, Any], message: str) -> None:
    """Without a template id one error lists exactly the missing body/subject/from, in that order."""
    with pytest.raises(ValidationError, match=exact(message)):
        build_email(**raw_email(**overrides))


@pytest.mark.parametrize("template_id", ["WELCOME", 17])
def test_template_email_needs_no_body_subject_or_from(template_id: Any) -> None:
    """A string or integer transactional_message_id makes body, subject and from optional."""
    req = build_email(**template_email(transactional_message_id=template_id))
    assert req.transactional_message_id == template_id


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"to": 123}, "to must be a string, got int"),
        ({"from_": b"a@b.co"}, "from_ must be a string, got bytes"),
        ({"cc": 5}, "cc must be a string or a list of strings, got int"),
        (
            {"bcc": ["a@example.com", 5]},
            "bcc must be a string or a list of strings, got a list containing int",
        ),
        ({"reply_to": ["r@example.com"]}, "reply_to must be a string, got list"),
        ({"body": 1}, "body must be a string, got int"),
        ({"amp_body": 1}, "amp_body must be a string, got int"),
        ({"plaintext_body": 1}, "plaintext_body must be a string, got int"),
        (
            {"transactional_message_id": 1.0},
            "transactional_message_id must be a string or an integer, got float",
        ),
        (
            {"transactional_message_id": True},
            "transactional_message_id must be a string or an integer, got bool",
        ),
        ({"subject": 9}, "subject must be a string, got int"),
        ({"message_data": [1]}, "message_data must be an object"),
        ({"preheader": 1}, "preheader must be a string, got int"),
        ({"language": 1}, "language must be a string, got int"),
        ({"tracked": "yes"}, "tracked must be a boolean, got str"),
        ({"fake_bcc": 1}, "fake_bcc must be a boolean, got int"),
        ({"queue_draft": 0}, "queue_draft must be a boolean, got int"),
        ({"disable_message_retention": "no"}, "disable_message_retention must be a boolean, got str"),
        ({"send_to_unsubscribed": "x"}, "send_to_unsubscribed must be a boolean, got str"),
        ({"disable_css_preprocessing": "x"}, "disable_css_preprocessing must be a boolean, got str"),
    ],
)
def test_email_wrong_types_are_validation_errors(overrides: dict[str, Any], message: str) -> None:
    """A wrong type is a ValidationError naming the Python field, never a raw msgspec error."""
    with pytest.raises(ValidationError, match=exact(message)):
        build_email(**raw_email(**overrides))


def test_email_check_order_is_deterministic() -> None:
    """With several problems the first in the documented order wins: identifiers, to, addresses, ..."""
    everything_wrong: dict[str, Any] = {
        "identifiers": None,
        "to": None,
        "from_": "bad",
        "send_at": -1,
        "body": " ",
        "headers": [],
    }
    steps = [
        ("identifiers", {"id": "u1"}, "to is required"),
        ("to", "ann@example.com", EMAIL_FORMAT),
        ("from_", None, "send_at must be a positive integer"),
        ("send_at", None, "body cannot be empty if provided"),
        ("body", None, "headers must be an object"),
        (
            "headers",
            None,
            "When not using a template: body is required when not using a template, "
            "subject is required when not using a template, from is required when not using a template",
        ),
    ]
    with pytest.raises(ValidationError, match=exact(IDENTIFIERS_REQUIRED)):
        build_email(**everything_wrong)
    for field, fixed, next_message in steps:
        everything_wrong[field] = fixed
        with pytest.raises(ValidationError, match=exact(next_message)):
            build_email(**everything_wrong)


def test_to_checked_before_cc_and_bcc_before_cc() -> None:
    """bcc is checked before cc, and both after from_, as the Node SDK does."""
    with pytest.raises(ValidationError, match=exact(EMAIL_EMPTY)):
        build_email(**raw_email(bcc=" ", cc="bad"))
    with pytest.raises(ValidationError, match=exact(EMAIL_FORMAT)):
        build_email(**raw_email(bcc="bad", cc=" "))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("attachments", "message"),
    [
        (["a.txt"], "attachments must be an object"),
        ({f"f{i}.txt": b64(b"x") for i in range(6)}, "attachments may contain at most 5 files"),
        ({"": b64(b"x")}, "invalid attachment filename: (empty)"),
        ({"../etc/passwd": b64(b"x")}, "invalid attachment filename: ../etc/passwd"),
        ({"a\\b.txt": b64(b"x")}, "invalid attachment filename: a\\b.txt"),
        ({"a.txt": ""}, 'attachment "a.txt" must be a non-empty base64 string'),
        ({"a.txt": 5}, 'attachment "a.txt" must be a non-empty base64 string'),
        ({"a.txt": "!!!!"}, 'attachment "a.txt" must be a valid base64 string'),
        ({"a.txt": "Q"}, 'attachment "a.txt" must be a valid base64 string'),
        (
            {"a.bin": b64(b"\0" * (1024 * 1024)), "b.bin": b64(b"\0" * (1024 * 1024 + 1))},
            "attachments decoded size exceeds 2097152 bytes (2 MB)",
        ),
    ],
)
def test_attachments_follow_gateway_limits(attachments: Any, message: str) -> None:
    """Attachments are checked against the gateway's limits with the Node SDK's messages."""
    with pytest.raises(ValidationError, match=exact(message)):
        build_email(**template_email(attachments=attachments))


def test_attachments_accept_lenient_base64() -> None:
    """Padded, unpadded, url-safe and line-wrapped base64 are all accepted, as the gateway decodes."""
    build_email(
        **template_email(
            attachments={
                "a.txt": "aGVsbG8=",
                "b.txt": "aGVsbG8",
                "c.bin": "-_-_",
                "d.txt": "aGVs\nbG8=",
            }
        )
    )
    build_email(**template_email(attachments={"exactly-2mb.bin": b64(b"\0" * (2 * 1024 * 1024))}))


# -- push ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template_id", [None, "", "   "])
def test_push_transactional_message_id_is_required(template_id: Any) -> None:
    """A push without (or with a blank) template id gives `transactional_message_id is required`."""
    with pytest.raises(ValidationError, match=exact("transactional_message_id is required")):
        build_push(**push(transactional_message_id=template_id))


@pytest.mark.parametrize("body", ["", "  "])
def test_push_body_cannot_be_blank(body: str) -> None:
    """A blank push body gives `body cannot be empty if provided`."""
    with pytest.raises(ValidationError, match=exact("body cannot be empty if provided")):
        build_push(**push(body=body))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"title": 1}, "title must be a string, got int"),
        ({"body": 1}, "body must be a string, got int"),
        ({"message_data": "x"}, "message_data must be an object"),
        (
            {"transactional_message_id": [1]},
            "transactional_message_id must be a string or an integer, got list",
        ),
    ],
)
def test_push_wrong_types(overrides: dict[str, Any], message: str) -> None:
    """Wrong push field types are ValidationErrors naming the field."""
    with pytest.raises(ValidationError, match=exact(message)):
        build_push(**push(**overrides))


def test_push_identifiers_checked_before_template_id() -> None:
    """identifiers comes first, then the template id."""
    with pytest.raises(ValidationError, match=exact(IDENTIFIERS_REQUIRED)):
        build_push()


# -- sms ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [None, ""])
def test_sms_body_required_without_template(body: Any) -> None:
    """Without a template id, a missing or empty body gives `body is required when not using a template`."""
    with pytest.raises(ValidationError, match=exact("body is required when not using a template")):
        build_sms(**sms(body=body))
    with pytest.raises(ValidationError, match=exact("body is required when not using a template")):
        build_sms(**sms(body=body, transactional_message_id=" "))


@pytest.mark.parametrize("field", ["to", "from_"])
@pytest.mark.parametrize("value", ["", "   "])
def test_sms_phone_cannot_be_empty(field: str, value: str) -> None:
    """An empty or blank to/from_ gives `Phone number cannot be empty`."""
    with pytest.raises(ValidationError, match=exact(PHONE_EMPTY)):
        build_sms(**sms(**{field: value}))


@pytest.mark.parametrize("field", ["to", "from_"])
@pytest.mark.parametrize(
    "value", ["08012345678", "+0123456", "+1", "+1234567890123456", "+1 555 000", "+١٢٣٤٥"]
)
def test_sms_phone_must_be_e164(field: str, value: str) -> None:
    """Numbers outside `^\\+?[1-9]\\d{1,14}$` (ASCII digits only) give the international-format message."""
    with pytest.raises(ValidationError, match=exact(PHONE_FORMAT)):
        build_sms(**sms(**{field: value}))


@pytest.mark.parametrize("value", ["+12", "12", "+123456789012345", "2348012345678"])
def test_sms_phone_valid_forms(value: str) -> None:
    """E.164 numbers with or without `+`, 2 to 15 digits, pass."""
    build_sms(**sms(to=value, from_=value))


def test_sms_to_is_optional() -> None:
    """As in the Node and Go SDKs, `to` may be left out (the gateway uses the profile's number)."""
    req = build_sms(identifiers={"cdp_id": "c1"}, transactional_message_id=5)
    assert req.to is None


@pytest.mark.parametrize("message_data", [[], "x", 3])
def test_sms_message_data_must_be_an_object(message_data: Any) -> None:
    """A non-dict message_data gives `message_data must be an object`."""
    with pytest.raises(ValidationError, match=exact("message_data must be an object")):
        build_sms(**sms(message_data=message_data))


def test_sms_blank_body_with_template() -> None:
    """A whitespace body passes the required check but not `body cannot be empty if provided`."""
    with pytest.raises(ValidationError, match=exact("body cannot be empty if provided")):
        build_sms(**sms(body="   "))
    with pytest.raises(ValidationError, match=exact("body cannot be empty if provided")):
        build_sms(**sms(body="", transactional_message_id="OTP"))


def test_sms_check_order() -> None:
    """identifiers, then body-required, then to, then from_, then blank body, then message_data."""
    with pytest.raises(ValidationError, match=exact(IDENTIFIERS_ONE)):
        build_sms(identifiers={}, body=None, to="x")
    with pytest.raises(ValidationError, match=exact("body is required when not using a template")):
        build_sms(identifiers={"id": "u"}, to="x")
    with pytest.raises(ValidationError, match=exact(PHONE_FORMAT)):
        build_sms(identifiers={"id": "u"}, body=" ", to="x", from_="")
    with pytest.raises(ValidationError, match=exact(PHONE_EMPTY)):
        build_sms(identifiers={"id": "u"}, body=" ", from_="", message_data=[])
    with pytest.raises(ValidationError, match=exact("body cannot be empty if provided")):
        build_sms(identifiers={"id": "u"}, body=" ", message_data=[])


def test_sms_wrong_types() -> None:
    """Wrong SMS field types are ValidationErrors naming the field."""
    with pytest.raises(ValidationError, match=exact("to must be a string, got int")):
        build_sms(**sms(to=15550001111))
    with pytest.raises(ValidationError, match=exact("body must be a string, got int")):
        build_sms(**sms(body=1))


# -- wire bodies --------------------------------------------------------------------------------------


def test_template_email_encodes_minimal_body() -> None:
    """Unset fields are omitted, not sent as null."""
    req = build_email(**template_email())
    assert encode_request(req) == (
        b'{"identifiers":{"id":"user_1"},"to":"ann@example.com","transactional_message_id":"WELCOME"}'
    )


def test_full_email_encodes_with_wire_names() -> None:
    """from_, amp_body and plaintext_body go out as from, body_amp and body_plain."""
    req = build_email(
        identifiers={"email": "ann@example.com"},
        to="ann@example.com",
        from_="shop@example.com",
        subject="Your order",
        body="<p>Thanks</p>",
        amp_body="<amp>Thanks</amp>",
        plaintext_body="Thanks",
        message_data={"order": {"id": 7, "total": 9.5}},
        cc=["c@example.com"],
        bcc="b1@example.com, b2@example.com",
        reply_to="help@example.com",
        preheader="Order 7",
        headers={"X-Tag": "orders"},
        attachments={"r.txt": "aGk="},
        language="en",
        send_at=1_700_000_000,
        disable_message_retention=False,
        send_to_unsubscribed=True,
        queue_draft=False,
        tracked=True,
        fake_bcc=False,
        disable_css_preprocessing=True,
    )
    assert json.loads(encode_request(req)) == {
        "identifiers": {"email": "ann@example.com"},
        "to": "ann@example.com",
        "from": "shop@example.com",
        "subject": "Your order",
        "body": "<p>Thanks</p>",
        "body_amp": "<amp>Thanks</amp>",
        "body_plain": "Thanks",
        "message_data": {"order": {"id": 7, "total": 9.5}},
        "cc": ["c@example.com"],
        "bcc": "b1@example.com, b2@example.com",
        "reply_to": "help@example.com",
        "preheader": "Order 7",
        "headers": {"X-Tag": "orders"},
        "attachments": {"r.txt": "aGk="},
        "language": "en",
        "send_at": 1_700_000_000,
        "disable_message_retention": False,
        "send_to_unsubscribed": True,
        "queue_draft": False,
        "tracked": True,
        "fake_bcc": False,
        "disable_css_preprocessing": True,
    }
    assert b"from_" not in encode_request(req)
    assert b"null" not in encode_request(req)


def test_raw_email_exact_bytes() -> None:
    """A raw email encodes to exactly these bytes (field order is declaration order)."""
    assert encode_request(build_email(**raw_email())) == (
        b'{"identifiers":{"id":"user_1"},"to":"ann@example.com","from":"shop@example.com",'
        b'"subject":"Hi","body":"<p>Hi</p>"}'
    )


def test_push_encodes_exactly() -> None:
    """A push body holds only its set fields; an int template id stays an int."""
    req = build_push(
        identifiers={"cdp_id": "c1"},
        transactional_message_id=12,
        title="Hi",
        body="There",
        message_data={"deep_link": "/orders/7"},
    )
    assert encode_request(req) == (
        b'{"identifiers":{"cdp_id":"c1"},"transactional_message_id":12,"title":"Hi","body":"There",'
        b'"message_data":{"deep_link":"/orders/7"}}'
    )
    assert encode_request(build_push(**push())) == (
        b'{"identifiers":{"id":"user_1"},"transactional_message_id":"PUSH_1"}'
    )


def test_sms_encodes_exactly_with_string_template_id() -> None:
    """SMS sends from_ as `from` and an int template id as a string (the backend expects one)."""
    req = build_sms(
        identifiers={"id": 42},
        transactional_message_id=99,
        to="+15550001111",
        from_="+15550002222",
        message_data={"code": "1234"},
    )
    assert encode_request(req) == (
        b'{"identifiers":{"id":42},"transactional_message_id":"99","to":"+15550001111",'
        b'"from":"+15550002222","message_data":{"code":"1234"}}'
    )
    assert encode_request(build_sms(**sms())) == (
        b'{"identifiers":{"id":"user_1"},"to":"+2348012345678","body":"Code: 1234"}'
    )


def test_wire_form_drops_unset_identifier_siblings_and_blank_template_id() -> None:
    """Only the identifier that is set is sent; a blank template id is left off; the request is unchanged."""
    req = build_email(
        **raw_email(identifiers={"id": "u1", "email": None, "cdp_id": ""}, transactional_message_id="")
    )
    assert encode_request(req) == (
        b'{"identifiers":{"id":"u1"},"to":"ann@example.com","from":"shop@example.com",'
        b'"subject":"Hi","body":"<p>Hi</p>"}'
    )
    assert req.identifiers == {"id": "u1", "email": None, "cdp_id": ""}
    assert req.transactional_message_id == ""


def test_encode_handles_rich_values() -> None:
    """Decimal (a JSON number, as from track()), nested lists and NaN encode to valid JSON."""
    req = build_push(
        **push(message_data={"price": decimal.Decimal("9.99"), "tags": ("a", "b"), "x": float("nan")})
    )
    body = encode_request(req)
    assert b'"price":9.99' in body
    assert json.loads(body)["message_data"] == {"price": 9.99, "tags": ["a", "b"], "x": None}


def test_encode_unencodable_value_names_the_path() -> None:
    """A value JSON cannot hold raises SerializationError naming its key path, not the value."""
    req = build_push(**push(message_data={"order": {"items": [1, object()]}}))
    with pytest.raises(
        SerializationError, match=r"^message_data\['order'\]\['items'\]\[1\] cannot be serialized to JSON"
    ):
        encode_request(req)
    with pytest.raises(SerializationError, match=r"^message_data\[\(1, 2\)\] cannot be serialized to JSON"):
        encode_request(build_push(**push(message_data={(1, 2): "x"})))


def test_encode_rejects_other_types() -> None:
    """encode_request only takes the three request types."""
    with pytest.raises(TypeError, match="encode_request"):
        encode_request({"to": "x"})  # type: ignore[arg-type]


def test_paths() -> None:
    """Each request type maps to its gateway path."""
    assert PATHS[SendEmailRequest] == "/v1/send/email"
    assert PATHS[SendPushRequest] == "/v1/send/push"
    assert PATHS[SendSmsRequest] == "/v1/send/sms"
    assert PATHS[type(build_sms(**sms()))] == "/v1/send/sms"
    assert len(PATHS) == 3


# -- build_* forms --------------------------------------------------------------------------------------


def test_build_from_request_object_returns_it_validated() -> None:
    """A request object passes through validation and comes back as is."""
    email = SendEmailRequest(**raw_email())
    assert build_email(email) is email
    push_req = SendPushRequest(**push())
    assert build_push(push_req) is push_req
    sms_req = SendSmsRequest(**sms())
    assert build_sms(sms_req) is sms_req


def test_build_from_keywords_equals_object_form() -> None:
    """The keyword form builds the same struct as the object form."""
    assert build_email(**raw_email()) == SendEmailRequest(**raw_email())
    assert build_push(**push()) == SendPushRequest(**push())
    assert build_sms(**sms()) == SendSmsRequest(**sms())


def test_build_validates_a_request_object() -> None:
    """An invalid request object raises just like keyword fields, wrong types included."""
    with pytest.raises(ValidationError, match=exact("to must be a string, got int")):
        build_email(SendEmailRequest(**raw_email(to=123)))
    with pytest.raises(ValidationError, match=exact("transactional_message_id is required")):
        build_push(SendPushRequest(identifiers={"id": "u"}))
    with pytest.raises(ValidationError, match=exact(PHONE_FORMAT)):
        build_sms(SendSmsRequest(**sms(to="abc")))


@pytest.mark.parametrize(
    ("build", "request_obj", "name"),
    [
        (build_email, SendEmailRequest(**raw_email()), "SendEmailRequest"),
        (build_push, SendPushRequest(**push()), "SendPushRequest"),
        (build_sms, SendSmsRequest(**sms()), "SendSmsRequest"),
    ],
)
def test_build_rejects_object_and_keywords_together(build: Any, request_obj: Any, name: str) -> None:
    """Passing a request object and keyword fields together is a ValidationError."""
    with pytest.raises(ValidationError, match=exact(f"pass either a {name} or keyword fields, not both")):
        build(request_obj, body="x")


def test_build_unknown_keyword_is_type_error_naming_it() -> None:
    """An unknown keyword is a TypeError naming it, with a hint for wire names."""
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'image_url'"):
        build_push(**push(image_url="https://x"))
    with pytest.raises(TypeError, match=r"'from'.*did you mean 'from_'"):
        build_email(**{**raw_email(), "from": "a@example.com"})
    with pytest.raises(TypeError, match=r"'body_plain'.*did you mean 'plaintext_body'"):
        build_email(**raw_email(body_plain="x"))
    with pytest.raises(TypeError, match=r"arguments 'foo', 'bar'"):
        build_sms(**sms(foo=1, bar=2))
    with pytest.raises(TypeError, match=r"'subject'"):
        build_sms(**sms(subject="x"))


def test_build_wrong_request_type_is_type_error() -> None:
    """Passing another send's request object is a TypeError."""
    with pytest.raises(TypeError, match="build_email\\(\\) expects a SendEmailRequest, got SendPushRequest"):
        build_email(SendPushRequest(**push()))  # type: ignore[arg-type]


def test_validate_functions_reject_wrong_types() -> None:
    """validate_* check they were given their own request type."""
    with pytest.raises(TypeError):
        validate_email(SendSmsRequest())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        validate_push(SendEmailRequest())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        validate_sms({"to": "x"})  # type: ignore[arg-type]


def test_validate_functions_return_none_on_valid_requests() -> None:
    """A valid request validates silently."""
    validate_email(SendEmailRequest(**template_email()))
    validate_push(SendPushRequest(**push()))
    validate_sms(SendSmsRequest(**sms()))


def test_requests_are_keyword_only_with_none_defaults() -> None:
    """Every field defaults to None and positional construction is refused."""
    for kind in (SendEmailRequest, SendPushRequest, SendSmsRequest):
        req = kind()
        assert all(getattr(req, name) is None for name in kind.__struct_fields__)
        with pytest.raises(TypeError):
            kind({"id": "u"})  # type: ignore[call-arg]


def test_field_sets() -> None:
    """The field sets mirror the OpenCDP SDKs."""
    assert set(SendPushRequest.__struct_fields__) == {
        "identifiers",
        "transactional_message_id",
        "title",
        "body",
        "message_data",
    }
    assert set(SendSmsRequest.__struct_fields__) == {
        "identifiers",
        "transactional_message_id",
        "to",
        "from_",
        "body",
        "message_data",
    }
    assert {"from_", "amp_body", "plaintext_body", "attachments", "language"} <= set(
        SendEmailRequest.__struct_fields__
    )


# -- unsupported fields ---------------------------------------------------------------------------------


def test_unsupported_fields_lists_set_email_fields_in_order() -> None:
    """Only the set fields the backend ignores are listed, as Python names, in the SDK's order."""
    req = build_email(
        **template_email(
            preheader="p",
            reply_to="r@example.com",
            tracked=False,
            send_at=0,
            headers={},
            fake_bcc=True,
            queue_draft=False,
            send_to_unsubscribed=False,
            disable_message_retention=True,
            disable_css_preprocessing=False,
            attachments={"a.txt": "aGk="},
            language="en",
        )
    )
    assert unsupported_fields(req) == (
        "send_at",
        "disable_message_retention",
        "send_to_unsubscribed",
        "queue_draft",
        "headers",
        "disable_css_preprocessing",
        "tracked",
        "fake_bcc",
        "reply_to",
        "preheader",
    )


def test_unsupported_fields_empty_cases() -> None:
    """A plain email, a push and an SMS have no unsupported fields."""
    assert unsupported_fields(build_email(**raw_email())) == ()
    assert unsupported_fields(build_email(**template_email(tracked=True))) == ("tracked",)
    assert unsupported_fields(build_push(**push(title="t"))) == ()
    assert unsupported_fields(build_sms(**sms())) == ()
