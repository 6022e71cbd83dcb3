"""CPU per event of the per-event (OpenCDP) route: the whole client process, every thread.

    .venv/bin/python bench/route_cpu.py [events] [senders]

Starts tests/fastsink.py in its own process, tracks ``events`` events on a client with
``max_concurrent_requests=senders`` (default 1: the dispatcher thread sends, the steadiest
figure), flushes, and prints the process's CPU time per event (``time.process_time``: the
calling thread's ``track()`` included). Runs the package it finds first on ``sys.path`` (set
PYTHONPATH to compare another checkout). Instructions per event, steadier than time on a shared
machine, from two runs under callgrind (the sink is not traced):

    valgrind --tool=callgrind .venv/bin/python bench/route_cpu.py 200     # I(200)
    valgrind --tool=callgrind .venv/bin/python bench/route_cpu.py 1200    # I(1200)
    # instructions per event = (I(1200) - I(200)) / 1000
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from cdp_batcher import CDPClient


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    senders = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    sink = Path(__file__).resolve().parent.parent / "tests" / "fastsink.py"
    proc = subprocess.Popen([sys.executable, str(sink)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        client = CDPClient(
            cdp_api_key="bench-key",
            cdp_endpoint=f"http://127.0.0.1:{port}",
            cdp_fallback_endpoints=[],
            max_concurrent_requests=senders,
            max_queue_size=max(10_000, n),
        )
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(n):
            client.track(f"user-{i % 100}", "purchase_completed", {"amount": 99.99, "seq": i})
        report = client.flush(timeout=600)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        client.shutdown(timeout=10)
    finally:
        proc.kill()
        proc.wait(10)
    load = os.getloadavg()
    print(
        f"per-event route, {senders} sender(s): {cpu / n * 1e6:.1f} us CPU/event, {n / wall:,.0f} "
        f"events/s ({report}); load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


if __name__ == "__main__":
    main()
