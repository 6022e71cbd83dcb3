"""cdp_batcher: the fast, lossless batching client for OpenCDP (with optional Customer.io dual-write).

>>> from cdp_batcher import CDPClient
>>> client = CDPClient(cdp_api_key="...")  # doctest: +SKIP
>>> client.track("user123", "purchase_completed", {"amount": 99.99})  # doctest: +SKIP
"""

from ._client import CDPClient
from ._config import ClientConfig, CustomerIoConfig
from ._errors import CDPError, ConfigError, DeliveryError, SerializationError, ValidationError
from ._stats import DeliveryReport, DestinationReport, DestinationStats, FailedEvent, Stats
from ._transactional import SendEmailRequest, SendPushRequest, SendResult, SendSmsRequest
from ._version import __version__
from .destinations.opencdp import PingResult

__all__ = [
    "CDPClient",
    "CDPError",
    "ClientConfig",
    "ConfigError",
    "CustomerIoConfig",
    "DeliveryError",
    "DeliveryReport",
    "DestinationReport",
    "DestinationStats",
    "FailedEvent",
    "PingResult",
    "SendEmailRequest",
    "SendPushRequest",
    "SendResult",
    "SendSmsRequest",
    "SerializationError",
    "Stats",
    "ValidationError",
    "__version__",
]
