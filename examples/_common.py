"""Shared set-up for the examples: settings from the environment (set by `make demo`)."""

from __future__ import annotations

import os
from typing import Any


def client_settings() -> dict[str, Any]:
    """CDPClient keyword arguments from CDP_API_KEY / CDP_ENDPOINT / CDP_FALLBACK_ENDPOINTS."""
    settings: dict[str, Any] = {"cdp_api_key": os.environ["CDP_API_KEY"]}
    if os.environ.get("CDP_ENDPOINT"):
        settings["cdp_endpoint"] = os.environ["CDP_ENDPOINT"]
    if "CDP_FALLBACK_ENDPOINTS" in os.environ:
        raw = os.environ["CDP_FALLBACK_ENDPOINTS"]
        settings["cdp_fallback_endpoints"] = [u for u in raw.split(",") if u.strip()]
    return settings
