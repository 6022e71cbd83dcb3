"""Dual-write: every identify / track / register_device goes to OpenCDP and to Customer.io.

    CDP_API_KEY=... CUSTOMERIO_SITE_ID=... CUSTOMERIO_API_KEY=... python examples/dual_write.py
    python examples/dual_write.py        # no settings: runs against a local collector it starts

Each destination has its own queue, retries and counters: a slow or failing Customer.io never
delays OpenCDP. The report and stats() below show both.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional

from cdp_batcher import CDPClient, CustomerIoConfig
from cdp_batcher.testing import Collector


def settings_from_env() -> Optional[dict[str, Any]]:
    """Client settings from the environment (as `make demo` sets them), or None when unset."""
    if not os.environ.get("CDP_API_KEY") or not os.environ.get("CUSTOMERIO_SITE_ID"):
        return None
    settings: dict[str, Any] = {"cdp_api_key": os.environ["CDP_API_KEY"]}
    if os.environ.get("CDP_ENDPOINT"):
        settings["cdp_endpoint"] = os.environ["CDP_ENDPOINT"]
    if "CDP_FALLBACK_ENDPOINTS" in os.environ:
        raw = os.environ["CDP_FALLBACK_ENDPOINTS"]
        settings["cdp_fallback_endpoints"] = [u for u in raw.split(",") if u.strip()]
    settings["send_to_customer_io"] = True
    settings["customer_io"] = CustomerIoConfig(
        site_id=os.environ["CUSTOMERIO_SITE_ID"],
        api_key=os.environ["CUSTOMERIO_API_KEY"],
        region=os.environ.get("CUSTOMERIO_REGION", "us"),
        url=os.environ.get("CUSTOMERIO_URL") or None,  # e.g. the local collector
    )
    return settings


def run(settings: dict[str, Any]) -> int:
    with CDPClient(**settings) as client:
        client.identify("user-7", {"plan": "pro", "company": "Acme"})
        client.track("user-7", "purchase_completed", {"amount": 49.0, "currency": "EUR"})
        client.register_device("user-7", device_id="phone-1", platform="ios", apn_token="apn-token-1")
        # A web device has no Customer.io counterpart: OpenCDP only (counted: unsupported_platform).
        client.register_device("user-7", device_id="browser-1", platform="web", fcm_token="web-push-1")
        report = client.flush(timeout=10.0)
        for name, dest in client.stats().destinations.items():
            print(
                f"dual_write: {name}: delivered={dest.delivered} failed={dict(dest.failed)} "
                f"dropped={dict(dest.dropped)}"
            )
        ok = all(d.pending == 0 and not d.failed for d in report.destinations.values())
        return 0 if ok else 1


def main() -> int:
    settings = settings_from_env()
    if settings is not None:
        return run(settings)
    with Collector(api_key="demo", cio_site_id="demo-site", cio_api_key="demo-cio", printer=print) as c:
        code = run(
            {
                "cdp_api_key": "demo",
                "cdp_endpoint": c.url,
                "cdp_fallback_endpoints": [],
                "send_to_customer_io": True,
                "customer_io": CustomerIoConfig(site_id="demo-site", api_key="demo-cio", url=c.url),
            }
        )
        print(
            f"dual_write: collector got {c.count('opencdp')} opencdp calls, {c.count('customerio')} entries"
        )
        return code


if __name__ == "__main__":
    sys.exit(main())
