"""`make demo`: start the local collector, run every example against it, show what arrived.

No account and no internet: the collector ships in the package (cdp_batcher.testing) and
listens on 127.0.0.1.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from pathlib import Path

from cdp_batcher.testing import Collector

HERE = Path(__file__).resolve().parent
API_KEY = "demo-key"
CIO_SITE, CIO_KEY = "demo-site", "demo-cio-key"

# (file, arguments); "sigterm" runs the file as a service and stops it with SIGTERM.
EXAMPLES: list[tuple[str, object]] = [
    ("script.py", []),
    ("wsgi_app.py", ["--selftest"]),
    ("service.py", "sigterm"),
    ("dual_write.py", []),
    ("transactional.py", []),
    ("frameworks/flask_app.py", ["--selftest"]),
    ("frameworks/fastapi_app.py", ["--selftest"]),
    ("frameworks/django_app/manage.py", ["selftest"]),
    ("frameworks/gunicorn_app.py", ["--selftest"]),
    ("frameworks/celery_app.py", ["--selftest"]),
    ("frameworks/serverless.py", ["--selftest"]),
]


def run(example: str, args: object, env: dict[str, str]) -> int:
    path = HERE / example
    print(f"\n=== examples/{example}", flush=True)
    if args == "sigterm":
        proc = subprocess.Popen([sys.executable, str(path)], env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if "25 jobs processed" in line:
                print("--- sending SIGTERM", flush=True)
                proc.send_signal(signal.SIGTERM)
                break
        rest, _ = proc.communicate(timeout=30)
        print(rest, end="", flush=True)
        return proc.returncode
    assert isinstance(args, list)
    return subprocess.run([sys.executable, str(path), *args], env=env, timeout=120).returncode


def main() -> int:
    with Collector(api_key=API_KEY, cio_site_id=CIO_SITE, cio_api_key=CIO_KEY, printer=print) as collector:
        print(f"collector listening on {collector.url}", flush=True)
        env = dict(os.environ)
        env.update(
            CDP_API_KEY=API_KEY,
            CDP_ENDPOINT=collector.url,
            CDP_FALLBACK_ENDPOINTS="",
            CUSTOMERIO_SITE_ID=CIO_SITE,
            CUSTOMERIO_API_KEY=CIO_KEY,
            CUSTOMERIO_URL=collector.url,
            PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]),
        )
        failures = []
        for example, args in EXAMPLES:
            if not (HERE / example).exists():
                continue
            code = run(example, args, env)
            if code != 0:
                failures.append(f"{example} (exit {code})")
        print("\n=== what the collector received")
        for destination in ("opencdp", "customerio"):
            calls = collections.Counter(
                e.get("call") or e.get("action") or "?" for e in collector.events(destination=destination)
            )
            print(
                f"{destination}: {collector.count(destination=destination)} "
                + (f"{dict(calls)}" if calls else "")
            )
        if failures:
            print("demo FAILED: " + ", ".join(failures))
            return 1
        print("demo OK")
        return 0


if __name__ == "__main__":
    sys.exit(main())
