"""Where dual-write track() spends its time and its queued bytes, next to single-destination.

    python bench/profile_dual.py            # both tables (about 20 s)

Part 1 times the whole call (single, dual) and each step of the dual-write path in isolation,
every figure the median of interleaved repeats of 20,000 calls (``time.perf_counter_ns``), on a
client whose queues never drain (``flush_interval`` of an hour and no reachable sink), so the
only thing on the CPU is the calling thread. Part 2 counts the bytes a queued event holds with
``tracemalloc`` (what Python allocated and kept per event, per queue). Sink: a closed port.
"""

from __future__ import annotations

import gc
import socket
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cdp_batcher import CDPClient, CustomerIoConfig, _event

N = 20_000
REPEATS = 7
USERS = [f"user-{i:05d}" for i in range(1000)]
EVENT = "bench_evt"


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def make(dual: bool, n: int = 10 * N * REPEATS) -> CDPClient:
    url = _dead_url()
    extra: dict[str, Any] = {}
    if dual:
        extra = {
            "send_to_customer_io": True,
            "customer_io": CustomerIoConfig(site_id="s", api_key="k", url=url),
        }
    return CDPClient(
        cdp_api_key="k",
        cdp_endpoint=url,
        cdp_fallback_endpoints=[],
        flush_interval=3600.0,
        max_batch_size=10_000_000,  # no batch wake-up: the queue only grows
        max_queue_size=n + 10,
        max_queue_bytes=1 << 34,
        **extra,
    )


def per_call_ns(fn: Callable[[int], object]) -> float:
    clock = time.perf_counter_ns
    users = USERS
    t0 = clock()
    for i in range(N):
        fn(i)
    del users
    return (clock() - t0) / N


def time_steps() -> dict[str, float]:
    single, dual = make(False), make(True)
    st, dt = single.track, dual.track
    routes = dual._routes
    cio = routes[1].dest
    ocdp = routes[0].dest
    encode = _event.encode
    raw = _event.Raw(encode({"plan": "pro", "amount": 1}))
    ts = time.time()
    v = _event.ulid_value() if hasattr(_event, "ulid_value") else 0
    from collections import deque

    from cdp_batcher._queue import EventQueue

    q = EventQueue(1 << 30, 1 << 40, 1 << 30)
    body = b"x" * 80
    sink: deque[Any] = deque()
    steps: dict[str, Callable[[int], object]] = {
        "harness (loop + props dict)": lambda i: {"plan": "pro", "amount": i},
        "single track()": lambda i: st(USERS[i % 1000], EVENT, {"plan": "pro", "amount": i}),
        "dual track()": lambda i: dt(USERS[i % 1000], EVENT, {"plan": "pro", "amount": i}),
        "encode(properties) -> Raw": lambda i: _event.Raw(encode({"plan": "pro", "amount": i})),
        "time.time()": lambda i: time.time(),
        "OpenCDP encode_track (Raw props)": lambda i: ocdp.encode_track(USERS[i % 1000], EVENT, raw, ts),
        "new_ulid(ms) (random 80 bits, spelled)": lambda i: _event.new_ulid(1_700_000_000_000 + i),
        **(
            {"ulid_value() (monotonic int)": lambda i: _event.ulid_value()}
            if hasattr(_event, "ulid_value")
            else {}
        ),
        "Customer.io encode_track (incl. ULID)": lambda i: cio.encode_track(USERS[i % 1000], EVENT, raw, ts),
        "Customer.io entry Struct only (no ULID, no encode)": lambda i: _event.CioEvent(
            _event.CioIdentifiers(USERS[i % 1000]), "event", EVENT, "01HZX0000000000000000000AA", 1, raw
        ),
        "queue put (lock, deque append)": lambda i: q.put((1, body)),
        **(
            {
                "route thread: Customer.io entry from record": lambda i: cio.entry(
                    (
                        1,
                        b'{"identifier":"user-00001","eventName":"bench_evt","properties":{"plan":"pro","amount":1}}',
                        v,
                    )
                ),
                "route thread: format_ulid(value)": lambda i: _event.format_ulid(v),
            }
            if hasattr(cio, "entry")
            else {}
        ),
        "fan-out tuples (items list + 2 tuples)": lambda i: [(sink, body), (sink, body)],
    }
    results: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(REPEATS):  # interleaved: every step in every round
        for name, fn in steps.items():
            gc.collect()
            results[name].append(per_call_ns(fn))
    single.shutdown(0.0)
    dual.shutdown(0.0)
    return {k: statistics.median(v) for k, v in results.items()}


def bytes_per_event(dual: bool, n: int = 100_000) -> dict[str, float]:
    client = make(dual, n)
    client.track(USERS[0], EVENT, {"plan": "pro", "amount": 0})
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(n):
        client.track(USERS[i % 1000], EVENT, {"plan": "pro", "amount": i})
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    total = sum(s.size_diff for s in after.compare_to(before, "filename"))
    per_file = {
        Path(s.traceback[0].filename).name: s.size_diff / n
        for s in after.compare_to(before, "filename")
        if abs(s.size_diff) > n  # > 1 byte per event
    }
    out = {"total": total / n}
    out.update({f"  allocated in {k}": v for k, v in sorted(per_file.items(), key=lambda kv: -kv[1])})
    primary = {id(item[1]) for item in list(client._routes[0].queue._items)[:1000]}
    for route in client._routes:
        q = route.queue
        sample = list(q._items)[:1000]
        out[f"  {route.name}: queued body bytes (len)"] = q.nbytes / max(1, len(q))
        out[f"  {route.name}: sys.getsizeof(body)"] = statistics.mean(
            sys.getsizeof(item[1]) for item in sample
        )
        out[f"  {route.name}: tuple + deque slot"] = sys.getsizeof(sample[0]) + 8
        if route is not client._routes[0]:
            out[f"  {route.name}: % of bodies shared with opencdp"] = (
                100 * sum(id(item[1]) in primary for item in sample) / len(sample)
            )
    client.shutdown(0.0)
    return out


def main() -> None:
    steps = time_steps()
    single = steps["single track()"]
    print(f"ns per call, median of {REPEATS} interleaved runs of {N:,} calls")
    for name, ns in steps.items():
        print(f"  {name:<52}{ns:8.0f} ns  ({ns / single:4.2f} x single)")
    for dual in (False, True):
        print(
            f"bytes per queued event ({'dual' if dual else 'single'}-destination, tracemalloc, 100,000 events)"
        )
        for name, value in bytes_per_event(dual).items():
            print(f"  {name:<52}{value:8.1f}")


if __name__ == "__main__":
    main()
