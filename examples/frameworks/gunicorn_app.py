"""gunicorn with ``--preload`` and several workers: one client, created before the fork.

    pip install gunicorn
    cd examples/frameworks
    CDP_API_KEY=... gunicorn --preload -w 4 -c gunicorn_conf.py gunicorn_app:app
    CDP_API_KEY=... python examples/frameworks/gunicorn_app.py --selftest   # real gunicorn, 3 workers, SIGTERM

With ``--preload`` this module is imported once, in the arbiter, and the client is created
there. That is safe: at ``fork()`` every worker gets an empty queue, a new lock, its own dispatcher
thread and HTTP connections (``os.register_at_fork``), and the arbiter never sends anything.
``worker_exit`` in gunicorn_conf.py shuts each worker's client down, so what a worker queued is
delivered when it stops (SIGTERM to the arbiter, a reload, ``max_requests``). Keep the shutdown
timeout below gunicorn's ``graceful_timeout`` (30 s by default).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable

from cdp_batcher import CDPClient

client = CDPClient.from_env()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    user = environ.get("HTTP_X_USER_ID", "anonymous")
    client.track(user, "page_viewed", {"path": environ.get("PATH_INFO", "/"), "worker_pid": os.getpid()})
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"pid={os.getpid()}\n".encode()]


# ------------------------------------------------------------------------- the self-test (demo)
def selftest(workers: int = 3, timeout: float = 30.0) -> int:
    """Start a real gunicorn, send requests until every worker answered, stop it with SIGTERM."""
    import http.client
    import re
    import time

    here = Path(__file__).resolve().parent
    cmd = [sys.executable, "-m", "gunicorn", "--preload", "-w", str(workers), "-b", "127.0.0.1:0"]
    cmd += ["-c", str(here / "gunicorn_conf.py"), "--chdir", str(here), "gunicorn_app:app"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []
    port: list[int] = []
    listening = threading.Event()

    def read_log() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", line)
            if found:
                port.append(int(found.group(1)))
                listening.set()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    pids: set[str] = set()
    sent = 0
    try:
        if not listening.wait(timeout):
            print("gunicorn_app: gunicorn did not start:\n" + "".join(lines))
            return 1
        deadline = time.monotonic() + timeout
        while (len(pids) < workers or sent < 30) and time.monotonic() < deadline:
            conn = http.client.HTTPConnection("127.0.0.1", port[0], timeout=5)
            conn.request("GET", f"/page/{sent}", headers={"X-User-Id": f"gunicorn-user-{sent % 4}"})
            pids.add(conn.getresponse().read().decode().strip())
            conn.close()
            sent += 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        reader.join(5)
    stops = [re.search(r"cdp_batcher: worker \d+ stopped: delivered=(\d+) ok=True", line) for line in lines]
    delivered = sum(int(m.group(1)) for m in stops if m)
    print(
        f"gunicorn_app: {sent} requests served by {len(pids)} workers; at their exit the workers "
        f"had delivered {delivered}; gunicorn exit {proc.returncode}"
    )
    return 0 if proc.returncode == 0 and len(pids) == workers and delivered == sent else 1


if __name__ == "__main__":
    if "--selftest" not in sys.argv:
        print(__doc__)
        sys.exit(2)
    sys.exit(selftest())
