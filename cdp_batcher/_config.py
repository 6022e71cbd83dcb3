"""Configuration: frozen, keyword-only value objects validated at construction.

Every check raises :class:`ConfigError` naming the field, what was expected and what was given.
Secrets (API keys) never appear in a ``repr`` or an error message.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, Optional, cast
from urllib.parse import urlsplit

from ._errors import ConfigError

__all__ = [
    "DEFAULT_CDP_ENDPOINT",
    "DEFAULT_CDP_FALLBACK_ENDPOINTS",
    "ENV_VARIABLES",
    "OPTIONS",
    "ClientConfig",
    "CustomerIoConfig",
    "env_options",
    "normalize_endpoints",
]

DEFAULT_CDP_ENDPOINT = "https://api.opencdp.io/gateway/data-gateway"
DEFAULT_CDP_FALLBACK_ENDPOINTS: tuple[str, ...] = (
    "https://api.opencdp.com/gateway/data-gateway",
    "https://api.opencdp.xyz/gateway/data-gateway",
)
CUSTOMERIO_REGIONS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}

#: Hard cap on OpenCDP requests in flight (as the Node SDK).
MAX_CONCURRENT_REQUESTS_CAP = 30

_MISSING: Any = object()


def _mask(secret: str) -> str:
    return "'***'" if secret else "''"


def _check_url(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a URL string, got {type(value).__name__}")
    url = value.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an http(s) URL with a host, got {value!r}")
    if parts.username or parts.password:
        raise ConfigError(f"{name} must not carry credentials in the URL")
    return url


def normalize_endpoints(primary: str, fallbacks: Iterable[str]) -> tuple[str, ...]:
    """Trim white space, drop trailing ``/`` and de-duplicate, primary first."""
    hosts: list[str] = []
    for i, url in enumerate([primary, *fallbacks]):
        name = "cdp_endpoint" if i == 0 else f"cdp_fallback_endpoints[{i - 1}]"
        clean = _check_url(name, url)
        if clean not in hosts:
            hosts.append(clean)
    return tuple(hosts)


def _number(
    name: str, value: object, *, minimum: float, integer: bool = False, exclusive: bool = False
) -> Any:
    ok_types: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    number = float(cast(float, value))
    if number != number or number in (float("inf"), float("-inf")):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    if (exclusive and number <= minimum) or number < minimum:
        bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
        raise ConfigError(f"{name} must be {bound}, got {value!r}")
    return value


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class CustomerIoConfig:
    """Customer.io Track API credentials for dual-write.

    >>> CustomerIoConfig(site_id="abc", api_key="secret", region="eu").base_url
    'https://track-eu.customer.io'
    """

    site_id: str
    api_key: str = dataclasses.field(repr=False)
    region: str = "us"
    url: Optional[str] = None

    def __post_init__(self) -> None:
        if not isinstance(self.site_id, str) or not self.site_id.strip():
            raise ConfigError("customer_io.site_id must be a non-empty string")
        if not isinstance(self.api_key, str) or not self.api_key.strip():
            raise ConfigError("customer_io.api_key must be a non-empty string")
        if self.region not in CUSTOMERIO_REGIONS:
            raise ConfigError(f"customer_io.region must be one of 'us', 'eu', got {self.region!r}")
        if self.url is not None:
            object.__setattr__(self, "url", _check_url("customer_io.url", self.url))

    @property
    def base_url(self) -> str:
        """The Track API host this configuration resolves to (``url`` overrides ``region``)."""
        return self.url if self.url is not None else CUSTOMERIO_REGIONS[self.region]

    def __repr__(self) -> str:
        return (
            f"CustomerIoConfig(site_id={self.site_id!r}, api_key={_mask(self.api_key)}, "
            f"region={self.region!r}, url={self.url!r})"
        )


OnError = Callable[[BaseException, Sequence[Any]], object]


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """Every setting of a :class:`CDPClient`, validated. Build it with :meth:`from_kwargs`.

    >>> ClientConfig.from_kwargs(cdp_api_key="k", flush_interval=1.0).flush_interval
    1.0
    >>> client.config.endpoints[0]  # doctest: +SKIP
    'https://api.opencdp.io/gateway/data-gateway'
    """

    cdp_api_key: str
    endpoints: tuple[str, ...]
    timeout_ms: int = 10_000
    max_batch_size: int = 100
    flush_interval: float = 0.5
    max_queue_size: int = 10_000
    max_queue_bytes: int = 32 * 1024 * 1024
    max_concurrent_requests: int = 10
    max_retries: int = 8
    retry_max_time: float = 60.0
    shutdown_timeout: float = 5.0
    on_error: Optional[OnError] = None
    send: bool = True
    sync_mode: bool = False
    fail_on_exception: bool = False
    debug: bool = False
    session: Any = None
    logger: Any = None
    send_to_customer_io: bool = False
    customer_io: Optional[CustomerIoConfig] = None
    spool_dir: Optional[str] = None
    max_spool_bytes: int = 256 * 1024 * 1024
    spool_fsync: Optional[float] = None

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            shown.append(f"{f.name}={_mask(value) if f.name == 'cdp_api_key' else repr(value)}")
        return f"ClientConfig({', '.join(shown)})"

    @property
    def timeout(self) -> float:
        """Per-request timeout in seconds."""
        return self.timeout_ms / 1000.0

    @classmethod
    def from_kwargs(cls, **options: Any) -> ClientConfig:
        """Validate flat keyword arguments (the public names of :class:`CDPClient`, :data:`OPTIONS`);
        an option not given takes its default, the field's default here."""
        unknown = [name for name in options if name not in OPTIONS]
        if unknown:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(map(repr, unknown))}")
        if "cdp_api_key" not in options:
            raise TypeError("missing required keyword argument: 'cdp_api_key'")
        opt: dict[str, Any] = {name: options.get(name, getattr(cls, name, None)) for name in OPTIONS}
        cdp_api_key = opt["cdp_api_key"]
        cdp_endpoint = opt["cdp_endpoint"]
        cdp_fallback_endpoints = opt["cdp_fallback_endpoints"]
        max_concurrent_requests = opt["max_concurrent_requests"]
        on_error, session, logger = opt["on_error"], opt["session"], opt["logger"]
        send_to_customer_io, customer_io = opt["send_to_customer_io"], opt["customer_io"]
        if not isinstance(cdp_api_key, str) or not cdp_api_key.strip():
            given = "an empty string" if isinstance(cdp_api_key, str) else type(cdp_api_key).__name__
            raise ConfigError(f"cdp_api_key must be a non-empty string, got {given}")
        primary = DEFAULT_CDP_ENDPOINT if cdp_endpoint is None else cdp_endpoint
        if cdp_fallback_endpoints is None:
            fallbacks: Sequence[str] = DEFAULT_CDP_FALLBACK_ENDPOINTS
        elif isinstance(cdp_fallback_endpoints, str) or not isinstance(cdp_fallback_endpoints, Iterable):
            raise ConfigError(
                f"cdp_fallback_endpoints must be a list of URLs, got {type(cdp_fallback_endpoints).__name__}"
            )
        else:
            fallbacks = list(cdp_fallback_endpoints)
        endpoints = normalize_endpoints(primary, fallbacks)
        concurrency = _number("max_concurrent_requests", max_concurrent_requests, minimum=1, integer=True)
        if on_error is not None and not callable(on_error):
            raise ConfigError(f"on_error must be callable(error, events), got {type(on_error).__name__}")
        if session is not None and not (
            callable(getattr(session, "send", None)) and hasattr(session, "adapters")
        ):
            raise ConfigError(f"session must be a requests.Session, got {type(session).__name__}")
        if logger is not None:
            missing = [
                m for m in ("debug", "info", "warning", "error") if not callable(getattr(logger, m, None))
            ]
            if missing:
                raise ConfigError(
                    f"logger must have debug/info/warning/error methods; missing {', '.join(missing)}"
                )
        _flag("send_to_customer_io", send_to_customer_io)
        if customer_io is not None and not isinstance(customer_io, CustomerIoConfig):
            raise ConfigError(f"customer_io must be a CustomerIoConfig, got {type(customer_io).__name__}")
        if send_to_customer_io and customer_io is None:
            raise ConfigError(
                "send_to_customer_io=True needs customer_io=CustomerIoConfig(site_id=..., api_key=...)"
            )
        spool_dir = opt["spool_dir"]
        if spool_dir is not None:
            if not isinstance(spool_dir, (str, os.PathLike)) or not os.fspath(spool_dir):
                raise ConfigError(f"spool_dir must be a directory path or None, got {spool_dir!r}")
            spool_dir = os.fspath(spool_dir)
            if not isinstance(spool_dir, str):
                raise ConfigError(f"spool_dir must be a text path, got {spool_dir!r}")
        spool_fsync = opt["spool_fsync"]
        if spool_fsync is not None:
            spool_fsync = float(_number("spool_fsync", spool_fsync, minimum=0, exclusive=True))
        return cls(
            cdp_api_key=cdp_api_key,
            endpoints=endpoints,
            timeout_ms=_number("timeout_ms", opt["timeout_ms"], minimum=0, integer=True, exclusive=True),
            max_batch_size=_number("max_batch_size", opt["max_batch_size"], minimum=1, integer=True),
            flush_interval=float(_number("flush_interval", opt["flush_interval"], minimum=0, exclusive=True)),
            max_queue_size=_number("max_queue_size", opt["max_queue_size"], minimum=1, integer=True),
            max_queue_bytes=_number("max_queue_bytes", opt["max_queue_bytes"], minimum=1024, integer=True),
            max_concurrent_requests=min(concurrency, MAX_CONCURRENT_REQUESTS_CAP),
            max_retries=_number("max_retries", opt["max_retries"], minimum=0, integer=True),
            retry_max_time=float(_number("retry_max_time", opt["retry_max_time"], minimum=0)),
            shutdown_timeout=float(_number("shutdown_timeout", opt["shutdown_timeout"], minimum=0)),
            on_error=on_error,
            send=_flag("send", opt["send"]),
            sync_mode=_flag("sync_mode", opt["sync_mode"]),
            fail_on_exception=_flag("fail_on_exception", opt["fail_on_exception"]),
            debug=_flag("debug", opt["debug"]),
            session=session,
            logger=logger,
            send_to_customer_io=send_to_customer_io,
            customer_io=customer_io if send_to_customer_io else None,
            spool_dir=spool_dir,
            max_spool_bytes=_number("max_spool_bytes", opt["max_spool_bytes"], minimum=1 << 20, integer=True),
            spool_fsync=spool_fsync,
        )

    def get_logger(self) -> Any:
        """The logger to use: the user's, else ``logging.getLogger("cdp_batcher")``."""
        return self.logger if self.logger is not None else logging.getLogger("cdp_batcher")


#: The public options of :class:`CDPClient`, in order: the API key, the two endpoint options
#: (folded into ``endpoints``), then every other field of :class:`ClientConfig`, whose default is
#: the option's default (the one place defaults are written).
OPTIONS: tuple[str, ...] = (
    "cdp_api_key",
    "cdp_endpoint",
    "cdp_fallback_endpoints",
    *(f.name for f in dataclasses.fields(ClientConfig) if f.name not in ("cdp_api_key", "endpoints")),
)

#: The environment variables :func:`env_options` reads.
ENV_VARIABLES = (
    "CDP_API_KEY",
    "CDP_ENDPOINT",
    "CDP_FALLBACK_ENDPOINTS",
    "CUSTOMERIO_SITE_ID",
    "CUSTOMERIO_API_KEY",
    "CUSTOMERIO_REGION",
    "CUSTOMERIO_URL",
    "CDP_SPOOL_DIR",
)


def env_options(environ: Mapping[str, str], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The client options that ``environ`` sets (see :meth:`CDPClient.from_env`), ``overrides`` on top.

    >>> env_options({"CDP_API_KEY": "k", "CDP_FALLBACK_ENDPOINTS": ""}, {})
    {'cdp_api_key': 'k', 'cdp_fallback_endpoints': []}
    """
    env = environ
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
            settings["customer_io"] = CustomerIoConfig(site_id=site, api_key=cio_key, region=region, url=url)
            settings["send_to_customer_io"] = True
    if env.get("CDP_SPOOL_DIR", "").strip():
        settings["spool_dir"] = env["CDP_SPOOL_DIR"].strip()
    settings.update(overrides)
    return settings
