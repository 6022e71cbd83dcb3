"""Two ``bench.py --json`` results side by side: the library rows, old, new and new/old.

    python bench/compare.py old.json new.json

Meant for a paired run: the old commit's bench and the new one, on the same machine, back to
back (``git worktree add /tmp/old <commit>``; run each tree's ``bench/bench.py --json``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

#: (label, result key, field, scale)
ROWS = [
    ("track() µs/call, median", "caller/cdp", "median_ns", 1e-3),
    ("track() µs/call, p99 chunk", "caller/cdp", "p99_ns", 1e-3),
    ("track() send=False µs, median", "caller_nosend/cdp", "median_ns", 1e-3),
    ("segment track() µs, median", "caller/segment", "median_ns", 1e-3),
    ("posthog track() µs, median", "caller/posthog", "median_ns", 1e-3),
    ("per-event route events/s", "throughput/cdp", "events_s", 1.0),
    ("  raw events/s", "throughput/raw", "events_s", 1.0),
    ("per-event CPU µs/event", "throughput/cdp", "cpu_us", 1.0),
    ("batch route events/s", "batch/cdp_cio", "events_s", 1.0),
    ("batch route CPU µs/event", "batch/cdp_cio", "cpu_us", 1.0),
    ("bytes per queued event (RSS)", "memory/cdp", "bytes_per_event", 1.0),
    ("latency-bound events/s", "latency/cdp", "events_s", 1.0),
    ("  % of in-flight/RTT bound", "latency/cdp", "share", 100.0),
    ("dual-write track() µs, median", "caller/cdp_dual", "median_ns", 1e-3),
    ("dual-write track() µs, p99 chunk", "caller/cdp_dual", "p99_ns", 1e-3),
    ("dual-write bytes per queued event", "memory/cdp_dual", "bytes_per_event", 1.0),
]


def value(results: dict[str, Any], key: str, field: str, scale: float) -> Optional[float]:
    got = (results.get(key) or {}).get(field)
    return None if got is None else float(got) * scale


def fmt(x: Optional[float]) -> str:
    if x is None:
        return "—"
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def main() -> None:
    old, new = (json.loads(Path(path).read_text()) for path in sys.argv[1:3])
    head = f"{'figure':<36}{'old':>10}{'new':>10}{'new/old':>9}"
    print(f"old: load {old.get('load')}; new: load {new.get('load')}")
    print(head)
    print("-" * len(head))
    for label, key, field, scale in ROWS:
        a, b = value(old, key, field, scale), value(new, key, field, scale)
        ratio = f"{b / a:.2f}" if a and b else "—"
        print(f"{label:<36}{fmt(a):>10}{fmt(b):>10}{ratio:>9}")


if __name__ == "__main__":
    main()
