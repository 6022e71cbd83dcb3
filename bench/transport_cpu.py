"""CPU per request of the HTTP transport's fast path (thread CPU time, not wall time).

    .venv/bin/python bench/transport_cpu.py [requests] [rounds] [group]

Starts tests/fastsink.py in its own process, POSTs one OpenCDP-sized event per request over
keep-alive through ``HttpTransport(None)`` and prints the median over ``rounds`` of
``time.thread_time()`` per request, with the load average (the machine may be shared). With
``group`` above 1 the requests go ``group`` at a time (``request_group``, as the OpenCDP
route's senders send a run), on as many kept connections.
Runs the package it finds first on ``sys.path``; to compare another checkout, run it with
``python -S`` and PYTHONPATH naming that checkout and the venv's site-packages (the venv's
editable install would otherwise come first).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from cdp_batcher.destinations._http import HttpTransport

BODY = b'{"identifier":"user123","eventName":"purchase_completed","properties":{"amount":99.99,"seq":1}}'
HEADERS = {"Authorization": "bench-key", "Content-Type": "application/json"}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    sink = Path(__file__).resolve().parent.parent / "tests" / "fastsink.py"
    proc = subprocess.Popen([sys.executable, str(sink)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        url = f"http://127.0.0.1:{port}/v1/persons/track"
        transport = HttpTransport(None, pool_size=size)
        group = [(url, BODY)] * size

        def send(count: int) -> None:
            if size == 1:
                for _ in range(count):
                    transport.request("POST", url, body=BODY, headers=HEADERS, timeout=5)
                return
            for _ in range(count // size):
                for answer in transport.request_group("POST", group, headers=HEADERS, timeout=5):
                    assert not isinstance(answer, Exception), answer

        send(200 * size)  # warm up: the fast path chosen, a group's connections kept alive
        per: list[float] = []
        for _ in range(rounds):
            cpu = time.thread_time()
            send(n)
            per.append((time.thread_time() - cpu) / (n // size * size) * 1e6)
        transport.close()
    finally:
        proc.kill()
        proc.wait(10)
    load = os.getloadavg()
    print(
        f"fast path{f', groups of {size}' if size > 1 else ''}: {statistics.median(per):.1f} us CPU/request (median of {rounds} x {n}; "
        f"min {min(per):.1f}, max {max(per):.1f}); load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


if __name__ == "__main__":
    main()
