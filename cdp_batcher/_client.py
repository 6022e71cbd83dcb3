"""The public client: validated calls onto per-destination queues, flush, shutdown, lifecycle."""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import sys
import threading
import time
import types
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable, Optional, TypeVar, Union, cast

from ._config import ClientConfig, CustomerIoConfig, OnError
from ._errors import CDPError, DeliveryError, ValidationError
from ._event import (
    DECODE_ERRORS,
    IDENTIFY,
    REGISTER_DEVICE,
    TRACK,
    Item,
    OpenCdpIdentify,
    OpenCdpTrack,
    Raw,
    check_event_name,
    check_identifier,
    check_properties,
    decode,
    encode,
    encode_properties,
    looks_like_email,
    serialization_error,
)
from ._lifecycle import inside_pipeline, pipeline_frame
from ._retry import RetryPolicy
from ._stats import DeliveryReport, DestinationReport, Stats
from ._transactional import (
    PATHS,
    SendEmailRequest,
    SendPushRequest,
    SendResult,
    SendSmsRequest,
    TransactionalRequest,
    build_request,
    encode_request,
    unsupported_fields,
)
from ._worker import LogLimiter, Route
from .destinations._base import Destination, DeviceInfo
from .destinations.opencdp import OpenCdpDestination, PingResult

__all__ = ["CDPClient"]

_F = TypeVar("_F", bound=Callable[..., Any])

PLATFORMS = ("android", "ios", "web")
DEFAULT_FLUSH_TIMEOUT = 30.0

_live_clients: weakref.WeakSet[CDPClient] = weakref.WeakSet()

#: msgspec's output keeps its buffer's growth slack (about half again its length); joined with b""
#: it is copied to an exact-size object: about 70 bytes less per queued event for about 50 ns.
_exact = b"".join

#: The dual-write fast path, per destination: (encode_track, encode_identify, queue put, entry limit).
_FanOut = tuple[Callable[..., bytes], Callable[..., bytes], Callable[[Item], bool], Optional[int]]


def _after_fork_in_child() -> None:
    mp_util = sys.modules.get("multiprocessing.util")
    for client in list(_live_clients):
        client._after_fork_in_child()
        if mp_util is not None:  # a multiprocessing child ends with os._exit: no atexit
            mp_util.register_after_fork(client, _shutdown_at_multiprocessing_exit)


def _shutdown_at_multiprocessing_exit(client: CDPClient) -> None:
    """Run in a multiprocessing child (fork start method) once its registries were reset: its exit
    skips atexit but runs multiprocessing's finalizers, so the exit flush goes there too."""
    import multiprocessing.util

    client._mp_finalizer = multiprocessing.util.Finalize(
        None, _atexit_shutdown, args=(weakref.ref(client),), exitpriority=100
    )


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _atexit_shutdown(ref: weakref.ReferenceType[CDPClient]) -> None:
    client = ref()
    if client is not None:
        try:
            # Calls made later in the exit (another atexit handler) are sent inline until then.
            client._exit_deadline = time.monotonic() + client._cfg.shutdown_timeout
            client.shutdown(client._cfg.shutdown_timeout)
        except Exception:  # never raise at interpreter exit
            logging.getLogger("cdp_batcher").exception("cdp_batcher: shutdown at exit failed")


def _has_token(token: object) -> bool:
    """A push token counts when it is not None, empty or all white space."""
    return bool(token) and not (isinstance(token, str) and token.isspace())


def _abandoned(routes: Sequence[Route], timeout: float) -> None:
    """A client garbage-collected without shutdown(): let its threads deliver and end."""
    deadline = time.monotonic() + timeout
    for route in routes:
        route.begin_shutdown(deadline)


class CDPClient:
    """Sends identify/track/register_device calls to OpenCDP (and optionally Customer.io) in batches.

    Calls validate and encode at once, queue the bytes and return in microseconds; a daemon
    thread per destination delivers them. Every argument is keyword-only; only
    ``cdp_api_key`` is required.

    >>> client = CDPClient(cdp_api_key="...")  # doctest: +SKIP
    >>> client.track("user123", "purchase_completed", {"amount": 99.99})  # doctest: +SKIP
    >>> client.shutdown(timeout=5.0)  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        cdp_api_key: str,
        cdp_endpoint: Optional[str] = None,
        cdp_fallback_endpoints: Optional[Sequence[str]] = None,
        timeout_ms: int = 10_000,
        max_batch_size: int = 100,
        flush_interval: float = 0.5,
        max_queue_size: int = 10_000,
        max_queue_bytes: int = 32 * 1024 * 1024,
        max_concurrent_requests: int = 10,
        max_retries: int = 8,
        retry_max_time: float = 60.0,
        shutdown_timeout: float = 5.0,
        on_error: Optional[OnError] = None,
        send: bool = True,
        sync_mode: bool = False,
        fail_on_exception: bool = False,
        debug: bool = False,
        session: Any = None,
        logger: Any = None,
        send_to_customer_io: bool = False,
        customer_io: Optional[CustomerIoConfig] = None,
    ) -> None:
        settings = {name: value for name, value in locals().items() if name != "self"}
        cfg = ClientConfig.from_kwargs(**settings)  # the same names, validated in one place
        self._cfg = cfg
        self._log = cfg.get_logger()
        if cfg.debug and logger is None and isinstance(self._log, logging.Logger):
            self._log.setLevel(logging.DEBUG)
        self._limiter = LogLimiter(self._log)
        self._policy = RetryPolicy(max_retries=cfg.max_retries, max_time=cfg.retry_max_time)
        self._opencdp = OpenCdpDestination(
            api_key=cfg.cdp_api_key,
            endpoints=cfg.endpoints,
            timeout=cfg.timeout,
            concurrency=cfg.max_concurrent_requests,
            policy=self._policy,
            session=cfg.session,
        )
        destinations: list[Destination] = [self._opencdp]
        if cfg.customer_io is not None:
            destinations.append(self._customer_io_destination(cfg.customer_io))
        self._routes = tuple(
            Route(
                dest,
                max_queue_size=cfg.max_queue_size,
                max_queue_bytes=cfg.max_queue_bytes,
                max_batch_size=cfg.max_batch_size,
                flush_interval=cfg.flush_interval,
                on_error=cfg.on_error,
                limiter=self._limiter,
            )
            for dest in destinations
        )
        self._needs_timestamp = any(d.needs_timestamp for d in destinations)
        self._closed = False
        self._shutdown_lock = threading.Lock()
        self._shutdown_report: Optional[DeliveryReport] = None
        self._warned: set[str] = set()
        self._fast_put: Optional[Callable[[Item], bool]] = None
        self._fast_fan: Optional[tuple[_FanOut, ...]] = None
        self._set_fast_path()
        _live_clients.add(self)
        self._atexit_hook = functools.partial(_atexit_shutdown, weakref.ref(self))
        atexit.register(self._atexit_hook)
        self._finalizer = weakref.finalize(self, _abandoned, self._routes, cfg.shutdown_timeout)
        self._finalizer.atexit = False
        self._exit_deadline = 0.0  # the exit hook sets it: calls after shutdown go inline until then
        self._mp_finalizer: Any = None
        mp_process = sys.modules.get("multiprocessing.process")
        if mp_process is not None and mp_process.parent_process() is not None:
            _shutdown_at_multiprocessing_exit(self)  # built inside a multiprocessing child

    def _customer_io_destination(self, cio: CustomerIoConfig) -> Destination:
        from .destinations.customerio import CustomerIoDestination

        return CustomerIoDestination(
            cio,
            timeout=self._cfg.timeout,
            max_batch_size=self._cfg.max_batch_size,
            policy=self._policy,
            session=self._cfg.session,
        )

    def _set_fast_path(self) -> None:
        """One destination, sending, asynchronous, open: track() goes straight to the queue."""
        cfg = self._cfg
        simple = len(self._routes) == 1 and cfg.send and not cfg.sync_mode and not self._closed
        self._fast_put = self._routes[0].put if simple else None
        fan = len(self._routes) > 1 and cfg.send and not cfg.sync_mode and not self._closed
        self._fast_fan = (
            tuple(
                (r.dest.encode_track, r.dest.encode_identify, r.put, r.dest.max_entry_bytes)
                for r in self._routes
            )
            if fan
            else None
        )

    def __repr__(self) -> str:
        names = ", ".join(r.name for r in self._routes)
        state = "closed" if self._closed else "open"
        return f"<CDPClient {state} endpoints={list(self._cfg.endpoints)!r} destinations=[{names}]>"

    @property
    def config(self) -> ClientConfig:
        """The validated configuration (its repr masks the keys)."""
        return self._cfg

    # ------------------------------------------------------------------------- the three calls
    def track(self, identifier: str, event_name: str, properties: Optional[Mapping[str, Any]] = None) -> None:
        """Queue an event for ``identifier``; returns at once.

        Raises :class:`ValidationError` (``Identifier cannot be empty``, ``Event name cannot be
        empty``, properties not a mapping) or :class:`SerializationError` (a value that cannot
        become JSON; the message names its key) before anything is queued.

        >>> client.track("user123", "purchase_completed", {"amount": 99.99})  # doctest: +SKIP
        """
        if type(identifier) is not str or not identifier or identifier.isspace():
            identifier = check_identifier(identifier)
        if type(event_name) is not str or not event_name or event_name.isspace():
            event_name = check_event_name(event_name)
        if type(properties) is not dict:
            properties = check_properties(properties)
        put = self._fast_put
        if put is not None:
            try:
                body = encode(OpenCdpTrack(identifier, event_name, properties))
            except Exception as exc:
                raise serialization_error(properties, "properties", exc) from None
            put((TRACK, _exact((body, b""))))
            return
        fan = self._fast_fan
        if fan is not None:
            self._fan_out(fan, TRACK, identifier, event_name, properties)
            return
        self._route_call(TRACK, identifier, event_name, properties)

    def identify(self, identifier: str, properties: Optional[Mapping[str, Any]] = None) -> None:
        """Queue an identify call (person attributes); returns at once.

        >>> client.identify("user123", {"email": "a@example.com", "plan": "pro"})  # doctest: +SKIP
        """
        if type(identifier) is not str or not identifier or identifier.isspace():
            identifier = check_identifier(identifier)
        if type(properties) is not dict:
            properties = check_properties(properties)
        if "@" in identifier and "email_identifier" not in self._warned and looks_like_email(identifier):
            self._warn_once(
                "email_identifier",
                "identify() was given an email address as identifier; the OpenCDP SDK contract "
                "recommends a stable user id (the call proceeds)",
            )
        put = self._fast_put
        if put is not None:
            try:
                body = encode(OpenCdpIdentify(identifier, properties))
            except Exception as exc:
                raise serialization_error(properties, "properties", exc) from None
            put((IDENTIFY, _exact((body, b""))))
            return
        fan = self._fast_fan
        if fan is not None:
            self._fan_out(fan, IDENTIFY, identifier, None, properties)
            return
        self._route_call(IDENTIFY, identifier, None, properties)

    def register_device(
        self,
        identifier: str,
        *,
        device_id: str,
        platform: str,
        fcm_token: Optional[str] = None,
        apn_token: Optional[str] = None,
        name: Optional[str] = None,
        os_version: Optional[str] = None,
        model: Optional[str] = None,
        app_version: Optional[str] = None,
        last_active_at: Union[int, float, str, Any, None] = None,
        attributes: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """Queue a device registration (push token) for ``identifier``; returns at once.

        ``device_id`` is required, with ``fcm_token`` or ``apn_token``; ``platform`` is one of
        ``android``, ``ios``, ``web``.

        >>> client.register_device("user123", device_id="dev-1", platform="ios", apn_token="...")  # doctest: +SKIP
        """
        identifier = check_identifier(identifier)
        if device_id is None or (isinstance(device_id, str) and (not device_id or device_id.isspace())):
            raise ValidationError("device ID required")
        if not isinstance(device_id, str):
            raise ValidationError(f"device_id must be a string, got {type(device_id).__name__}")
        if platform not in PLATFORMS:
            raise ValidationError(f"platform must be one of: android, ios, web; got {platform!r}")
        if not _has_token(fcm_token) and not _has_token(apn_token):
            raise ValidationError("fcmToken or apnToken required")
        for field, value in (
            ("fcm_token", fcm_token),
            ("apn_token", apn_token),
            ("name", name),
            ("os_version", os_version),
            ("model", model),
            ("app_version", app_version),
        ):
            if value is not None and not isinstance(value, str):
                raise ValidationError(f"{field} must be a string, got {type(value).__name__}")
        attrs: Any = None
        if attributes is not None:
            attrs = Raw(encode_properties(check_properties(attributes, "attributes"), "attributes"))
        if last_active_at is not None:
            encode_properties({"last_active_at": last_active_at}, "last_active_at")
        device = DeviceInfo(
            device_id=device_id,
            platform=platform,
            fcm_token=fcm_token,
            apn_token=apn_token,
            name=name,
            os_version=os_version,
            model=model,
            app_version=app_version,
            last_active_at=last_active_at,
            attributes=attrs,
        )
        self._route_call(REGISTER_DEVICE, identifier, None, device)

    def _fan_out(
        self,
        fan: tuple[_FanOut, ...],
        kind: int,
        identifier: str,
        event_name: Optional[str],
        properties: dict[Any, Any],
    ) -> None:
        """Several destinations, sending, asynchronous, open: properties encoded once, one body
        per destination, each queued; anything unusual (an entry too large) takes the general path."""
        try:
            raw = Raw(encode(properties))
        except Exception as exc:
            raise serialization_error(properties, "properties", exc) from None
        timestamp = time.time()
        items = []
        for encode_track, encode_identify, put, limit in fan:
            if kind == TRACK:
                body = encode_track(identifier, event_name, raw, timestamp)
            else:
                body = encode_identify(identifier, raw, timestamp)
            if limit is not None and len(body) > limit:
                self._route_call(kind, identifier, event_name, properties)
                return
            items.append((put, body))
        for put, body in items:
            put((kind, body))

    def _route_call(self, kind: int, identifier: str, event_name: Optional[str], payload: Any) -> None:
        """The general path: several destinations, sync mode, disabled or closed clients."""
        routes = self._routes
        if kind != REGISTER_DEVICE:
            raw = Raw(encode_properties(payload))  # validates even when nothing is sent
            payload = raw if len(routes) > 1 else payload
        inline = self._cfg.sync_mode
        if self._closed:
            if time.monotonic() >= self._exit_deadline:
                for route in routes:
                    route.drop_at_offer((kind, b""), "shutdown")
                self._warn_once(
                    "closed", "cdp_batcher: call after shutdown() dropped (counted as dropped: shutdown)"
                )
                return
            inline = True  # interpreter exit, after the exit flush: send from this thread by its deadline
        if not self._cfg.send:
            for route in routes:
                route.drop_at_offer((kind, b""), "disabled")
            return
        timestamp = time.time() if self._needs_timestamp else 0.0
        items: list[tuple[Route, Item, Optional[str]]] = []
        for route in routes:
            dest = route.dest
            reason = None
            if kind == TRACK:
                assert event_name is not None
                body = dest.encode_track(identifier, event_name, payload, timestamp)
            elif kind == IDENTIFY:
                body = dest.encode_identify(identifier, payload, timestamp)
            else:
                body = dest.encode_device(identifier, payload, timestamp)
                reason = dest.device_rejection(payload)
            if reason is None and dest.max_entry_bytes is not None and len(body) > dest.max_entry_bytes:
                reason = "too_large"
            items.append((route, (kind, body), reason))
        failures: list[BaseException] = []
        for route, item, reason in items:
            if reason is not None:
                route.drop_at_offer(item, reason, CDPError(f"{route.name}: event not sent ({reason})"))
            elif inline:
                failure = route.send_now(item)
                if failure is not None and self._cfg.sync_mode:
                    failures.append(failure[1])
            else:
                route.put(item)
        if failures:
            error = failures[0]
            raise error if isinstance(error, DeliveryError) else DeliveryError(str(error))

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._log.warning("%s", message)

    # --------------------------------------------------------------------------- flush & exit
    def flush(self, timeout: Optional[float] = DEFAULT_FLUSH_TIMEOUT) -> DeliveryReport:
        """Send everything queued now and wait until it is resolved or ``timeout`` seconds pass.

        Returns a :class:`DeliveryReport`; it is truthy when every event enqueued before the call
        was delivered to every destination.

        >>> report = client.flush(timeout=10.0)  # doctest: +SKIP
        >>> assert report, report  # doctest: +SKIP
        """
        if inside_pipeline():
            return self._unresolved_report()
        with pipeline_frame:  # an on_error call made from here, or a signal handler, cannot wait
            start = time.monotonic()
            deadline = start + (DEFAULT_FLUSH_TIMEOUT if timeout is None else max(0.0, timeout))
            marks = [(route, *route.begin_flush(deadline)) for route in self._routes]
            met = True
            for route, target, _ in marks:
                met = route.wait(target, deadline) and met
            return self._report(marks, met, start)

    def _report(self, marks: Sequence[tuple[Route, int, Any]], met: bool, start: float) -> DeliveryReport:
        reports: dict[str, DestinationReport] = {
            route.name: route.report(target, before) for route, target, before in marks
        }
        return DeliveryReport(types.MappingProxyType(reports), met, time.monotonic() - start)

    def shutdown(self, timeout: Optional[float] = None) -> DeliveryReport:
        """Flush, stop the threads and close connections, within ``timeout`` (default
        ``shutdown_timeout``). Idempotent: later calls return the first call's report.

        Called on a thread that is already inside the client (a signal handler that interrupted
        track() or a shutdown in progress, or an ``on_error`` callback), it cannot wait there: it
        stops taking calls, finishes in a helper thread (which interpreter exit waits for) by the
        same deadline, and returns at once a report of what is unresolved.

        >>> client.shutdown(timeout=5.0)  # doctest: +SKIP
        """
        if self._shutdown_report is not None:
            return self._shutdown_report
        if inside_pipeline():
            return self._shutdown_later(timeout)
        with pipeline_frame, self._shutdown_lock:
            if self._shutdown_report is not None:
                return self._shutdown_report
            start = time.monotonic()
            deadline = start + (self._cfg.shutdown_timeout if timeout is None else max(0.0, timeout))
            self._closed = True
            self._fast_put = None
            self._fast_fan = None
            # No inline sending here: finish_shutdown does it, once the deadline caps requests.
            marks = [(route, *route.begin_flush(deadline, inline=False)) for route in self._routes]
            for route in self._routes:
                route.begin_shutdown(deadline)
            for route in self._routes:
                route.finish_shutdown(deadline)
            met = all(route.wait(target, deadline) for route, target, _ in marks)
            report = self._report(marks, met, start)
            self._shutdown_report = report
            atexit.unregister(self._atexit_hook)
            self._finalizer.detach()
            if self._mp_finalizer is not None:
                self._mp_finalizer.cancel()
            _live_clients.discard(self)
            return report

    def _shutdown_later(self, timeout: Optional[float]) -> DeliveryReport:
        deadline = time.monotonic() + (self._cfg.shutdown_timeout if timeout is None else max(0.0, timeout))
        self._closed = True
        self._fast_put = None
        self._fast_fan = None

        def finish() -> None:
            try:
                self.shutdown(max(0.0, deadline - time.monotonic()))
            except Exception:
                self._log.exception("cdp_batcher: deferred shutdown failed")

        helper = threading.Thread(target=finish, name="cdp_batcher-shutdown", daemon=False)
        with contextlib.suppress(RuntimeError):  # at interpreter shutdown the exit hook finishes
            helper.start()
        return self._unresolved_report()

    def _unresolved_report(self) -> DeliveryReport:
        """What is queued or in flight, read without taking any lock (for calls that cannot wait)."""
        empty: Mapping[str, int] = types.MappingProxyType({})
        reports = {
            route.name: DestinationReport(0, empty, empty, len(route.queue) + route._in_flight)
            for route in self._routes
        }
        return DeliveryReport(types.MappingProxyType(reports), False, 0.0)

    close = shutdown

    def __enter__(self) -> CDPClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------------------------- checks
    def ping(self, timeout: Optional[float] = None) -> PingResult:
        """``GET /v1/health/ping`` across the gateway hosts; the host that answered.

        Raises :class:`DeliveryError` naming each host tried when none answers 2xx.

        >>> client.ping().host  # doctest: +SKIP
        'https://api.opencdp.io/gateway/data-gateway'
        """
        return self._opencdp.ping(timeout)

    def stats(self) -> Stats:
        """A frozen snapshot of the counters, per destination.

        >>> client.stats().destinations["opencdp"].delivered  # doctest: +SKIP
        """
        snaps = {route.name: route.snapshot() for route in self._routes}
        return Stats(enqueued=snaps["opencdp"].enqueued, destinations=types.MappingProxyType(snaps))

    # ------------------------------------------------------------------------------- fork
    def _after_fork_in_child(self) -> None:
        for route in self._routes:
            route.after_fork_in_child()
        self._limiter._lock = threading.Lock()  # a parent thread may have held it at the fork
        self._shutdown_lock = threading.Lock()
        self._set_fast_path()

    # ------------------------------------------------------------------- transactional sends
    def send_email(self, request: Optional[SendEmailRequest] = None, /, **fields: Any) -> SendResult:
        """Send a transactional email now (``POST /v1/send/email``); never queued, never mirrored
        to Customer.io.

        Takes a :class:`SendEmailRequest` or its fields as keywords (``from_`` for ``from``;
        ``amp_body``/``plaintext_body`` go out as ``body_amp``/``body_plain``; None fields are
        omitted). Raises :class:`ValidationError` with the OpenCDP SDK messages before any
        request, whatever ``fail_on_exception`` says. The message is sent at most once: it is
        retried, or another gateway host tried, only when it surely did not reach a server
        (connection refused, DNS/TLS failure, 429/503). Returns a :class:`SendResult`: truthy on
        success and a mapping of the server's answer. On failure it raises
        :class:`DeliveryError` when ``fail_on_exception=True``, else logs a warning and returns
        a falsy result.

        >>> result = client.send_email(  # doctest: +SKIP
        ...     identifiers={"id": "user123"}, to="ann@example.com", transactional_message_id="WELCOME",
        ...     message_data={"name": "Ann"})
        >>> result["delivery_id"] if result else result.error  # doctest: +SKIP
        """
        req = build_request(SendEmailRequest, request, fields, func="send_email")
        return self._send_transactional("send_email", req)

    def send_push(self, request: Optional[SendPushRequest] = None, /, **fields: Any) -> SendResult:
        """Send a transactional push (``POST /v1/send/push``) to the person's registered devices.

        ``transactional_message_id`` is required; ``title``, ``body`` and ``message_data`` are
        optional. Same rules and result as :meth:`send_email`.

        >>> client.send_push(identifiers={"id": "user123"}, transactional_message_id="ORDER_SHIPPED",  # doctest: +SKIP
        ...                  title="Shipped", message_data={"order": "A-1"})
        """
        req = build_request(SendPushRequest, request, fields, func="send_push")
        return self._send_transactional("send_push", req)

    def send_sms(self, request: Optional[SendSmsRequest] = None, /, **fields: Any) -> SendResult:
        """Send a transactional SMS (``POST /v1/send/sms``): a template or a raw ``body``.

        Phone numbers (``to``, ``from_``) must be in E.164 form. Same rules and result as
        :meth:`send_email`.

        >>> client.send_sms(identifiers={"id": "user123"}, to="+15550001111", body="Code: 1234")  # doctest: +SKIP
        """
        req = build_request(SendSmsRequest, request, fields, func="send_sms")
        return self._send_transactional("send_sms", req)

    def _send_transactional(self, call: str, req: TransactionalRequest) -> SendResult:
        body = encode_request(req)  # SerializationError (a ValidationError) before any request
        unsupported = unsupported_fields(req)
        if unsupported:
            names = ", ".join(unsupported)
            self._warn_once(
                f"unsupported:{call}:{names}",
                f"cdp_batcher: {call}() fields not yet processed by the backend (sent, but ignored): {names}",
            )
        if not self._cfg.send:
            if self._cfg.debug:
                self._log.debug("cdp_batcher: %s() not sent (send=False)", call)
            return SendResult(False, reason="disabled")
        if self._closed:
            error = DeliveryError(f"{call}() called after shutdown(): not sent")
            return self._send_failed(call, SendResult(False, error=error, reason="shutdown"))
        debug = self._cfg.debug
        started = time.monotonic()
        outcome = self._opencdp.send_at_most_once(
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
        return self._send_failed(call, result)

    def _send_failed(self, call: str, result: SendResult) -> SendResult:
        """Raise the result's DeliveryError (fail_on_exception) or log it and return the result."""
        error = result.error if result.error is not None else DeliveryError(f"{call}() failed")
        if self._cfg.fail_on_exception:
            if self._cfg.debug:
                self._log.debug("cdp_batcher: %s() failed (%s): raising DeliveryError", call, result.reason)
            raise error
        status = f", HTTP {result.status_code}" if result.status_code is not None else ""
        detail = f": {error.server_message}" if self._cfg.debug and error.server_message else ""
        self._limiter.warn(
            f"transactional:{call}:{result.reason}",
            f"cdp_batcher: {call}() failed ({result.reason}{status}) at {result.host or 'no host'}{detail}; "
            "not resent (transactional sends are never sent twice)",
        )
        return result

    # ------------------------------------------------------------- environment, asyncio, bulk
    @classmethod
    def from_env(cls, *, environ: Optional[Mapping[str, str]] = None, **overrides: Any) -> CDPClient:
        """A client configured from environment variables; keyword ``overrides`` win.

        ``CDP_API_KEY`` (required), ``CDP_ENDPOINT``, ``CDP_FALLBACK_ENDPOINTS`` (comma-separated;
        set but empty disables failover), ``CUSTOMERIO_SITE_ID`` and ``CUSTOMERIO_API_KEY`` (both
        set turns dual-write on), ``CUSTOMERIO_REGION`` (``us``/``eu``), ``CUSTOMERIO_URL`` (host
        override). ``environ`` replaces ``os.environ`` (tests). A missing key raises
        :class:`ConfigError` naming the variable.

        >>> client = CDPClient.from_env(flush_interval=0.2)  # doctest: +SKIP
        """
        from ._errors import ConfigError

        env = os.environ if environ is None else environ
        settings: dict[str, Any] = {}
        key = env.get("CDP_API_KEY", "")
        if key.strip():
            settings["cdp_api_key"] = key.strip()
        elif "cdp_api_key" not in overrides:
            state = "is empty" if "CDP_API_KEY" in env else "is not set"
            raise ConfigError(f"CDP_API_KEY {state}: export CDP_API_KEY=... or pass cdp_api_key=...")
        if env.get("CDP_ENDPOINT", "").strip():
            settings["cdp_endpoint"] = env["CDP_ENDPOINT"].strip()
        if "CDP_FALLBACK_ENDPOINTS" in env:
            hosts = env["CDP_FALLBACK_ENDPOINTS"].split(",")
            settings["cdp_fallback_endpoints"] = [h.strip() for h in hosts if h.strip()]
        site = env.get("CUSTOMERIO_SITE_ID", "").strip()
        cio_key = env.get("CUSTOMERIO_API_KEY", "").strip()
        if "customer_io" not in overrides and "send_to_customer_io" not in overrides:
            if bool(site) != bool(cio_key):
                given, missing = (
                    ("CUSTOMERIO_SITE_ID", "CUSTOMERIO_API_KEY")
                    if site
                    else ("CUSTOMERIO_API_KEY", "CUSTOMERIO_SITE_ID")
                )
                raise ConfigError(f"{given} is set but {missing} is not: set both to dual-write, or neither")
            if site:
                region = env.get("CUSTOMERIO_REGION", "").strip().lower() or "us"
                if region not in ("us", "eu"):
                    raise ConfigError(f"CUSTOMERIO_REGION must be 'us' or 'eu', got {region!r}")
                url = env.get("CUSTOMERIO_URL", "").strip() or None
                settings["customer_io"] = CustomerIoConfig(
                    site_id=site, api_key=cio_key, region=region, url=url
                )
                settings["send_to_customer_io"] = True
        settings.update(overrides)
        return cls(**settings)

    async def aflush(self, timeout: Optional[float] = DEFAULT_FLUSH_TIMEOUT) -> DeliveryReport:
        """:meth:`flush` for asyncio code: waits in a worker thread, never blocking the event loop.

        >>> report = await client.aflush(timeout=10.0)  # doctest: +SKIP
        """
        import asyncio

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(self.flush, timeout))

    async def ashutdown(self, timeout: Optional[float] = None) -> DeliveryReport:
        """:meth:`shutdown` for asyncio code (e.g. a FastAPI lifespan); never blocks the event loop.

        >>> await client.ashutdown(timeout=5.0)  # doctest: +SKIP
        """
        import asyncio

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(self.shutdown, timeout))

    def _wait_for_room(self, high: float = 0.5, low: float = 0.25, timeout: Optional[float] = None) -> bool:
        """Backpressure for bulk producers (the importer): when a destination's queue holds
        ``high`` of its count or byte bound, ask for a flush and block until it is down to
        ``low``, so that no call is ever dropped as ``queue_full``. False on timeout or when the
        client is closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return all(route.wait_for_room(high, low, deadline, lambda: self._closed) for route in self._routes)

    # ------------------------------------------------------------ serverless, short-lived jobs
    @contextlib.contextmanager
    def flushing(self, timeout: Optional[float] = 10.0) -> Iterator[CDPClient]:
        """Flush when the block ends, even when it raises: for serverless handlers and jobs whose
        process may be frozen or killed right after. Logs a warning when not all was delivered.

        >>> def handler(event, context):  # doctest: +SKIP
        ...     with client.flushing(timeout=5.0):
        ...         client.track(event["user"], "invoked")
        """
        try:
            yield self
        finally:
            self._flush_at_end(timeout)

    def flush_after(self, timeout: Optional[float] = 10.0) -> Callable[[_F], _F]:
        """Decorator: :meth:`flush` after every call of the function (``async`` ones too), even
        when it raises; the function's result is returned unchanged.

        >>> @client.flush_after(timeout=5.0)  # doctest: +SKIP
        ... def handler(event, context):
        ...     client.track(event["user"], "invoked")
        """

        def decorate(func: _F) -> _F:
            import inspect

            if inspect.iscoroutinefunction(func):

                @functools.wraps(func)
                async def awrapper(*args: Any, **kwargs: Any) -> Any:
                    try:
                        return await func(*args, **kwargs)
                    finally:
                        self._log_unflushed(await self.aflush(timeout))

                return cast(_F, awrapper)

            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                with self.flushing(timeout):
                    return func(*args, **kwargs)

            return cast(_F, wrapper)

        return decorate

    def _flush_at_end(self, timeout: Optional[float]) -> None:
        self._log_unflushed(self.flush(timeout))

    def _log_unflushed(self, report: DeliveryReport) -> None:
        if not report:
            self._log.warning("cdp_batcher: flush at the end of the invocation incomplete: %s", report)
