"""A serverless handler (AWS Lambda, Google Cloud Functions, Azure Functions ...).

    CDP_API_KEY=... python examples/frameworks/serverless.py --selftest   # three simulated invocations

The platform may freeze the process the moment the handler returns, so a background thread
cannot be trusted to deliver later. Keep one client per container (module level: warm
invocations reuse it and its connections) and flush before returning, within the time the
invocation has left. The report says whether everything arrived.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from cdp_batcher import CDPClient

client = CDPClient.from_env()
log = logging.getLogger("serverless")

#: Seconds kept back for the platform after the flush.
SAFETY_MARGIN = 0.5


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    user = event.get("user_id", "anonymous")
    client.track(user, event.get("event", "function_invoked"), event.get("properties", {}))
    remaining = getattr(context, "get_remaining_time_in_millis", lambda: 10_000)() / 1000.0
    report = client.flush(timeout=max(0.1, min(5.0, remaining - SAFETY_MARGIN)))
    if not report:
        log.warning("cdp_batcher: not delivered before returning: %s", report)
    return {"statusCode": 200, "delivered": report.delivered, "ok": bool(report)}


class _FakeContext:
    """What Lambda hands the handler, as far as this example uses it."""

    def __init__(self, budget: float) -> None:
        self._end = time.monotonic() + budget

    def get_remaining_time_in_millis(self) -> int:
        return int((self._end - time.monotonic()) * 1000)


def main() -> int:
    results = [
        handler({"user_id": f"lambda-user-{i}", "properties": {"invocation": i}}, _FakeContext(3.0))
        for i in range(3)
    ]
    delivered = sum(r["delivered"] for r in results)
    ok = all(r["ok"] for r in results)
    print(f"serverless: 3 invocations, each flushed before returning: delivered={delivered} ok={ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
