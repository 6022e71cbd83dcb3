"""Every argument check, in the caller's thread, before anything is queued or sent.

Calls (``track``/``identify``/``register_device``): identifiers, event names, property
mappings and device fields, with the OpenCDP SDK messages. A value that cannot become JSON is a
:class:`SerializationError` naming its key path, found by the one walker :func:`key_path`.

Transactional sends (``send_email``/``send_push``/``send_sms``): field sets and messages mirror
the OpenCDP Node SDK (``src/types.ts``, ``src/client.ts``); the Go SDK agrees on the field sets.

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

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any, Final, Optional

from ._errors import SerializationError, ValidationError
from ._event import SendEmailRequest, SendPushRequest, SendSmsRequest, TransactionalRequest, encode

__all__ = [
    "IDENTIFIER_KEYS",
    "PLATFORMS",
    "check_device_fields",
    "check_event_name",
    "check_identifier",
    "check_properties",
    "encode_properties",
    "has_token",
    "identifier_is_set",
    "is_blank",
    "key_path",
    "looks_like_email",
    "serialization_error",
    "type_name",
    "validate_email",
    "validate_push",
    "validate_sms",
]

#: ``register_device`` platforms.
PLATFORMS = ("android", "ios", "web")


# ------------------------------------------------------------------------------------------ calls
def check_identifier(identifier: object) -> str:
    """Return the identifier as a string, or raise ``Identifier cannot be empty``."""
    if type(identifier) is str:
        if identifier and not identifier.isspace():
            return identifier
        raise ValidationError("Identifier cannot be empty")
    if identifier is None:
        raise ValidationError("Identifier cannot be empty")
    if isinstance(identifier, int) and not isinstance(identifier, bool):
        return str(identifier)
    if isinstance(identifier, str):
        return check_identifier(str(identifier))
    raise ValidationError(f"identifier must be a string, got {type(identifier).__name__}")


def check_event_name(event_name: object) -> str:
    """Return the event name, or raise ``Event name cannot be empty``."""
    if isinstance(event_name, str):
        if event_name and not event_name.isspace():
            return str(event_name)
        raise ValidationError("Event name cannot be empty")
    if event_name is None:
        raise ValidationError("Event name cannot be empty")
    raise ValidationError(f"event_name must be a string, got {type(event_name).__name__}")


def check_properties(properties: object, name: str = "properties") -> dict[Any, Any]:
    """Return a plain dict of the properties (None is ``{}``), or raise naming the type."""
    if type(properties) is dict:
        return properties
    if properties is None:
        return {}
    if isinstance(properties, Mapping):
        return dict(properties)
    raise ValidationError(f"{name} must be a mapping (dict), got {type(properties).__name__}")


def key_path(value: Any, path: str) -> Optional[tuple[str, BaseException]]:
    """Find the first key path under ``value`` that cannot be encoded (slow path only)."""
    try:
        encode(value)
        return None
    except Exception as exc:
        error: BaseException = exc
    if isinstance(value, Mapping):
        for key, item in value.items():
            sub = f"{path}[{key!r}]"
            try:
                encode({key: None})
            except Exception as exc:
                return sub, exc
            found = key_path(item, sub)
            if found:
                return found
    elif isinstance(value, (list, tuple, set, frozenset)):
        for i, item in enumerate(value):
            found = key_path(item, f"{path}[{i}]")
            if found:
                return found
    return path, error


def encode_properties(properties: Any, name: str = "properties") -> bytes:
    """Encode a properties mapping to JSON bytes, or raise :class:`SerializationError`."""
    try:
        return encode(properties)
    except Exception as exc:
        raise serialization_error(properties, name, exc) from None


def serialization_error(properties: Any, name: str, exc: BaseException) -> SerializationError:
    """Build the error naming the first key path whose value cannot become JSON."""
    found = key_path(properties, name)
    path, cause = found if found else (name, exc)
    return SerializationError(f"{path} cannot be serialized to JSON: {type(cause).__name__}: {cause}")


_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def looks_like_email(identifier: str) -> bool:
    """True when an identifier looks like an email address (the SDK contract discourages it)."""
    return "@" in identifier and _EMAIL_RE.match(identifier) is not None


def has_token(token: object) -> bool:
    """A push token counts when it is not None, empty or all white space."""
    return bool(token) and not (isinstance(token, str) and token.isspace())


def check_device_fields(device_id: object, platform: object, strings: Mapping[str, object]) -> None:
    """``register_device``'s checks, in the SDK's order: device id, platform, a push token, then
    the type of each optional string field in ``strings`` (name -> value)."""
    if device_id is None or (isinstance(device_id, str) and (not device_id or device_id.isspace())):
        raise ValidationError("device ID required")
    if not isinstance(device_id, str):
        raise ValidationError(f"device_id must be a string, got {type(device_id).__name__}")
    if platform not in PLATFORMS:
        raise ValidationError(f"platform must be one of: android, ios, web; got {platform!r}")
    if not has_token(strings.get("fcm_token")) and not has_token(strings.get("apn_token")):
        raise ValidationError("fcmToken or apnToken required")
    for field, value in strings.items():
        if value is not None and not isinstance(value, str):
            raise ValidationError(f"{field} must be a string, got {type(value).__name__}")


IDENTIFIER_KEYS: Final = ("id", "email", "cdp_id")
_EMAIL_ADDRESS_RE: Final = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")
_PHONE_RE: Final = re.compile(r"\+?[1-9][0-9]{1,14}")

# The gateway's attachment limits, as the Node and Go SDKs check them.
_MAX_ATTACHMENTS: Final = 5
_MAX_ATTACHMENTS_DECODED_BYTES: Final = 2 * 1024 * 1024
_MAX_ATTACHMENT_ENCODED_CHARS: Final = 4 * -(-_MAX_ATTACHMENTS_DECODED_BYTES // 3)
_BLANK_RE: Final = re.compile(r"\s+")

_MSG_IDENTIFIERS_REQUIRED: Final = "identifiers is required"
_MSG_IDENTIFIERS_ONE: Final = "identifiers must contain exactly one of: id, email, or cdp_id"
_MSG_EMAIL_EMPTY: Final = "Email address cannot be empty"
_MSG_EMAIL_FORMAT: Final = "Invalid email address format"
_MSG_PHONE_EMPTY: Final = "Phone number cannot be empty"
_MSG_PHONE_FORMAT: Final = "Phone number must be in international format (e.g., +1234567890)"
_MSG_NOT_TEMPLATE: Final = "{} is required when not using a template"


# ---------------------------------------------------------------------------- transactional sends
# -- small checks -------------------------------------------------------------------------------


def type_name(value: object) -> str:
    return type(value).__name__


def is_blank(value: str) -> bool:
    return not value.strip()


def _check_str(name: str, value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"{name} must be a string, got {type_name(value)}")


def _check_bool(name: str, value: object) -> None:
    if value is not None and not isinstance(value, bool):
        raise ValidationError(f"{name} must be a boolean, got {type_name(value)}")


def _check_object(name: str, value: object) -> None:
    if value is not None and not isinstance(value, dict):
        raise ValidationError(f"{name} must be an object")


def _check_not_blank(name: str, value: object) -> None:
    """``<name> cannot be empty if provided``, after the type check."""
    _check_str(name, value)
    if isinstance(value, str) and is_blank(value):
        raise ValidationError(f"{name} cannot be empty if provided")


def _check_template_id_type(value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
        raise ValidationError(
            f"transactional_message_id must be a string or an integer, got {type_name(value)}"
        )


def _has_template_id(value: object) -> bool:
    """A non-blank string or an int counts; ``None`` and blank strings do not."""
    if isinstance(value, str):
        return not is_blank(value)
    return value is not None


def identifier_is_set(value: object) -> bool:
    return value is not None and not (isinstance(value, str) and is_blank(value))


def _check_identifiers(identifiers: object) -> None:
    if identifiers is None:
        raise ValidationError(_MSG_IDENTIFIERS_REQUIRED)
    if not isinstance(identifiers, dict) or any(key not in IDENTIFIER_KEYS for key in identifiers):
        raise ValidationError(_MSG_IDENTIFIERS_ONE)
    present = [key for key in IDENTIFIER_KEYS if identifier_is_set(identifiers.get(key))]
    if len(present) != 1:
        raise ValidationError(_MSG_IDENTIFIERS_ONE)
    key = present[0]
    value = identifiers[key]
    if key == "id":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValidationError(f"identifiers.id must be a string or an integer, got {type_name(value)}")
    elif not isinstance(value, str):
        raise ValidationError(f"identifiers.{key} must be a string, got {type_name(value)}")


def _check_email_address(name: str, value: object) -> None:
    _check_str(name, value)
    if not isinstance(value, str):
        return
    if is_blank(value):
        raise ValidationError(_MSG_EMAIL_EMPTY)
    if not _EMAIL_ADDRESS_RE.fullmatch(value):
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
        raise ValidationError(f"{name} must be a string or a list of strings, got {type_name(value)}")
    for address in addresses:
        if not isinstance(address, str):
            raise ValidationError(
                f"{name} must be a string or a list of strings, got a list containing {type_name(address)}"
            )
        _check_email_address(name, address.strip() if isinstance(value, str) else address)


def _check_phone(name: str, value: object) -> None:
    _check_str(name, value)
    if not isinstance(value, str):
        return
    if is_blank(value):
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
        raise TypeError(f"{func}() expects a {kind.__name__}, got {type_name(req)}")


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
            if value is None or is_blank(value)
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
