"""`make import-check`: the CLI import on a generated 1,000,000-row file, with its peak memory.

    python scripts/import_check.py                 # 1,000,000 rows: dry runs of .jsonl/.json/.csv, a real .jsonl import
    python scripts/import_check.py --rows 50000    # smaller
    python scripts/import_check.py --no-real       # dry runs only

Each import runs as its own process (``python -m cdp_batcher import ...``); its peak RSS comes
from the kernel (``os.wait4``). The real import goes to a no-op HTTP sink on 127.0.0.1 (a
subprocess, so its memory is not counted) that answers 200 to every request and counts them.
Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SINK = textwrap.dedent(
    """
    import asyncio, sys
    count = 0
    async def handle(reader, writer):
        global count
        try:
            while True:
                head = await reader.readuntil(b"\\r\\n\\r\\n")
                length = 0
                for line in head.split(b"\\r\\n")[1:]:
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                if head.startswith(b"GET /count"):
                    out = str(count).encode()
                else:
                    count += 1
                    out = b"{}"
                writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n%s" % (len(out), out))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=512)
        print(server.sockets[0].getsockname()[1], flush=True)
        async with server:
            await server.serve_forever()
    asyncio.run(main())
    """
)


def row(i: int) -> dict[str, object]:
    if i % 10 == 0:
        return {"type": "identify", "identifier": f"user-{i % 50_000}", "properties": {"plan": "pro", "n": i}}
    return {
        "identifier": f"user-{i % 50_000}",
        "event_name": "page_viewed",
        "properties": {"seq": i, "path": f"/docs/{i % 977}", "amount": 9.99, "ok": True},
    }


def generate(directory: Path, rows: int) -> dict[str, Path]:
    paths = {fmt: directory / f"rows.{fmt}" for fmt in ("jsonl", "json", "csv")}
    with (
        open(paths["jsonl"], "w") as jl,
        open(paths["json"], "w") as ja,
        open(paths["csv"], "w", newline="") as cf,
    ):
        writer = csv.writer(cf)
        writer.writerow(["type", "identifier", "event_name", "seq", "path", "amount", "ok"])
        ja.write("[\n")
        for i in range(rows):
            r = row(i)
            text = json.dumps(r, separators=(",", ":"))
            jl.write(text + "\n")
            ja.write(("," if i else "") + text + "\n")
            props: dict[str, object] = r["properties"]  # type: ignore[assignment]
            writer.writerow(
                [
                    r.get("type", "track"),
                    r["identifier"],
                    r.get("event_name", ""),
                    props.get("seq", ""),
                    props.get("path", ""),
                    props.get("amount", ""),
                    str(props.get("ok", "")).lower(),
                ]
            )
        ja.write("]\n")
    return paths


def run_import(
    path: Path, env: dict[str, str], extra: list[str], timeout: float
) -> tuple[int, float, int, str]:
    """(exit status, seconds, peak RSS in KiB, last lines of output)."""
    cmd = [sys.executable, "-m", "cdp_batcher", "import", str(path), "--progress", "plain", *extra]
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)  # polling a child process's exit, not a thread
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.monotonic() - start
        out.seek(0)
        tail = "".join(out.readlines()[-6:])
    return proc.returncode, elapsed, int(usage.ru_maxrss), tail


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-real", action="store_true", help="dry runs only")
    parser.add_argument("--concurrency", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per import")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cdp-import-check-") as tmp:
        t0 = time.monotonic()
        paths = generate(Path(tmp), args.rows)
        sizes = {fmt: p.stat().st_size for fmt, p in paths.items()}
        print(
            f"generated {args.rows:,} rows in {time.monotonic() - t0:.1f}s: "
            + ", ".join(f".{f} {s / 1e6:.0f} MB" for f, s in sizes.items()),
            flush=True,
        )
        env = dict(os.environ, CDP_API_KEY="import-check-key", CDP_FALLBACK_ENDPOINTS="")
        env.pop("CUSTOMERIO_SITE_ID", None)
        env.pop("CUSTOMERIO_API_KEY", None)
        results = []
        failed = False
        for fmt, path in paths.items():
            code, secs, rss, tail = run_import(path, env, ["--dry-run"], args.timeout)
            results.append((f"dry run .{fmt}", code, secs, rss, sizes[fmt]))
            failed |= code != 0
            print(tail, end="", flush=True)
        if not args.no_real:
            sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
            try:
                assert sink.stdout is not None
                port = int(sink.stdout.readline())
                env["CDP_ENDPOINT"] = f"http://127.0.0.1:{port}"
                code, secs, rss, tail = run_import(
                    paths["jsonl"], env, ["--concurrency", str(args.concurrency)], args.timeout
                )
                print(tail, end="", flush=True)
                import urllib.request

                with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=10) as answer:
                    received = int(answer.read())
                results.append(("import .jsonl", code, secs, rss, sizes["jsonl"]))
                print(f"sink received {received:,} requests (expected {args.rows:,})")
                failed |= code != 0 or received != args.rows
            finally:
                sink.terminate()
                sink.wait(10)
        print(f"\n{'run':<16} {'exit':>4} {'seconds':>8} {'rows/s':>9} {'peak RSS':>10} {'file':>9}")
        for name, code, secs, rss, size in results:
            print(
                f"{name:<16} {code:>4} {secs:>8.1f} {args.rows / secs:>9,.0f} "
                f"{rss / 1024:>7.1f} MB {size / 1e6:>6.0f} MB"
            )
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
