"""Stress: 32 producer threads against a collector that flips between healthy and failing.

The client runs in its own interpreter (clean memory figures, a real exit); the collector runs
here and is flipped every half second between healthy, 503s, refused connections, resets and
429s. Checked: memory stays bounded by the queue limits, every call is accounted for, nothing
arrives that was not sent or twice beyond retries, and shutdown and exit keep their deadline.

``make test`` runs it for 3 s; ``make stress`` (CDP_STRESS_SECONDS=10) for the full 10 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from cdp_batcher.testing import Collector

SECONDS = float(os.environ.get("CDP_STRESS_SECONDS", "3"))
SHUTDOWN_TIMEOUT = 2.0
QUEUE_EVENTS, QUEUE_BYTES = 2_000, 256 * 1024
#: Allowed growth of traced memory after warm-up: the queue's bound (bodies plus per-item
#: overhead, well under 1 MiB) plus senders' buffers and counters, with room to spare. An
#: unbounded queue would grow by tens of MiB within a second at these rates.
MEMORY_BUDGET = 8 * 1024 * 1024

pytestmark = pytest.mark.timeout(SECONDS + 90)

PRODUCER = """
import json, sys, threading, time, tracemalloc
from cdp_batcher import CDPClient

url, seconds, shutdown_timeout = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
queue_events, queue_bytes = int(sys.argv[4]), int(sys.argv[5])
tracemalloc.start()
client = CDPClient(cdp_api_key="test-key", cdp_endpoint=url, cdp_fallback_endpoints=[],
                   max_queue_size=queue_events, max_queue_bytes=queue_bytes, flush_interval=0.05,
                   max_retries=3, retry_max_time=1.0, timeout_ms=1000)
stop = threading.Event()
counts = [0] * 32

def produce(n):
    i = 0
    while not stop.is_set():
        client.track(f"p{n}", "stress", {"i": i, "pad": "x" * 100})
        i += 1
    counts[n] = i

threads = [threading.Thread(target=produce, args=(n,)) for n in range(32)]
for t in threads:
    t.start()
warm_up = min(1.0, seconds / 3)
stop.wait(warm_up)                       # this thread just waits out the run
baseline = tracemalloc.get_traced_memory()[0]
tracemalloc.reset_peak()
stop.wait(seconds - warm_up)
stop.set()
for t in threads:
    t.join(30)
peak = tracemalloc.get_traced_memory()[1]
start = time.monotonic()
report = client.shutdown(shutdown_timeout)
took = time.monotonic() - start
s = client.stats().destinations["opencdp"]
print(json.dumps({"calls": sum(counts), "growth": peak - baseline, "shutdown": took,
                  "stats": s.as_dict(), "pending": report.pending}), flush=True)
"""


@pytest.fixture
def flipping_collector() -> Iterator[Collector]:
    """A collector that changes its mood every half second until the test ends."""
    collector = Collector(api_key="test-key").start()
    stop = threading.Event()

    def flip() -> None:
        moods = ["healthy", "503", "healthy", "refused", "healthy", "reset", "healthy", "429"]
        n = 0
        while not stop.is_set():
            mood = moods[n % len(moods)]
            n += 1
            if mood == "503":
                collector.fail_for(0.5, 503)
            elif mood == "reset":
                collector.drop_next(30)
            elif mood == "429":
                collector.rate_limit_next(30, "0")
            elif mood == "refused":
                collector.go_down()
                stop.wait(0.5)
                collector.come_back()
                continue
            stop.wait(0.5)
        collector.reset_faults()

    flipper = threading.Thread(target=flip, name="cdp-collector-flipper")
    flipper.start()
    try:
        yield collector
    finally:
        stop.set()
        flipper.join(10)
        collector.stop()


@pytest.mark.slow  # make test runs it; the matrix cells skip it (CI time)
def test_32_producers_against_a_flipping_collector(flipping_collector: Collector) -> None:
    """32 threads track as fast as they can for the whole run while the collector flips."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PRODUCER,
            flipping_collector.url,
            str(SECONDS),
            str(SHUTDOWN_TIMEOUT),
            str(QUEUE_EVENTS),
            str(QUEUE_BYTES),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the result, printed right after shutdown()
        printed = time.monotonic()
        _, err = proc.communicate(timeout=30)
        exit_after = time.monotonic() - printed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and line, err[-3000:]
    result = json.loads(line)
    s = result["stats"]
    failed, dropped = sum(s["failed"].values()), sum(s["dropped"].values())
    print(f"\nstress {SECONDS:g}s: {json.dumps(result)} exit {exit_after:.2f}s")

    # Memory: bounded by the queue limits, not by how much was produced.
    assert result["growth"] < MEMORY_BUDGET, result["growth"]
    # Accounting: every call counted once, in exactly one bucket; nothing left queued.
    assert s["enqueued"] == result["calls"]
    assert s["enqueued"] == s["delivered"] + failed + dropped + s["queued"] + s["in_flight"]
    assert s["queued"] == 0 and s["delivered"] > 0
    assert set(s["dropped"]) <= {"queue_full", "shutdown_timeout"}, s["dropped"]
    # The collector saw every delivered event, nothing that was never sent, duplicates only from retries.
    arrivals = Counter(
        (e["body"]["identifier"], e["body"]["properties"]["i"]) for e in flipping_collector.events()
    )
    unique, total = len(arrivals), sum(arrivals.values())
    assert s["delivered"] <= unique <= s["delivered"] + failed + s["in_flight"]
    assert total - unique <= s["retried"]
    # Deadlines: shutdown within its timeout, the process gone right after.
    assert result["shutdown"] < SHUTDOWN_TIMEOUT + 0.5
    assert exit_after < 2.0
