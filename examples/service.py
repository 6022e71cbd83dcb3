"""A long-running service that shuts the client down from its SIGTERM handler.

    CDP_API_KEY=... python examples/service.py     # stop it with SIGTERM (kill PID) or Ctrl-C

The library installs no signal handler of its own: the service owns SIGTERM and calls
shutdown(timeout=...), which returns within the timeout even when every host is down.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Optional

from cdp_batcher import CDPClient

from _common import client_settings

stop = threading.Event()


def on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
    stop.set()


def main() -> int:
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)
    client = CDPClient(**client_settings(), flush_interval=0.2)
    tick = 0
    print("service: running", flush=True)
    while not stop.is_set():
        client.track("worker-1", "job_processed", {"job": tick, "queue": "emails"})
        tick += 1
        if tick == 25:
            print("service: 25 jobs processed", flush=True)
        stop.wait(0.01)
    report = client.shutdown(timeout=5.0)
    print(f"service: stopped after {tick} jobs, delivered={report.delivered} ok={bool(report)}", flush=True)
    return 0 if report else 1


if __name__ == "__main__":
    sys.exit(main())
