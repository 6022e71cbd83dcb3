"""The public client: a thin facade over the pipeline.

``CDPClient`` builds the configuration (:mod:`._config`), one route per destination
(:mod:`._route`), the way calls reach them (:mod:`._ingest`) and the process hooks
(:mod:`._lifecycle`); it keeps the fast path of ``track()``/``identify()`` inline, and flush,
shutdown, stats, ping, the transactional sends and the serverless/asyncio helpers.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable, Optional, TypeVar, Union, cast

from . import _concurrency
from ._config import OPTIONS, ClientConfig, CustomerIoConfig, OnError, env_options
from ._errors import ConfigError
from ._event import (
    DEVICE_STRING_FIELDS,
    IDENTIFY,
    REGISTER_DEVICE,
    TRACK,
    DeviceInfo,
    Item,
    OpenCdpIdentify,
    OpenCdpTrack,
    Raw,
    encode,
    ulid_value,
)
from ._ingest import Dual, Ingest, exact
from ._ledger import FlushTicket
from ._lifecycle import ClientHooks, abandon_routes, inside_pipeline, pipeline_frame
from ._report import LogLimiter, WarnOnce
from ._retry import RetryPolicy
from ._route import Route
from ._spool import Spool, SpoolUnavailable
from ._stats import DeliveryReport, DestinationReport, Stats
from ._transactional import (
    SendEmailRequest,
    SendPushRequest,
    SendResult,
    SendSmsRequest,
    TransactionalSender,
    build_request,
)
from ._validate import (
    check_device_fields,
    check_event_name,
    check_identifier,
    check_properties,
    encode_properties,
    looks_like_email,
    serialization_error,
)
from .destinations._base import Destination
from .destinations.opencdp import OpenCdpDestination, PingResult

__all__ = ["CDPClient", "wait_for_room"]

_F = TypeVar("_F", bound=Callable[..., Any])

DEFAULT_FLUSH_TIMEOUT = 30.0
_D = ClientConfig  # option defaults: the fields of ClientConfig (the one place they are written)


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
        timeout_ms: int = _D.timeout_ms,
        max_batch_size: int = _D.max_batch_size,
        flush_interval: float = _D.flush_interval,
        max_queue_size: int = _D.max_queue_size,
        max_queue_bytes: int = _D.max_queue_bytes,
        max_concurrent_requests: int = _D.max_concurrent_requests,
        max_retries: int = _D.max_retries,
        retry_max_time: float = _D.retry_max_time,
        shutdown_timeout: float = _D.shutdown_timeout,
        on_error: Optional[OnError] = _D.on_error,
        send: bool = _D.send,
        sync_mode: bool = _D.sync_mode,
        fail_on_exception: bool = _D.fail_on_exception,
        debug: bool = _D.debug,
        session: Any = _D.session,
        logger: Any = _D.logger,
        send_to_customer_io: bool = _D.send_to_customer_io,
        customer_io: Optional[CustomerIoConfig] = _D.customer_io,
        spool_dir: Optional[str] = _D.spool_dir,
        max_spool_bytes: int = _D.max_spool_bytes,
        spool_fsync: Optional[float] = _D.spool_fsync,
    ) -> None:
        given = locals()  # this signature is OPTIONS with ClientConfig's defaults (test_single_sources)
        cfg = ClientConfig.from_kwargs(**{name: given[name] for name in OPTIONS})
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
        self._spool = self._open_spool(cfg, destinations)
        streams = self._spool.streams if self._spool is not None else {}
        self._routes = tuple(
            Route.from_config(dest, cfg, self._limiter, streams.get(dest.name)) for dest in destinations
        )
        self._closed = False
        self._shutdown_lock = _concurrency.lock()
        self._sync_token = _concurrency.token()
        self._shutdown_report: Optional[DeliveryReport] = None
        self._warn_once = WarnOnce(self._log)  # shared, so that nothing below holds the client
        self._warned = self._warn_once.warned
        self._ingest = Ingest(self._routes, send=cfg.send, sync_mode=cfg.sync_mode, warn_once=self._warn_once)
        self._route_call = self._ingest.call
        self._transactional = TransactionalSender(
            self._opencdp,
            cfg,
            log=self._log,
            limiter=self._limiter,
            warn_once=self._warn_once,
        )
        self._fast_put: Optional[Callable[[Item], bool]] = None
        self._fast_dual: Optional[Dual] = None
        self._set_fast_path()
        self._hooks = ClientHooks(
            self,
            shutdown_timeout=cfg.shutdown_timeout,
            logger=self._log,
            after_fork=self._after_fork_in_child,
            before_exit=self._before_exit,
            abandon=functools.partial(abandon_routes, self._routes, cfg.shutdown_timeout),
        )
        for route in self._routes:  # a child forked without Python's fork hooks resets the client
            route.on_fork = self._hooks.unhooked_fork

    def _open_spool(self, cfg: ClientConfig, destinations: Sequence[Destination]) -> Optional[Spool]:
        """The durable spool in ``spool_dir`` (None without one); ConfigError when it is unusable."""
        if cfg.spool_dir is None:
            return None
        try:
            return Spool(
                cfg.spool_dir,
                [d.name for d in destinations],
                max_bytes=cfg.max_spool_bytes,
                fsync=cfg.spool_fsync,
                max_memory_records=cfg.max_queue_size,
                max_memory_bytes=cfg.max_queue_bytes,
                warn=self._limiter.warn,
            )
        except SpoolUnavailable as exc:
            raise ConfigError(str(exc)) from None

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
        """The paths track()/identify() take in the client's present state (see _ingest)."""
        self._fast_put, self._fast_dual = self._ingest.fast_paths()

    def _before_exit(self, deadline: float) -> None:
        """The exit hook's shutdown is next: calls made after it are sent inline until ``deadline``."""
        self._ingest.inline_until = deadline

    def _close(self) -> None:
        self._closed = True
        self._ingest.closed = True
        self._fast_put = None
        self._fast_dual = None

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
            put((TRACK, exact((body, b""))))
            return
        dual = self._fast_dual
        if dual is not None:  # dual-write: one body, queued on both routes with one put
            try:
                body = encode(OpenCdpTrack(identifier, event_name, properties))
            except Exception as exc:
                raise serialization_error(properties, "properties", exc) from None
            if len(body) <= dual[1]:
                body = exact((body, b""))
                dual[0]((TRACK, body), (TRACK, body, ulid_value()))
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
            put((IDENTIFY, exact((body, b""))))
            return
        dual = self._fast_dual
        if dual is not None:
            try:
                body = encode(OpenCdpIdentify(identifier, properties))
            except Exception as exc:
                raise serialization_error(properties, "properties", exc) from None
            if len(body) <= dual[2]:
                body = exact((body, b""))
                dual[0]((IDENTIFY, body), (IDENTIFY, body, ulid_value()))
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
        strings = (fcm_token, apn_token, name, os_version, model, app_version)
        check_device_fields(device_id, platform, dict(zip(DEVICE_STRING_FIELDS, strings)))
        attrs: Any = None
        if attributes is not None:
            attrs = Raw(encode_properties(check_properties(attributes, "attributes"), "attributes"))
        if last_active_at is not None:
            encode_properties({"last_active_at": last_active_at}, "last_active_at")
        device = DeviceInfo(
            identifier=identifier,
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
            tickets = [(route, route.begin_flush(deadline)) for route in self._routes]
            met = True
            for route, ticket in tickets:
                met = route.wait(ticket, deadline) and met
            return self._report(tickets, met, start)

    def _report(
        self, tickets: Sequence[tuple[Route, FlushTicket]], met: bool, start: float
    ) -> DeliveryReport:
        reports: dict[str, DestinationReport] = {
            route.name: route.report(ticket) for route, ticket in tickets
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
        if _concurrency.stale(self._sync_token):  # gevent/eventlet patched threading since: see _concurrency
            self._shutdown_lock, self._sync_token = _concurrency.lock(), _concurrency.token()
        with pipeline_frame, self._shutdown_lock:
            if self._shutdown_report is not None:
                return self._shutdown_report
            start = time.monotonic()
            deadline = start + (self._cfg.shutdown_timeout if timeout is None else max(0.0, timeout))
            self._close()
            # No inline sending here: finish_shutdown does it, once the deadline caps requests.
            tickets = [(route, route.begin_flush(deadline, inline=False)) for route in self._routes]
            for route in self._routes:
                route.begin_shutdown(deadline)
            for route in self._routes:
                route.finish_shutdown(deadline)
            met = all(route.wait(ticket, deadline) for route, ticket in tickets)
            report = self._report(tickets, met, start)
            if self._spool is not None:
                self._spool.close()  # what is not resolved stays on disk (report.spooled)
            self._shutdown_report = report
            self._hooks.closed()
            return report

    def _shutdown_later(self, timeout: Optional[float]) -> DeliveryReport:
        deadline = time.monotonic() + (self._cfg.shutdown_timeout if timeout is None else max(0.0, timeout))
        self._close()

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
            route.name: DestinationReport(0, empty, empty, route.unresolved()) for route in self._routes
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
        if self._spool is not None:
            self._spool.after_fork_in_child()  # first: the routes' queues sit on its streams
        for route in self._routes:
            route.after_fork_in_child()
        self._limiter.after_fork()
        self._shutdown_lock = _concurrency.lock()
        self._sync_token = _concurrency.token()
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
        return self._transactional.send("send_email", req, closed=self._closed)

    def send_push(self, request: Optional[SendPushRequest] = None, /, **fields: Any) -> SendResult:
        """Send a transactional push (``POST /v1/send/push``) to the person's registered devices.

        ``transactional_message_id`` is required; ``title``, ``body`` and ``message_data`` are
        optional. Same rules and result as :meth:`send_email`.

        >>> client.send_push(identifiers={"id": "user123"}, transactional_message_id="ORDER_SHIPPED",  # doctest: +SKIP
        ...                  title="Shipped", message_data={"order": "A-1"})
        """
        req = build_request(SendPushRequest, request, fields, func="send_push")
        return self._transactional.send("send_push", req, closed=self._closed)

    def send_sms(self, request: Optional[SendSmsRequest] = None, /, **fields: Any) -> SendResult:
        """Send a transactional SMS (``POST /v1/send/sms``): a template or a raw ``body``.

        Phone numbers (``to``, ``from_``) must be in E.164 form. Same rules and result as
        :meth:`send_email`.

        >>> client.send_sms(identifiers={"id": "user123"}, to="+15550001111", body="Code: 1234")  # doctest: +SKIP
        """
        req = build_request(SendSmsRequest, request, fields, func="send_sms")
        return self._transactional.send("send_sms", req, closed=self._closed)

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
        return cls(**env_options(os.environ if environ is None else environ, overrides))

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


def wait_for_room(
    client: CDPClient, high: float = 0.5, low: float = 0.25, timeout: Optional[float] = None
) -> bool:
    """Backpressure for bulk producers (the importer): when a destination's queue holds ``high``
    of its count or byte bound, ask for a flush and block until it is down to ``low``, so that no
    call is ever dropped as ``queue_full``. False on timeout or when the client is closed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    closed = lambda: client._closed  # noqa: E731
    return all(route.wait_for_room(high, low, deadline, closed) for route in client._routes)
