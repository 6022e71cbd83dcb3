"""What the fork check costs on the hot path: track() and EventQueue.put, and the two ways to check.

    .venv/bin/python bench/hot_path.py [--calls 200000]

track() runs with nothing sending (flush_interval and batch size far above the calls made), so
the figure is the caller's cost alone: validate, encode, put. Prints the median of chunks of
1,000 calls (ns per call), then the cost of reading the fork guard (one byte of a
MADV_WIPEONFORK page) next to ``os.getpid()`` (a system call on glibc >= 2.25).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import timeit

from cdp_batcher import CDPClient, _concurrency


def per_call(fn: object, calls: int, chunk: int = 1000) -> float:
    """Median ns per call over chunks of ``chunk`` calls."""
    samples = []
    call = fn  # type: ignore[assignment]
    for start in range(0, calls, chunk):
        t0 = time.perf_counter_ns()
        for i in range(start, start + chunk):
            call(i)  # type: ignore[operator]
        samples.append((time.perf_counter_ns() - t0) / chunk)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    client = CDPClient(
        cdp_api_key="bench",
        cdp_endpoint="http://127.0.0.1:9",
        cdp_fallback_endpoints=[],
        flush_interval=3600.0,
        max_batch_size=10_000_000,
        max_queue_size=10_000_000,
        max_queue_bytes=2**31,
        shutdown_timeout=0.1,
    )
    props = {"plan": "pro", "amount": 42}
    track_ns = per_call(lambda i: client.track("user-1", "bench_event", props), args.calls)
    route = client._routes[0]
    put = route.put
    item = (1, b'{"identifier":"user-1","eventName":"bench_event","properties":{}}')
    put_ns = per_call(lambda i: put(item), args.calls)
    client._routes[0].queue.drain_locked(10**9)  # nothing to send at shutdown
    client.shutdown(timeout=0.1)

    guard = _concurrency.fork_guard()
    getpid = os.getpid
    pid = getpid()
    n = 2_000_000
    base = min(timeit.repeat("pass", number=n, repeat=7)) / n * 1e9
    guard_ns = min(timeit.repeat("not guard[0]", globals={"guard": guard}, number=n, repeat=7)) / n * 1e9
    pid_ns = min(timeit.repeat("getpid() != pid", globals={"getpid": getpid, "pid": pid}, number=n, repeat=7))
    pid_ns = pid_ns / n * 1e9
    works = _concurrency.fork_guard_works(guard)
    print(f"track() median            {track_ns:8.0f} ns/call")
    print(f"EventQueue.put median     {put_ns:8.0f} ns/call")
    print(f"fork guard read           {guard_ns - base:8.1f} ns (MADV_WIPEONFORK page: {works})")
    print(f"os.getpid() compare       {pid_ns - base:8.1f} ns")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
