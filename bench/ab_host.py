"""Paired A/B runs of the host app: variants of one library, or libraries, in alternating rounds.

    .bench/venv/bin/python bench/ab_host.py [--server sync] [--calls 10] [--delay 0]
        [--seconds 3] [--rounds 6] NAME:TRACKER[:ENV=VALUE,ENV=VALUE] ...

Each variant is a name, a ``BENCH_TRACKER`` (``none``, ``cdp``, ``cdp_dual``, ``posthog``,
``segment``) and environment variables for the app's workers (for instance
``PYTHONPATH=/path/to/sitecustomize_dir`` or a switch read by a temporary patch). Every round
starts each variant in a fresh gunicorn (``bench.HostApp``, the host-app rows' protocol: 50
warm-up requests, the sink idle again, one load of ``--seconds``), and the order of the
variants turns by one each round, so that a slow phase of the machine falls on different
variants; each load is ``HostApp.measure_one`` with a one-load plan. Prints each load, then per
variant the medians over the rounds (``bench._median_run``: p50, p99, the app's CPU per
request, the sink's CPU per request) and every round's p99.

``--threads`` also splits the app's CPU per request by thread name (the workers' main threads,
each route's dispatcher and senders: ``bench.HostApp.threads_dir``) and prints each variant's
medians, to say which thread a variant's extra CPU runs on.

Within one invocation the variants are comparable; between invocations the machine's phase
moves the no-tracking p99 by a third or more. ``make bench-host`` (3 rounds) cannot tell a
change of a fifth in one row; this can, with 6-8 rounds (README, Performance: pacing).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench


def _variant(spec: str) -> tuple[str, str, dict[str, str]]:
    name, tracker, envs = [*spec.split(":", 2), ""][:3]
    if not name or tracker not in ("none", *bench.HOST_TRACKERS):
        raise SystemExit(
            f"a variant is NAME:TRACKER[:ENV=V,...] with a tracker of none, {bench.HOST_TRACKERS}"
        )
    env = dict(kv.split("=", 1) for kv in envs.split(",") if kv)
    return name, tracker, env


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", default="sync", choices=sorted(bench.HOST_SERVERS))
    parser.add_argument("--calls", type=int, default=10, help="track() calls per request (default 10)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds the sink waits per request")
    parser.add_argument("--seconds", type=int, default=3, help="each load's length (default 3)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds (default 6)")
    parser.add_argument("--threads", action="store_true", help="split the app's CPU by thread name")
    parser.add_argument("variants", nargs="+", type=_variant)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in args.variants}
    with bench.Sink(1) as sink, tempfile.TemporaryDirectory(prefix="ab-host-threads-") as names:
        runner = bench.Runner(sink, False, False)
        base_env = dict(runner.env, **({"BENCH_THREADS": names} if args.threads else {}))
        host = bench.HostApp(sink, runner, args.seconds, 1, lambda message: None)
        host.threads_dir = names if args.threads else None
        connections = bench.HOST_SERVERS[args.server][1]
        try:
            for r in range(args.rounds):
                turn = r % len(args.variants)
                for name, tracker, env in args.variants[turn:] + args.variants[:turn]:
                    runner.env = dict(base_env, **env)
                    plan = [(args.delay, args.calls if tracker != "none" else 0)]
                    (got,) = host.measure_one(args.server, tracker, connections, plan).values()
                    if "error" not in got:
                        runs[name].append(got)
                    keys = ("requests", "p50_us", "p99_us", "cpu_us", "sink_us", "error")
                    shown = {
                        k: round(got[k]) if isinstance(got[k], float) else got[k] for k in keys if k in got
                    }
                    print(r, name, shown, flush=True)
        finally:
            host.close()
    print(
        f"medians over {args.rounds} rounds ({args.server}, {args.calls} calls, sink delay {args.delay} s):"
    )
    for name, loads in runs.items():
        if loads:
            m = bench._median_run(loads)
            print(
                f"  {name:<12} p50 {m['p50_us']:>7.0f}  p99 {m['p99_us']:>7.0f}  cpu/req {m['cpu_us']:>6.0f}"
                f"  sink/req {m['sink_us']:>5.0f}  p99 per round {sorted(m['p99_samples'])}"
            )
    if args.threads:
        print("app CPU µs per request by thread, medians over the rounds:")
        for name, loads in runs.items():
            split: list[dict[str, float]] = [r["threads_us"] for r in loads if "threads_us" in r]
            threads = sorted({t for one in split for t in one})
            medians = {t: statistics.median(one.get(t, 0.0) for one in split) for t in threads}
            by_cpu = sorted(medians.items(), key=lambda kv: -kv[1])
            print(f"  {name:<12} " + "  ".join(f"{t} {v:.0f}" for t, v in by_cpu))


if __name__ == "__main__":
    main()
