"""Typed requests, validation and wire bodies for the OpenCDP transactional sends.

Pure code: no I/O. The client builds a request with :func:`build_email`, :func:`build_push` or
:func:`build_sms` (validated there, in the caller), encodes it with :func:`encode_request` and
posts it to ``PATHS[type(request)]``. Field sets and messages mirror the OpenCDP Node SDK
(``src/types.ts``, ``src/client.ts``); the Go SDK agrees on the field sets.

Python names are the wire names except ``from_`` -> ``from``, ``amp_body`` -> ``body_amp`` and
``plaintext_body`` -> ``body_plain``. A field left ``None`` is omitted from the body.

Validation raises :class:`~cdp_batcher.ValidationError` for the first failing check, in this
order (a wrong type is reported at its field's step, naming the Python field):

email
    1. ``identifiers`` (required; exactly one of ``id``, ``email``, ``cdp_id``, no other key)
    2. ``to`` (required; a single address)
    3. ``from_``, ``bcc``, ``cc``, ``reply_to`` when given (``cc``/``bcc``: a string of
       comma-separated addresses or a list of addresses)
    4. ``send_at`` (an int >= 0)
    5. ``body``, ``amp_body``, ``plaintext_body`` when given (not blank)
    6. ``headers`` (an object), ``attachments`` (the gateway's limits, as the Node SDK)
    7. the types of the remaining fields, in declaration order
    8. without ``transactional_message_id``: ``body``, ``subject`` and ``from_`` are required
push
    1. ``identifiers``; 2. ``transactional_message_id`` (required); 3. ``title`` and ``body``
    (not blank); 4. ``message_data`` (an object)
sms
    1. ``identifiers``; 2. ``transactional_message_id`` type; 3. without it, ``body`` is
    required; 4. ``to`` and ``from_`` when given (E.164); 5. ``body`` (not blank);
    6. ``message_data`` (an object)

A blank ``transactional_message_id`` counts as absent and is left off the wire. ``to`` is
optional for SMS and push (the gateway uses the person's profile), as in both SDKs.
"""

# msgspec evaluates Struct annotations at runtime, so `X | None` would break Python 3.9: keep
# Optional/Union throughout (pyproject ignores these two rules for the same reason).

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import types
from collections.abc import Iterator, Mapping
from typing import Any, Final, Optional, TypeVar, Union

import msgspec

from ._errors import DeliveryError, SerializationError, ValidationError

__all__ = [
    "PATHS",
    "SendEmailRequest",
    "SendPushRequest",
    "SendResult",
    "SendSmsRequest",
    "TransactionalRequest",
    "build_email",
    "build_request",
    "build_push",
    "build_sms",
    "encode_request",
    "unsupported_fields",
    "validate_email",
    "validate_push",
    "validate_sms",
]

_EMAIL_RENAME: Final = {"from_": "from", "amp_body": "body_amp", "plaintext_body": "body_plain"}


class SendEmailRequest(msgspec.Struct, kw_only=True, omit_defaults=True, rename=_EMAIL_RENAME):
    """A transactional email: a template (``transactional_message_id``) or raw content.

    Raw content needs ``body`` (HTML), ``subject`` and ``from_``. ``cc``/``bcc`` take one
    string of comma-separated addresses or a list of addresses. ``attachments`` maps a file name
    to its base64 content (at most 5 files, 2 MB decoded in total).

    >>> request = SendEmailRequest(identifiers={"id": "user123"}, to="ann@example.com",
    ...                            transactional_message_id="WELCOME")
    >>> client.send_email(request)  # doctest: +SKIP
    """

    identifiers: Optional[dict[str, Any]] = None
    to: Optional[str] = None
    transactional_message_id: Optional[Union[str, int]] = None
    from_: Optional[str] = None
    subject: Optional[str] = None
    body: Optional[str] = None
    amp_body: Optional[str] = None
    plaintext_body: Optional[str] = None
    message_data: Optional[dict[str, Any]] = None
    cc: Optional[Union[str, list[str]]] = None
    bcc: Optional[Union[str, list[str]]] = None
    reply_to: Optional[str] = None
    preheader: Optional[str] = None
    headers: Optional[dict[str, Any]] = None
    attachments: Optional[dict[str, str]] = None
    language: Optional[str] = None
    send_at: Optional[int] = None
    disable_message_retention: Optional[bool] = None
    send_to_unsubscribed: Optional[bool] = None
    queue_draft: Optional[bool] = None
    tracked: Optional[bool] = None
    fake_bcc: Optional[bool] = None
    disable_css_preprocessing: Optional[bool] = None


class SendPushRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A transactional push to the person's registered devices; always template based.

    >>> client.send_push(SendPushRequest(identifiers={"id": "user123"},
    ...                                  transactional_message_id="ORDER_SHIPPED"))  # doctest: +SKIP
    """

    identifiers: Optional[dict[str, Any]] = None
    transactional_message_id: Optional[Union[str, int]] = None
    title: Optional[str] = None
    body: Optional[str] = None
    message_data: Optional[dict[str, Any]] = None


class SendSmsRequest(msgspec.Struct, kw_only=True, omit_defaults=True, rename={"from_": "from"}):
    """A transactional SMS: a template or a raw ``body``; phone numbers in E.164 form.

    ``transactional_message_id`` is sent as a string (the backend expects one).

    >>> client.send_sms(SendSmsRequest(identifiers={"id": "user123"}, to="+2348012345678",
    ...                                body="Your code is 1234"))  # doctest: +SKIP
    """

    identifiers: Optional[dict[str, Any]] = None
    transactional_message_id: Optional[Union[str, int]] = None
    to: Optional[str] = None
    from_: Optional[str] = None
    body: Optional[str] = None
    message_data: Optional[dict[str, Any]] = None


TransactionalRequest = Union[SendEmailRequest, SendPushRequest, SendSmsRequest]
_R = TypeVar("_R", SendEmailRequest, SendPushRequest, SendSmsRequest)

PATHS: Final[Mapping[type[TransactionalRequest], str]] = types.MappingProxyType(
    {
        SendEmailRequest: "/v1/send/email",
        SendPushRequest: "/v1/send/push",
        SendSmsRequest: "/v1/send/sms",
    }
)

# Accepted by the gateway but not yet processed (the Node SDK warns about them), in its order.
_UNSUPPORTED_EMAIL_FIELDS: Final = (
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

_IDENTIFIER_KEYS: Final = ("id", "email", "cdp_id")
_EMAIL_RE: Final = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")
_PHONE_RE: Final = re.compile(r"\+?[1-9][0-9]{1,14}")

# The gateway's attachment limits, as the Node and Go SDKs check them.
_MAX_ATTACHMENTS: Final = 5
_MAX_ATTACHMENTS_DECODED_BYTES: Final = 2 * 1024 * 1024
_MAX_ATTACHMENT_ENCODED_CHARS: Final = 4 * -(-_MAX_ATTACHMENTS_DECODED_BYTES // 3)
_BLANK_RE: Final = re.compile(r"\s+")

_ENCODER: Final = msgspec.json.Encoder()

_MSG_IDENTIFIERS_REQUIRED: Final = "identifiers is required"
_MSG_IDENTIFIERS_ONE: Final = "identifiers must contain exactly one of: id, email, or cdp_id"
_MSG_EMAIL_EMPTY: Final = "Email address cannot be empty"
_MSG_EMAIL_FORMAT: Final = "Invalid email address format"
_MSG_PHONE_EMPTY: Final = "Phone number cannot be empty"
_MSG_PHONE_FORMAT: Final = "Phone number must be in international format (e.g., +1234567890)"
_MSG_NOT_TEMPLATE: Final = "{} is required when not using a template"


# -- small checks -------------------------------------------------------------------------------


def _type_name(value: object) -> str:
    return type(value).__name__


def _is_blank(value: str) -> bool:
    return not value.strip()


def _check_str(name: str, value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"{name} must be a string, got {_type_name(value)}")


def _check_bool(name: str, value: object) -> None:
    if value is not None and not isinstance(value, bool):
        raise ValidationError(f"{name} must be a boolean, got {_type_name(value)}")


def _check_object(name: str, value: object) -> None:
    if value is not None and not isinstance(value, dict):
        raise ValidationError(f"{name} must be an object")


def _check_not_blank(name: str, value: object) -> None:
    """``<name> cannot be empty if provided``, after the type check."""
    _check_str(name, value)
    if isinstance(value, str) and _is_blank(value):
        raise ValidationError(f"{name} cannot be empty if provided")


def _check_template_id_type(value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
        raise ValidationError(
            f"transactional_message_id must be a string or an integer, got {_type_name(value)}"
        )


def _has_template_id(value: object) -> bool:
    """A non-blank string or an int counts; ``None`` and blank strings do not."""
    if isinstance(value, str):
        return not _is_blank(value)
    return value is not None


def _identifier_is_set(value: object) -> bool:
    return value is not None and not (isinstance(value, str) and _is_blank(value))


def _check_identifiers(identifiers: object) -> None:
    if identifiers is None:
        raise ValidationError(_MSG_IDENTIFIERS_REQUIRED)
    if not isinstance(identifiers, dict) or any(key not in _IDENTIFIER_KEYS for key in identifiers):
        raise ValidationError(_MSG_IDENTIFIERS_ONE)
    present = [key for key in _IDENTIFIER_KEYS if _identifier_is_set(identifiers.get(key))]
    if len(present) != 1:
        raise ValidationError(_MSG_IDENTIFIERS_ONE)
    key = present[0]
    value = identifiers[key]
    if key == "id":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValidationError(f"identifiers.id must be a string or an integer, got {_type_name(value)}")
    elif not isinstance(value, str):
        raise ValidationError(f"identifiers.{key} must be a string, got {_type_name(value)}")


def _check_email_address(name: str, value: object) -> None:
    _check_str(name, value)
    if not isinstance(value, str):
        return
    if _is_blank(value):
        raise ValidationError(_MSG_EMAIL_EMPTY)
    if not _EMAIL_RE.fullmatch(value):
        raise ValidationError(_MSG_EMAIL_FORMAT)


def _check_email_list(name: str, value: object) -> None:
    """``cc``/``bcc``: a string of comma-separated addresses, or a list of addresses."""
    if value is None:
        return
    if isinstance(value, str):
        addresses: list[object] = list(value.split(","))
    elif isinstance(value, list):
        addresses = list(value)
    else:
        raise ValidationError(f"{name} must be a string or a list of strings, got {_type_name(value)}")
    for address in addresses:
        if not isinstance(address, str):
            raise ValidationError(
                f"{name} must be a string or a list of strings, got a list containing {_type_name(address)}"
            )
        _check_email_address(name, address.strip() if isinstance(value, str) else address)


def _check_phone(name: str, value: object) -> None:
    _check_str(name, value)
    if not isinstance(value, str):
        return
    if _is_blank(value):
        raise ValidationError(_MSG_PHONE_EMPTY)
    if not _PHONE_RE.fullmatch(value):
        raise ValidationError(_MSG_PHONE_FORMAT)


def _check_send_at(value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValidationError("send_at must be a positive integer")


def _decoded_base64_size(content: str) -> int:
    """Decoded length of leniently written base64 (padded or not, standard or url-safe); 0 if invalid."""
    cleaned = _BLANK_RE.sub("", content)
    if len(cleaned) > _MAX_ATTACHMENT_ENCODED_CHARS:
        return _MAX_ATTACHMENTS_DECODED_BYTES + 1  # too large: no need to decode it
    cleaned = cleaned.replace("-", "+").replace("_", "/").rstrip("=")
    if len(cleaned) % 4 == 1:
        return 0
    try:
        return len(base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True))
    except (binascii.Error, ValueError):
        return 0


def _check_attachments(attachments: object) -> None:
    if attachments is None:
        return
    if not isinstance(attachments, dict):
        raise ValidationError("attachments must be an object")
    if len(attachments) > _MAX_ATTACHMENTS:
        raise ValidationError(f"attachments may contain at most {_MAX_ATTACHMENTS} files")
    total = 0
    for filename, content in attachments.items():
        if not isinstance(filename, str) or not filename or any(s in filename for s in ("/", "\\", "..")):
            raise ValidationError(f"invalid attachment filename: {filename or '(empty)'}")
        if not isinstance(content, str) or not content:
            raise ValidationError(f'attachment "{filename}" must be a non-empty base64 string')
        size = _decoded_base64_size(content)
        if size == 0:
            raise ValidationError(f'attachment "{filename}" must be a valid base64 string')
        total += size
        if total > _MAX_ATTACHMENTS_DECODED_BYTES:
            raise ValidationError(
                f"attachments decoded size exceeds {_MAX_ATTACHMENTS_DECODED_BYTES} bytes (2 MB)"
            )


def _expect(kind: type[TransactionalRequest], req: object, func: str) -> None:
    if not isinstance(req, kind):
        raise TypeError(f"{func}() expects a {kind.__name__}, got {_type_name(req)}")


# -- validation ---------------------------------------------------------------------------------


def validate_email(req: SendEmailRequest) -> None:
    """Raise ValidationError for the first problem in ``req``, in the order of the module doc."""
    _expect(SendEmailRequest, req, "validate_email")
    _check_identifiers(req.identifiers)
    if req.to is None:
        raise ValidationError("to is required")
    _check_email_address("to", req.to)
    if req.from_ is not None:
        _check_email_address("from_", req.from_)
    _check_email_list("bcc", req.bcc)
    _check_email_list("cc", req.cc)
    if req.reply_to is not None:
        _check_email_address("reply_to", req.reply_to)
    _check_send_at(req.send_at)
    _check_not_blank("body", req.body)
    _check_not_blank("amp_body", req.amp_body)
    _check_not_blank("plaintext_body", req.plaintext_body)
    if req.headers is not None and not isinstance(req.headers, dict):
        raise ValidationError("headers must be an object")
    _check_attachments(req.attachments)
    _check_template_id_type(req.transactional_message_id)
    _check_str("subject", req.subject)
    _check_object("message_data", req.message_data)
    _check_str("preheader", req.preheader)
    _check_str("language", req.language)
    for name in (
        "disable_message_retention",
        "send_to_unsubscribed",
        "queue_draft",
        "tracked",
        "fake_bcc",
        "disable_css_preprocessing",
    ):
        _check_bool(name, getattr(req, name))
    if not _has_template_id(req.transactional_message_id):
        missing = [
            _MSG_NOT_TEMPLATE.format(wire)
            for wire, value in (("body", req.body), ("subject", req.subject), ("from", req.from_))
            if value is None or _is_blank(value)
        ]
        if missing:
            raise ValidationError(f"When not using a template: {', '.join(missing)}")


def validate_push(req: SendPushRequest) -> None:
    """Raise ValidationError for the first problem in ``req``, in the order of the module doc."""
    _expect(SendPushRequest, req, "validate_push")
    _check_identifiers(req.identifiers)
    _check_template_id_type(req.transactional_message_id)
    if not _has_template_id(req.transactional_message_id):
        raise ValidationError("transactional_message_id is required")
    _check_str("title", req.title)
    _check_not_blank("body", req.body)
    _check_object("message_data", req.message_data)


def validate_sms(req: SendSmsRequest) -> None:
    """Raise ValidationError for the first problem in ``req``, in the order of the module doc."""
    _expect(SendSmsRequest, req, "validate_sms")
    _check_identifiers(req.identifiers)
    _check_template_id_type(req.transactional_message_id)
    _check_str("body", req.body)
    if not _has_template_id(req.transactional_message_id) and not req.body:
        raise ValidationError(_MSG_NOT_TEMPLATE.format("body"))
    _check_phone("to", req.to)
    _check_phone("from_", req.from_)
    _check_not_blank("body", req.body)
    _check_object("message_data", req.message_data)


# -- building -----------------------------------------------------------------------------------

_WIRE_NAME_HINTS: Final = {"from": "from_", "body_amp": "amp_body", "body_plain": "plaintext_body"}


def _build(kind: type[_R], func: str, request: Optional[_R], fields: dict[str, Any]) -> _R:
    if request is not None:
        if fields:
            raise ValidationError(f"pass either a {kind.__name__} or keyword fields, not both")
        if not isinstance(request, kind):
            raise TypeError(f"{func}() expects a {kind.__name__}, got {_type_name(request)}")
        return request
    unknown = [name for name in fields if name not in kind.__struct_fields__]
    if unknown:
        hints = "".join(
            f" (did you mean {_WIRE_NAME_HINTS[name]!r}?)"
            for name in unknown[:1]
            if _WIRE_NAME_HINTS.get(name) in kind.__struct_fields__
        )
        names = ", ".join(repr(name) for name in unknown)
        plural = "s" if len(unknown) > 1 else ""
        raise TypeError(f"{func}() got unexpected keyword argument{plural} {names}{hints}")
    return kind(**fields)


def build_request(kind: type[_R], request: Optional[_R], fields: dict[str, Any], *, func: str) -> _R:
    """Like ``build_email``/``build_push``/``build_sms`` for ``kind``, naming ``func`` in TypeErrors.

    >>> build_request(SendPushRequest, None, {"identifiers": {"id": "u1"}, "transactional_message_id": 7},
    ...               func="send_push").transactional_message_id
    7
    """
    req = _build(kind, func, request, fields)
    if isinstance(req, SendEmailRequest):
        validate_email(req)
    elif isinstance(req, SendPushRequest):
        validate_push(req)
    else:
        validate_sms(req)
    return req


def build_email(request: Optional[SendEmailRequest] = None, /, **fields: Any) -> SendEmailRequest:
    """Return a validated email request, from a ``SendEmailRequest`` or from keyword fields.

    Raises ValidationError for an invalid request, TypeError for an unknown keyword.
    """
    req = _build(SendEmailRequest, "build_email", request, fields)
    validate_email(req)
    return req


def build_push(request: Optional[SendPushRequest] = None, /, **fields: Any) -> SendPushRequest:
    """Return a validated push request, from a ``SendPushRequest`` or from keyword fields.

    Raises ValidationError for an invalid request, TypeError for an unknown keyword.
    """
    req = _build(SendPushRequest, "build_push", request, fields)
    validate_push(req)
    return req


def build_sms(request: Optional[SendSmsRequest] = None, /, **fields: Any) -> SendSmsRequest:
    """Return a validated SMS request, from a ``SendSmsRequest`` or from keyword fields.

    Raises ValidationError for an invalid request, TypeError for an unknown keyword.
    """
    req = _build(SendSmsRequest, "build_sms", request, fields)
    validate_sms(req)
    return req


# -- wire ---------------------------------------------------------------------------------------


def _wire_form(req: TransactionalRequest) -> TransactionalRequest:
    """The request as sent: only the identifier that is set, no blank template id, SMS id as str."""
    changes: dict[str, Any] = {}
    identifiers = req.identifiers
    if isinstance(identifiers, dict):
        compact = {k: v for k, v in identifiers.items() if k not in _IDENTIFIER_KEYS or _identifier_is_set(v)}
        if len(compact) != len(identifiers):
            changes["identifiers"] = compact
    template_id = req.transactional_message_id
    if isinstance(template_id, str) and _is_blank(template_id):
        changes["transactional_message_id"] = None
    elif (
        isinstance(req, SendSmsRequest) and isinstance(template_id, int) and not isinstance(template_id, bool)
    ):
        changes["transactional_message_id"] = str(template_id)
    return msgspec.structs.replace(req, **changes) if changes else req


def _unencodable_path(value: object, path: str) -> Optional[str]:
    """The first key path below ``value`` that JSON cannot hold, or None."""
    if isinstance(value, dict):
        for key, item in value.items():
            try:
                _ENCODER.encode({key: None})
            except (TypeError, ValueError, OverflowError):
                return f"{path} (key of type {_type_name(key)})"
            found = _unencodable_path(item, f"{path}.{key}")
            if found is not None:
                return found
        return None
    if isinstance(value, (list, tuple, set, frozenset)):
        for index, item in enumerate(value):
            found = _unencodable_path(item, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    try:
        _ENCODER.encode(value)
    except (TypeError, ValueError, OverflowError):
        return path
    return None


def encode_request(req: TransactionalRequest) -> bytes:
    """The JSON body for ``req``: wire names, unset fields omitted. Does not validate.

    Raises SerializationError, naming the key path, when a value cannot become JSON.
    """
    if not isinstance(req, (SendEmailRequest, SendPushRequest, SendSmsRequest)):
        raise TypeError(f"encode_request() expects a transactional request, got {_type_name(req)}")
    wire = _wire_form(req)
    try:
        return _ENCODER.encode(wire)
    except (TypeError, ValueError, OverflowError) as exc:
        path = None
        for field in wire.__struct_fields__:
            path = _unencodable_path(getattr(wire, field), field)
            if path is not None:
                break
        raise SerializationError(f"{path or type(wire).__name__} cannot be encoded as JSON: {exc}") from None


def unsupported_fields(req: TransactionalRequest) -> tuple[str, ...]:
    """Python names of the fields set on ``req`` that the backend accepts but does not process yet.

    Only email has such fields (``send_at``, ``disable_message_retention``, ``send_to_unsubscribed``,
    ``queue_draft``, ``headers``, ``disable_css_preprocessing``, ``tracked``, ``fake_bcc``,
    ``reply_to``, ``preheader``); the caller decides whether to warn.
    """
    if not isinstance(req, SendEmailRequest):
        return ()
    return tuple(name for name in _UNSUPPORTED_EMAIL_FIELDS if getattr(req, name) is not None)


# -- result -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SendResult(Mapping[str, Any]):
    """The outcome of ``send_email``/``send_push``/``send_sms``; truthy when the gateway took it.

    It is also a read-only mapping of the server's parsed JSON answer (empty when the answer was
    not a JSON object; ``body`` keeps whatever was parsed), so ``result["delivery_id"]`` works.

    Attributes: ``ok``; ``status_code`` (None when no HTTP answer came); ``host`` (the gateway
    base URL that answered or was tried last); ``body``; ``error`` (a
    :class:`~cdp_batcher.DeliveryError` on failure, else None); ``reason`` (``"ok"``, ``"http_500"``,
    ``"timeout"``, ``"connection_error"``, ``"disabled"``, ``"shutdown"``, ...); ``attempts``
    (requests made) and ``elapsed`` (seconds).

    >>> result = client.send_sms(identifiers={"id": "u1"}, to="+15550001111", body="Code: 1234")  # doctest: +SKIP
    >>> if result:  # doctest: +SKIP
    ...     print(result["delivery_id"], result.host)
    ... else:
    ...     print(result.reason, result.error)
    """

    ok: bool
    status_code: Optional[int] = None
    host: Optional[str] = None
    body: Any = None
    error: Optional[DeliveryError] = None
    reason: str = "ok"
    attempts: int = 0
    elapsed: float = 0.0

    def __bool__(self) -> bool:
        return self.ok

    def _mapping(self) -> Mapping[str, Any]:
        return self.body if isinstance(self.body, dict) else {}

    def __getitem__(self, key: str) -> Any:
        return self._mapping()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping())

    def __len__(self) -> int:
        return len(self._mapping())

    __hash__ = None  # type: ignore[assignment]  # body is a dict

    def __repr__(self) -> str:
        if self.ok:
            return (
                f"SendResult(ok=True, status_code={self.status_code}, host={self.host!r}, body={self.body!r})"
            )
        return (
            f"SendResult(ok=False, status_code={self.status_code}, host={self.host!r}, "
            f"reason={self.reason!r}, error={str(self.error) if self.error else None!r})"
        )
