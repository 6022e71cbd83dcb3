"""Wire shapes of every call (queued and transactional), and the one place where they become bytes.

Each call is encoded at call time, once. With dual-write on, the OpenCDP body is the shared
record: the Customer.io queue holds the same bytes object with a ULID value fixed at call time
(a :data:`Record`), and its route thread builds the entry from them (:func:`decode_track_record`
keeps the properties as :class:`msgspec.Raw`, never decoding them). Batch bodies are assembled
from entry bytes without re-encoding the properties.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Sequence
from typing import Any, Final, Optional, Union

import msgspec

__all__ = [
    "DECODE_ERRORS",
    "DEVICE_FIELDS",
    "DEVICE_STRING_FIELDS",
    "DeviceInfo",
    "IDENTIFY",
    "KIND_NAMES",
    "REGISTER_DEVICE",
    "TRACK",
    "Item",
    "Raw",
    "Record",
    "SendEmailRequest",
    "SendPushRequest",
    "SendSmsRequest",
    "TransactionalRequest",
    "UlidSpeller",
    "decode",
    "decode_identify_record",
    "decode_track_record",
    "encode",
    "format_ulid",
    "join_raw",
    "new_ulid",
    "ulid_seconds",
    "ulid_value",
]

# Call kinds, as small ints (queued with each body).
IDENTIFY = 0
TRACK = 1
REGISTER_DEVICE = 2
KIND_NAMES = ("identify", "track", "register_device")

#: A derived destination's queued event: (kind, the primary destination's body, ULID value). The
#: body is the same bytes object the primary queue holds; the ULID (and with it the call time)
#: is fixed at call time, the entry built from both in the destination's own thread.
Record = tuple[int, bytes, int]
#: A queued event: (kind, encoded body bytes), or a :data:`Record`.
Item = Union[tuple[int, bytes], Record]

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


class _TrackRecord(msgspec.Struct, gc=False):
    """An OpenCDP track body read back with its properties left as JSON bytes."""

    identifier: str
    eventName: str
    properties: msgspec.Raw


class _IdentifyRecord(msgspec.Struct, gc=False):
    identifier: str
    properties: msgspec.Raw


decode_track_record = msgspec.json.Decoder(_TrackRecord).decode
decode_identify_record = msgspec.json.Decoder(_IdentifyRecord).decode

#: OpenCDP's names for the device fields whose wire name is not the Python name.
_OPENCDP_DEVICE_NAMES: Final = {
    "device_id": "deviceId",
    "fcm_token": "fcmToken",
    "apn_token": "apnToken",
    "os_version": "osVersion",
    "app_version": "appVersion",
}


class DeviceInfo(
    msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True, gc=False, rename=_OPENCDP_DEVICE_NAMES
):
    """A validated ``register_device`` call: the one definition of the device fields.

    Its encoding is OpenCDP's ``registerDevice`` body; Customer.io maps it to an ``add_device``
    entry; the importer's device columns are its fields after ``identifier``
    (:data:`DEVICE_FIELDS`). ``attributes`` is already-encoded JSON (``Raw``) or None.
    """

    identifier: str
    device_id: str
    platform: str
    fcm_token: Optional[str] = None
    apn_token: Optional[str] = None
    name: Optional[str] = None
    os_version: Optional[str] = None
    model: Optional[str] = None
    app_version: Optional[str] = None
    last_active_at: Optional[Any] = None
    attributes: Optional[Any] = None


#: ``register_device``'s keyword fields, in order.
DEVICE_FIELDS: tuple[str, ...] = DeviceInfo.__struct_fields__[1:]
#: The device fields that must be strings when given.
DEVICE_STRING_FIELDS: tuple[str, ...] = (
    "fcm_token",
    "apn_token",
    "name",
    "os_version",
    "model",
    "app_version",
)


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


# ---------------------------------------------------------------------------------- transactional
# msgspec evaluates Struct annotations at runtime, so `X | None` would break Python 3.9: keep
# Optional/Union throughout (pyproject ignores these two rules for the same reason).
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

# ------------------------------------------------------------------------------------------- ULID
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: Every pair of Crockford characters, indexed by 10 bits.
_PAIRS = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)
#: 26 characters = 13 pairs of 10 bits = 130 bits: the 128-bit value with two leading zeros.
_BITS30 = (1 << 30) - 1
#: Mersenne Twister, seeded from os.urandom and re-seeded in a forked child by the random
#: module itself. ULIDs need uniqueness (idempotency keys), not secrecy; this is 4x faster
#: than os.urandom with base32.
_random_bits = random.getrandbits


def format_ulid(value: int) -> str:
    """The 26 Crockford base32 characters of a 128-bit ULID value: the top 8 bits (as 10), then
    four 30-bit parts, each spelled by three lookups of 10 bits (small-int arithmetic)."""
    p = _PAIRS
    b = value >> 90 & _BITS30
    c = value >> 60 & _BITS30
    d = value >> 30 & _BITS30
    e = value & _BITS30
    return "".join(
        (
            p[value >> 120],
            p[b >> 20],
            p[b >> 10 & 1023],
            p[b & 1023],
            p[c >> 20],
            p[c >> 10 & 1023],
            p[c & 1023],
            p[d >> 20],
            p[d >> 10 & 1023],
            p[d & 1023],
            p[e >> 20],
            p[e >> 10 & 1023],
            p[e & 1023],
        )
    )


def new_ulid(timestamp_ms: int) -> str:
    """A ULID (26 Crockford base32 characters): 48-bit time in ms, then 80 random bits."""
    return format_ulid((timestamp_ms & 0xFFFFFFFFFFFF) << 80 | _random_bits(80))


#: Monotonic ULIDs (the spec's "increment within a millisecond"): per millisecond a prefix of
#: time and 79 random bits, plus one process-wide counter. ``next()`` on an itertools.count is
#: atomic under the GIL, so threads calling at once never share a value; the 79 bits leave the
#: counter 2**79 steps before the random part could carry into the time. Two threads crossing a
#: millisecond together may stamp an event with the previous millisecond (by 1 ms): harmless.
_ulid_counter = itertools.count().__next__
_ulid_prefix = 0
#: The millisecond the prefix is for, as the interval [start, end) of time.time() values.
_ulid_start = 0.0
_ulid_end = -1.0
_time = time.time


def ulid_value() -> int:
    """A ULID for an event happening now, as an int (:func:`format_ulid` spells it): about
    0.15 µs, against 0.9-1.5 µs for drawing 80 random bits and spelling them per call."""
    global _ulid_prefix, _ulid_start, _ulid_end
    now = _time()
    if not _ulid_start <= now < _ulid_end:  # a new millisecond (or the clock went back)
        ms = int(now * 1000)
        _ulid_prefix = (ms & 0xFFFFFFFFFFFF) << 80 | _random_bits(79)
        _ulid_start, _ulid_end = ms / 1000, (ms + 1) / 1000
    return _ulid_prefix + _ulid_counter()


def ulid_seconds(value: int) -> int:
    """The unix time in whole seconds of a ULID value (its 48-bit millisecond time)."""
    return (value >> 80) // 1000


class UlidSpeller:
    """:func:`format_ulid` and :func:`ulid_seconds` for a stream of monotonic ULIDs: those of one
    millisecond share their first 98 bits, so the first 20 characters and the seconds are kept
    from the previous value and only the last 6 characters spelled (a quarter of the cost).
    The cache is one tuple, swapped whole: threads sharing a speller never mix two values."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: tuple[int, str, int] = (-1, "", 0)

    def __call__(self, value: int) -> tuple[str, int]:
        """``(format_ulid(value), ulid_seconds(value))``."""
        high = value >> 30
        cached, head, seconds = self._cache
        if high != cached:
            text = format_ulid(value)
            seconds = ulid_seconds(value)
            self._cache = (high, text[:20], seconds)
            return text, seconds
        low = value & _BITS30
        p = _PAIRS
        return "".join((head, p[low >> 20], p[low >> 10 & 1023], p[low & 1023])), seconds


def _reset_ulid_in_child() -> None:
    """A forked child draws its own random part (random re-seeds itself in the child)."""
    global _ulid_end
    _ulid_end = -1.0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_ulid_in_child)


# ------------------------------------------------------------------------------------------ bodies
def join_raw(prefix: bytes, parts: Sequence[bytes], suffix: bytes) -> bytes:
    """``prefix + ",".join(parts) + suffix``: a JSON array body from already-encoded entries."""
    return b"".join((prefix, b",".join(parts), suffix))
