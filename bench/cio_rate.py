"""Customer.io route throughput: events/s from put() to delivered, against the local collector.

    .venv/bin/python bench/cio_rate.py [--events 50000] [--batch 100] [--props-bytes 200] [--url URL]

The collector (``python -m cdp_batcher.testing``) runs in its own process so that it does not
share this process's GIL. The route is the library's own (queue, dispatcher thread, unit cutting,
``CustomerIoDestination.send``) without the OpenCDP route beside it, so the figure is the
Customer.io route alone: encode at call time + queue + ``/api/v2/batch`` requests + the
collector's answers (it parses and records every entry, so it is the slower side).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import threading
import time

from msgspec import Raw

from cdp_batcher import CustomerIoConfig
from cdp_batcher._event import TRACK
from cdp_batcher._report import LogLimiter
from cdp_batcher._retry import RetryPolicy
from cdp_batcher._route import Route
from cdp_batcher._validate import encode_properties
from cdp_batcher.destinations.customerio import CustomerIoDestination

SITE, KEY = "bench-site", "bench-key"


def start_collector() -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable,
        "-m",
        "cdp_batcher.testing",
        "--port",
        "0",
        "--cio-site-id",
        SITE,
        "--cio-api-key",
        KEY,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    if "listening on" not in first:
        proc.kill()
        raise SystemExit(f"collector did not start: {first!r}")
    stdout = proc.stdout
    threading.Thread(target=lambda: [None for _ in stdout], daemon=True).start()  # drain its lines
    return proc, first.rsplit(" ", 1)[1].strip()


def run(url: str, events: int, batch: int, props_bytes: int) -> float:
    dest = CustomerIoDestination(
        CustomerIoConfig(site_id=SITE, api_key=KEY, url=url),
        timeout=10.0,
        max_batch_size=batch,
        policy=RetryPolicy(),
    )
    route = Route(
        dest,
        max_queue_size=events + 1,
        max_queue_bytes=1 << 31,
        max_batch_size=batch,
        flush_interval=0.05,
        on_error=None,
        limiter=LogLimiter(logging.getLogger("bench")),
    )
    props = {"plan": "pro", "pad": "x" * max(0, props_bytes - 30), "n": 0}
    start = time.perf_counter()
    for i in range(events):
        props["n"] = i
        raw = Raw(encode_properties(props))  # as the client does once per call in dual-write mode
        route.put((TRACK, dest.encode_track(f"user-{i % 1000}", "bench_evt", raw, time.time())))
    ticket = route.begin_flush()
    if not route.wait(ticket, time.monotonic() + 120):
        raise SystemExit("timed out")
    elapsed = time.perf_counter() - start
    stats = route.snapshot()
    deadline = time.monotonic() + 5
    route.begin_shutdown(deadline)
    route.finish_shutdown(deadline)
    if stats.delivered != events:
        raise SystemExit(f"delivered {stats.delivered} of {events}: {stats}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=100, help="max_batch_size (entries per request)")
    parser.add_argument(
        "--props-bytes", type=int, default=200, help="approximate size of each event's properties"
    )
    parser.add_argument(
        "--url", help="send to this running server (e.g. bench/sink.py) instead of a collector"
    )
    args = parser.parse_args()
    proc, url = (None, args.url) if args.url else start_collector()
    target = args.url or "local collector"
    try:
        run(url, min(2_000, args.events), args.batch, args.props_bytes)  # warm-up
        elapsed = run(url, args.events, args.batch, args.props_bytes)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    print(
        f"customerio route: {args.events} events in {elapsed:.2f}s = {args.events / elapsed:,.0f} events/s "
        f"(max_batch_size={args.batch}, ~{args.props_bytes} B properties, {target})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
