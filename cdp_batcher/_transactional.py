"""Transactional sends: building a request, its wire body, and the result.

The client builds a request with :func:`build_request` (validated there, in the caller, by
:mod:`._validate`), encodes it with :func:`encode_request` and posts it to
``PATHS[type(request)]`` through the OpenCDP gateway at most once (:class:`TransactionalSender`).
The request types themselves are wire Structs in :mod:`._event`.

Python names are the wire names except ``from_`` -> ``from``, ``amp_body`` -> ``body_amp`` and
``plaintext_body`` -> ``body_plain``. A field left ``None`` is omitted from the body.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import types
from collections.abc import Iterator, Mapping
from typing import Any, Callable, Final, Optional, Protocol, TypeVar

import msgspec

from ._config import ClientConfig
from ._errors import DeliveryError, ValidationError
from ._event import (
    DECODE_ERRORS,
    SendEmailRequest,
    SendPushRequest,
    SendSmsRequest,
    TransactionalRequest,
    decode,
    encode,
)
from ._validate import (
    IDENTIFIER_KEYS,
    identifier_is_set,
    is_blank,
    key_path,
    serialization_error,
    type_name,
    validate_email,
    validate_push,
    validate_sms,
)

__all__ = [
    "PATHS",
    "SendEmailRequest",
    "SendPushRequest",
    "SendResult",
    "SendSmsRequest",
    "TransactionalRequest",
    "TransactionalSender",
    "build_email",
    "build_request",
    "build_push",
    "build_sms",
    "encode_request",
    "unsupported_fields",
]

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

# -- building -----------------------------------------------------------------------------------

_WIRE_NAME_HINTS: Final = {"from": "from_", "body_amp": "amp_body", "body_plain": "plaintext_body"}


def _build(kind: type[_R], func: str, request: Optional[_R], fields: dict[str, Any]) -> _R:
    if request is not None:
        if fields:
            raise ValidationError(f"pass either a {kind.__name__} or keyword fields, not both")
        if not isinstance(request, kind):
            raise TypeError(f"{func}() expects a {kind.__name__}, got {type_name(request)}")
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
        compact = {k: v for k, v in identifiers.items() if k not in IDENTIFIER_KEYS or identifier_is_set(v)}
        if len(compact) != len(identifiers):
            changes["identifiers"] = compact
    template_id = req.transactional_message_id
    if isinstance(template_id, str) and is_blank(template_id):
        changes["transactional_message_id"] = None
    elif (
        isinstance(req, SendSmsRequest) and isinstance(template_id, int) and not isinstance(template_id, bool)
    ):
        changes["transactional_message_id"] = str(template_id)
    return msgspec.structs.replace(req, **changes) if changes else req


def encode_request(req: TransactionalRequest) -> bytes:
    """The JSON body for ``req``: wire names, unset fields omitted. Does not validate.

    Encoded by the one encoder of :mod:`._event` (a ``Decimal`` becomes a JSON number, as from
    ``track()``). Raises SerializationError, naming the key path the way ``track()`` does
    (``message_data['order']['items'][1]``), when a value cannot become JSON.
    """
    if not isinstance(req, (SendEmailRequest, SendPushRequest, SendSmsRequest)):
        raise TypeError(f"encode_request() expects a transactional request, got {type_name(req)}")
    wire = _wire_form(req)
    try:
        return encode(wire)
    except Exception as exc:
        for field in wire.__struct_fields__:
            value = getattr(wire, field)
            if key_path(value, field) is not None:
                raise serialization_error(value, field, exc) from None
        raise serialization_error(wire, type(wire).__name__, exc) from None


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


# -- sending ------------------------------------------------------------------------------------


class _AtMostOnce(Protocol):
    def send_at_most_once(
        self, path: str, body: bytes, *, note: Optional[Callable[[str], None]] = None
    ) -> Any: ...


class TransactionalSender:
    """A client's transactional sends: encode, warn about unsupported fields, post at most once
    through the OpenCDP gateway, and map the outcome to a :class:`SendResult` (or raise it,
    ``fail_on_exception``)."""

    def __init__(
        self,
        gateway: _AtMostOnce,
        cfg: ClientConfig,
        *,
        log: Any,
        limiter: Any,
        warn_once: Callable[[str, str], None],
    ) -> None:
        self._gateway = gateway  # looked up at send time: only sends need it
        self._send = cfg.send
        self._debug = cfg.debug
        self._fail_on_exception = cfg.fail_on_exception
        self._log = log
        self._limiter = limiter
        self._warn_once = warn_once

    def send(self, call: str, req: TransactionalRequest, *, closed: bool) -> SendResult:
        body = encode_request(req)  # SerializationError (a ValidationError) before any request
        unsupported = unsupported_fields(req)
        if unsupported:
            names = ", ".join(unsupported)
            self._warn_once(
                f"unsupported:{call}:{names}",
                f"cdp_batcher: {call}() fields not yet processed by the backend (sent, but ignored): {names}",
            )
        if not self._send:
            if self._debug:
                self._log.debug("cdp_batcher: %s() not sent (send=False)", call)
            return SendResult(False, reason="disabled")
        if closed:
            error = DeliveryError(f"{call}() called after shutdown(): not sent")
            return self._failed(call, SendResult(False, error=error, reason="shutdown"))
        debug = self._debug
        started = time.monotonic()
        outcome = self._gateway.send_at_most_once(
            PATHS[type(req)],
            body,
            note=functools.partial(self._log.debug, "cdp_batcher: %s") if debug else None,
        )
        answer = outcome.answer
        parsed: Any = None
        if answer is not None and answer.content:
            try:
                parsed = decode(answer.content)
            except DECODE_ERRORS:
                parsed = None
        result = SendResult(
            outcome.ok,
            status_code=answer.status if answer is not None else None,
            host=outcome.host,
            body=parsed,
            error=outcome.error,
            reason=outcome.reason,
            attempts=outcome.attempts,
            elapsed=time.monotonic() - started,
        )
        if result.ok:
            if debug:
                self._log.debug(
                    "cdp_batcher: %s() accepted by %s (HTTP %s, %d attempt(s), %.3fs)",
                    call,
                    result.host,
                    result.status_code,
                    result.attempts,
                    result.elapsed,
                )
            return result
        return self._failed(call, result)

    def _failed(self, call: str, result: SendResult) -> SendResult:
        """Raise the result's DeliveryError (fail_on_exception) or log it and return the result."""
        error = result.error if result.error is not None else DeliveryError(f"{call}() failed")
        if self._fail_on_exception:
            if self._debug:
                self._log.debug("cdp_batcher: %s() failed (%s): raising DeliveryError", call, result.reason)
            raise error
        status = f", HTTP {result.status_code}" if result.status_code is not None else ""
        detail = f": {error.server_message}" if self._debug and error.server_message else ""
        self._limiter.warn(
            f"transactional:{call}:{result.reason}",
            f"cdp_batcher: {call}() failed ({result.reason}{status}) at {result.host or 'no host'}{detail}; "
            "not resent (transactional sends are never sent twice)",
        )
        return result
