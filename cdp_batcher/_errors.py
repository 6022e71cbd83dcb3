"""The exception tree of cdp_batcher.

::

    CDPError                          base of everything the library raises
    ├── ConfigError(ValueError)       bad constructor argument (name, expected, given)
    ├── ValidationError(ValueError)   bad call: raised in the caller before anything is queued
    │   └── SerializationError(TypeError)   a property value that cannot become JSON
    └── DeliveryError                 a synchronous send failed (status, host, server message)

Messages never contain API keys or request bodies.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "CDPError",
    "ConfigError",
    "DeliveryError",
    "SerializationError",
    "ValidationError",
]


class CDPError(Exception):
    """Base class of every exception raised by cdp_batcher.

    >>> try:
    ...     client.track("", "signed_up")
    ... except CDPError as exc:
    ...     print(exc)
    Identifier cannot be empty
    """


class ConfigError(CDPError, ValueError):
    """A configuration value is invalid; raised by the constructor.

    >>> CDPClient(cdp_api_key="")  # doctest: +SKIP
    ConfigError: cdp_api_key must be a non-empty string, got ''
    """


class ValidationError(CDPError, ValueError):
    """A call's arguments are invalid; raised in the caller, nothing is queued or sent.

    The message is one of the OpenCDP SDK contract's texts where one exists, e.g.
    ``Identifier cannot be empty`` or ``Event name cannot be empty``.

    >>> client.track("user123", "   ")  # doctest: +SKIP
    ValidationError: Event name cannot be empty
    """


class SerializationError(ValidationError, TypeError):
    """A property value cannot be encoded as JSON; the message names the key path.

    >>> client.track("user123", "e", {"cart": {"item": object()}})  # doctest: +SKIP
    SerializationError: properties['cart']['item'] cannot be serialized to JSON: ...
    """


class DeliveryError(CDPError):
    """A request could not be delivered.

    Attributes: ``status_code`` (None when no HTTP answer came), ``host`` (scheme and host of
    the last gateway tried, never a key), ``server_message`` (the server's error text, if any)
    and ``hosts_tried``.

    >>> try:
    ...     client.ping()
    ... except DeliveryError as exc:  # doctest: +SKIP
    ...     print(exc.status_code, exc.hosts_tried)
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: Optional[int] = None,
        host: Optional[str] = None,
        server_message: Optional[str] = None,
        hosts_tried: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.host = host
        self.server_message = server_message
        self.hosts_tried = hosts_tried

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_delivery_error,
            (str(self), self.status_code, self.host, self.server_message, self.hosts_tried),
        )


def _rebuild_delivery_error(
    message: str,
    status_code: Optional[int],
    host: Optional[str],
    server_message: Optional[str],
    hosts_tried: tuple[str, ...],
) -> DeliveryError:
    return DeliveryError(
        message, status_code=status_code, host=host, server_message=server_message, hosts_tried=hosts_tried
    )
