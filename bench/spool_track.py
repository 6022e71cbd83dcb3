"""track() with the spool on vs off, in one run: median and p99 µs per call over chunks of 1,000
calls, the route delivering to the package's local collector meanwhile; bytes on disk per event.

    .venv/bin/python bench/spool_track.py [spool parent directory]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from typing import Any, Optional

from cdp_batcher import CDPClient
from cdp_batcher.testing import Collector

N = 50_000
CHUNK = 1_000


def run(url: str, spool_dir: Optional[str]) -> tuple[float, float, float]:
    client = CDPClient(
        cdp_api_key="bench",
        cdp_endpoint=url,
        cdp_fallback_endpoints=[],
        max_queue_size=N + 1,
        spool_dir=spool_dir,
    )
    users = [f"user-{i}" for i in range(1000)]
    track = client.track
    chunks = []
    per_event = 0.0
    for c in range(N // CHUNK):
        t = time.perf_counter()
        for i in range(c * CHUNK, (c + 1) * CHUNK):
            track(users[i % 1000], "purchase_completed", {"plan": "pro", "amount": i})
        chunks.append((time.perf_counter() - t) / CHUNK * 1e6)
    if spool_dir is not None:
        stream: Any = client._spool.streams["opencdp"]  # type: ignore[union-attr]
        written = stream.appended
        on_disk = sum(s.size - 32 for s in stream._own)
        per_event = on_disk / max(1, written) if written else 0.0
    client.shutdown(timeout=1.0)
    chunks.sort()
    return statistics.median(chunks), chunks[int(len(chunks) * 0.99) - 1], per_event


def main() -> None:
    base = sys.argv[1] if len(sys.argv) > 1 else None
    with Collector() as collector:
        off = run(collector.url, None)
        with tempfile.TemporaryDirectory(dir=base) as d:
            on = run(collector.url, d)
    print(f"track() spool off: median {off[0]:.2f} µs, p99 chunk {off[1]:.2f} µs")
    print(f"track() spool on:  median {on[0]:.2f} µs, p99 chunk {on[1]:.2f} µs ({on[0] / off[0]:.2f}x)")
    if on[2]:
        print(f"bytes on disk per record (segments still open): {on[2]:.1f}")


if __name__ == "__main__":
    main()
