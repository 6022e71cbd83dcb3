"""The spool's write path alone: µs per append (one os.write of a framed record) against the
in-memory queue's put, and bytes on disk per event against the encoded event.

    .venv/bin/python bench/spool_append.py [directory]

The directory (default: a temporary one) should be on the file system the spool will use.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from typing import Any

from cdp_batcher._event import OpenCdpTrack, encode
from cdp_batcher._queue import EventQueue
from cdp_batcher._spool import Spool

N = 200_000
ROUNDS = 5


def per_call(fn, items) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - t) / len(items) * 1e6


def main() -> None:
    base = sys.argv[1] if len(sys.argv) > 1 else None
    bodies = [
        encode(OpenCdpTrack(f"user-{i % 1000}", "purchase_completed", {"plan": "pro", "amount": i}))
        for i in range(N)
    ]
    items = [(1, b) for b in bodies]
    mem, disk = [], []
    for _ in range(ROUNDS):
        q = EventQueue(N + 1, 1 << 40, 100)
        mem.append(per_call(q.put, items))
        with tempfile.TemporaryDirectory(dir=base) as d:
            spool = Spool(
                d,
                ["opencdp"],
                max_bytes=1 << 40,
                max_memory_records=N + 1,
                max_memory_bytes=1 << 40,
                background=False,
            )
            stream = spool.streams["opencdp"]
            lock = stream.lock
            append = stream.append_locked

            def put(item: tuple[int, bytes], lock: Any = lock, append: Any = append) -> None:
                with lock:
                    append(item[0], item[1])

            disk.append(per_call(put, items))
            written = sum(s.size for s in stream._own) - 32 * len(stream._own)
            spool.close()
    encoded = sum(len(b) for b in bodies)
    print(f"in-memory put:  {statistics.median(mem):.3f} µs median of {ROUNDS} x {N:,}")
    print(f"spool append:   {statistics.median(disk):.3f} µs median (lock + frame + os.write + read-ahead)")
    print(f"extra per call: {statistics.median(disk) - statistics.median(mem):.3f} µs")
    print(
        f"bytes on disk per event: {written / N:.1f} for {encoded / N:.1f} encoded ({written / encoded:.3f}x)"
    )
    print(f"file system: {os.statvfs(base or tempfile.gettempdir()).f_bsize} byte blocks")


if __name__ == "__main__":
    main()
