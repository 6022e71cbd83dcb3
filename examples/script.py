"""A short-lived script: track a few events, then flush() and check the delivery report.

CDP_API_KEY=... python examples/script.py
"""

from __future__ import annotations

import sys

from cdp_batcher import CDPClient

from _common import client_settings


def main() -> int:
    with CDPClient(**client_settings()) as client:
        client.identify("user-42", {"plan": "pro", "name": "Ada"})
        for i in range(20):
            client.track("user-42", "page_viewed", {"page": f"/docs/{i}", "n": i})
        client.track("user-42", "purchase_completed", {"amount": 99.99, "currency": "EUR"})
        report = client.flush(timeout=10.0)
        print(f"script: delivered={report.delivered} pending={report.pending} ok={bool(report)}")
        return 0 if report else 1


if __name__ == "__main__":
    sys.exit(main())
