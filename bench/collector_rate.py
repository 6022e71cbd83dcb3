"""The OpenCDP route against the package's own local collector: track() cost and events/s.

    .venv/bin/python bench/collector_rate.py [--events 20000] [--concurrency 10]

The collector (``python -m cdp_batcher.testing``) runs in its own process. Prints the median
and p99 cost of a track() call (chunks of 1,000 calls, while the dispatcher delivers) and the
events/s from the first track() until flush() reports every event delivered. The collector
parses and records every request, so it is usually the slower side; ``make bench`` measures
against a faster sink.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time

from cdp_batcher import CDPClient

KEY = "bench-key"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdp_batcher.testing", "--port", "0", "--api-key", KEY],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        if "listening on" not in first:
            raise SystemExit(f"collector did not start: {first!r}")
        stdout = proc.stdout
        threading.Thread(target=lambda: [None for _ in stdout], daemon=True).start()  # drain its lines
        url = first.rsplit(" ", 1)[1].strip()
        client = CDPClient(
            cdp_api_key=KEY,
            cdp_endpoint=url,
            cdp_fallback_endpoints=[],
            max_queue_size=args.events + 1,
            max_concurrent_requests=args.concurrency,
        )
        chunks: list[float] = []
        start = time.perf_counter()
        for base in range(0, args.events, 1000):
            t0 = time.perf_counter_ns()
            for i in range(base, min(base + 1000, args.events)):
                client.track(f"user-{i % 1000}", "bench_event", {"plan": "pro", "n": i})
            chunks.append((time.perf_counter_ns() - t0) / 1000)
        report = client.flush(timeout=600)
        elapsed = time.perf_counter() - start
        delivered = client.stats().destinations["opencdp"].delivered
        client.shutdown(timeout=5)
        chunks.sort()
        p99 = chunks[min(len(chunks) - 1, int(len(chunks) * 0.99))]
        print(
            f"track(): median {statistics.median(chunks) / 1000:.2f} µs/call, p99 chunk {p99 / 1000:.2f} µs/call"
        )
        print(
            f"OpenCDP route to the local collector: {delivered:,} events in {elapsed:.2f} s"
            f" = {delivered / elapsed:,.0f} events/s (ok={bool(report)})"
        )
        return 0 if report else 1
    finally:
        proc.kill()
        proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
