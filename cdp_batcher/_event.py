"""Wire shapes of every queued call, and the one place where events become bytes.

Each call is encoded exactly once per destination, at call time. Properties are encoded to
JSON once and embedded in each destination's body as :class:`msgspec.Raw` when more than one
destination needs them. Batch bodies are assembled from those bytes without re-encoding.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import msgspec

from ._errors import SerializationError, ValidationError

__all__ = [
    "DECODE_ERRORS",
    "IDENTIFY",
    "Raw",
    "KIND_NAMES",
    "REGISTER_DEVICE",
    "TRACK",
    "Item",
    "check_event_name",
    "check_identifier",
    "check_properties",
    "decode",
    "encode",
    "encode_properties",
    "join_raw",
    "new_ulid",
]

# Call kinds, as small ints (queued with each body).
IDENTIFY = 0
TRACK = 1
REGISTER_DEVICE = 2
KIND_NAMES = ("identify", "track", "register_device")

#: A queued event: (kind, encoded body bytes).
Item = tuple[int, bytes]

_encoder = msgspec.json.Encoder(decimal_format="number")
encode = _encoder.encode
_decoder = msgspec.json.Decoder()
decode = _decoder.decode
#: What ``decode`` raises on bad input: a ValueError on msgspec >= 0.21, not before (Python 3.9
#: gets msgspec 0.20). Catch this tuple, not ValueError alone.
DECODE_ERRORS: tuple[type[Exception], ...] = (ValueError, msgspec.DecodeError)

#: JSON bytes embedded as they are in another Struct's encoding (properties shared by destinations).
Raw = msgspec.Raw


# ---------------------------------------------------------------------------------------- OpenCDP
class OpenCdpIdentify(msgspec.Struct, gc=False):
    identifier: str
    properties: Any


class OpenCdpTrack(msgspec.Struct, gc=False):
    identifier: str
    eventName: str
    properties: Any


class OpenCdpDevice(msgspec.Struct, omit_defaults=True, gc=False):
    identifier: str
    deviceId: str
    platform: str
    fcmToken: Optional[str] = None
    apnToken: Optional[str] = None
    name: Optional[str] = None
    osVersion: Optional[str] = None
    model: Optional[str] = None
    appVersion: Optional[str] = None
    last_active_at: Optional[Union[int, float, str]] = None
    attributes: Any = None


# ------------------------------------------------------------------------------------ Customer.io
class CioIdentifiers(msgspec.Struct, gc=False):
    id: str


class CioIdentify(msgspec.Struct, tag_field="type", tag="person", gc=False):
    identifiers: CioIdentifiers
    action: str
    attributes: Any
    timestamp: int


class CioEvent(msgspec.Struct, tag_field="type", tag="person", gc=False):
    identifiers: CioIdentifiers
    action: str
    name: str
    id: str
    timestamp: int
    attributes: Any


class CioDevice(msgspec.Struct, omit_defaults=True, gc=False):
    token: str
    platform: str
    last_used: Optional[int] = None
    attributes: Any = None


class CioAddDevice(msgspec.Struct, tag_field="type", tag="person", gc=False):
    identifiers: CioIdentifiers
    action: str
    device: CioDevice


# ------------------------------------------------------------------------------------- validation
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


def _key_path(value: Any, path: str) -> Optional[tuple[str, BaseException]]:
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
            found = _key_path(item, sub)
            if found:
                return found
    elif isinstance(value, (list, tuple, set, frozenset)):
        for i, item in enumerate(value):
            found = _key_path(item, f"{path}[{i}]")
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
    found = _key_path(properties, name)
    path, cause = found if found else (name, exc)
    return SerializationError(f"{path} cannot be serialized to JSON: {type(cause).__name__}: {cause}")


# ------------------------------------------------------------------------------------------- ULID
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: Every pair of Crockford characters, indexed by 10 bits.
_PAIRS = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)
#: 26 characters = 13 pairs of 10 bits = 130 bits: the 128-bit value with two leading zeros.
_SHIFTS = tuple(range(120, -1, -10))
#: Mersenne Twister, seeded from os.urandom and re-seeded in a forked child by the random
#: module itself. ULIDs need uniqueness (idempotency keys), not secrecy; this is 4x faster
#: than os.urandom with base32.
_random_bits = random.getrandbits


def new_ulid(timestamp_ms: int) -> str:
    """A ULID (26 Crockford base32 characters): 48-bit time in ms, then 80 random bits."""
    value = (timestamp_ms & 0xFFFFFFFFFFFF) << 80 | _random_bits(80)
    pairs = _PAIRS
    return "".join([pairs[(value >> shift) & 1023] for shift in _SHIFTS])


# ------------------------------------------------------------------------------------------ bodies
def join_raw(prefix: bytes, parts: Sequence[bytes], suffix: bytes) -> bytes:
    """``prefix + ",".join(parts) + suffix``: a JSON array body from already-encoded entries."""
    return b"".join((prefix, b",".join(parts), suffix))


_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def looks_like_email(identifier: str) -> bool:
    """True when an identifier looks like an email address (the SDK contract discourages it)."""
    return "@" in identifier and _EMAIL_RE.match(identifier) is not None
