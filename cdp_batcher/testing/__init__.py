"""A local collector that speaks the OpenCDP gateway and Customer.io's batch endpoint.

:class:`Collector` is a real HTTP/1.1 server bound to loopback only. It checks credentials the
way the real services do, records what it receives, and can be told to misbehave (errors, rate
limits, latency, dropped connections, going down and coming back) so that code using
``cdp_batcher`` can be tested without the network::

    from cdp_batcher.testing import Collector

    with Collector(api_key="test-key", cio_site_id="site", cio_api_key="cio-key") as c:
        ...  # point the client at c.url (both the OpenCDP endpoint and the Customer.io base URL)
        assert c.wait_for(1, destination="opencdp")
        print(c.events(destination="opencdp"))

Run it in the foreground with ``python -m cdp_batcher.testing --port 0``; it prints
``collector listening on http://127.0.0.1:PORT`` and then one line per arrival.

Only the standard library is used. The package's rooms: ``_records`` (recorded requests and
events, :class:`RecordingLogger`), ``_faults`` (fault injection), ``_fakes`` (the fake OpenCDP
and Customer.io APIs), ``_server`` (HTTP), ``_collector`` (:class:`Collector`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType
from typing import Any, Optional

from ._collector import Collector
from ._fakes import CIO_MAX_BODY_BYTES, CIO_MAX_ENTRY_BYTES
from ._records import CUSTOMERIO, OPENCDP, RecordedRequest, RecordingLogger

__all__ = [
    "CIO_MAX_BODY_BYTES",
    "CIO_MAX_ENTRY_BYTES",
    "Collector",
    "RecordedRequest",
    "RecordingLogger",
    "main",
    "serve",
]


# --------------------------------------------------------------------------- command line


def main(argv: Optional[list[str]] = None) -> int:
    """Run a collector in the foreground, printing each arrival, until SIGINT or SIGTERM.

    >>> main(["--port", "8765"])  # doctest: +SKIP
    collector listening on http://127.0.0.1:8765
    """
    parser = argparse.ArgumentParser(
        prog="python -m cdp_batcher.testing",
        description="Local OpenCDP + Customer.io collector for tests and demos (loopback only).",
    )
    parser.add_argument("--port", type=int, default=0, help="port to bind (default 0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--api-key", default=None, help="OpenCDP key to require (default: accept any)")
    parser.add_argument("--cio-site-id", default=None, help="Customer.io site id to require")
    parser.add_argument("--cio-api-key", default=None, help="Customer.io API key to require")
    args = parser.parse_args(argv)
    return serve(
        port=args.port,
        host=args.host,
        api_key=args.api_key,
        cio_site_id=args.cio_site_id,
        cio_api_key=args.cio_api_key,
    )


def serve(
    *,
    port: int = 0,
    host: str = "127.0.0.1",
    api_key: Optional[str] = None,
    cio_site_id: Optional[str] = None,
    cio_api_key: Optional[str] = None,
) -> int:
    """Run a collector in the foreground, printing each arrival, until SIGINT or SIGTERM; the exit status."""

    def out(line: str) -> None:
        print(line, flush=True)

    try:
        collector = Collector(
            api_key=api_key,
            cio_site_id=cio_site_id,
            cio_api_key=cio_api_key,
            port=port,
            host=host,
            printer=out,
        )
        collector.start()
    except (ValueError, OSError) as exc:
        print(f"collector: cannot start: {exc}", file=sys.stderr, flush=True)
        return 2

    stop = threading.Event()

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        out(f"collector listening on {collector.url}")
        while not stop.wait(0.5):  # a short wait keeps the main thread responsive to signals
            pass
    except KeyboardInterrupt:
        pass
    finally:
        collector.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    opencdp, customerio = collector.count(OPENCDP), collector.count(CUSTOMERIO)
    out(f"collector stopped ({opencdp} opencdp events, {customerio} customerio entries)")
    return 0
