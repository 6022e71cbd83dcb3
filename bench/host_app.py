"""The host application of ``make bench``'s host-app rows: the Flask recipe's shape under gunicorn.

``GET /track/<n>`` makes ``n`` tracking calls (one user, the bench event, two properties) and
answers a small JSON body, as a view in examples/frameworks/flask_app.py does; ``n`` = 0 is the
same request with no tracking. The library comes from the environment, read once per worker
process (gunicorn imports this module in each worker: no ``--preload``, so each worker has its
own client, queue and threads, as the recipes advise):

``BENCH_TRACKER``  ``none``, ``cdp``, ``cdp_dual``, ``posthog`` or ``segment``
``BENCH_SINK``     the sink's URL (bench/sink.py): OpenCDP, Customer.io, PostHog and Segment host
``BENCH_THREADS``  optional: a directory where each worker keeps ``<pid>.json``, its threads' names
                   by native id (rewritten every 0.2 s), for ``bench/ab_host.py --threads``

    BENCH_TRACKER=cdp BENCH_SINK=http://127.0.0.1:8899 gunicorn -w 2 --chdir bench host_app:app
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, Callable

from flask import Flask

API_KEY = "bench-key"
EVENT = "bench_evt"
USERS = [f"user-{i:05d}" for i in range(64)]

Track = Callable[[str, str, dict[str, Any]], object]


def make_tracker(name: str, url: str) -> Track:
    """The library's tracking call, configured as bench.py configures it (sending to the sink)."""
    if name == "none":
        return lambda user, event, properties: None
    if name in ("cdp", "cdp_dual"):
        from cdp_batcher import CDPClient, CustomerIoConfig

        extra: dict[str, Any] = {}
        if name == "cdp_dual":
            extra = {
                "send_to_customer_io": True,
                "customer_io": CustomerIoConfig(site_id="bench-site", api_key=API_KEY, url=url),
            }
        extra.update(json.loads(os.environ.get("BENCH_CDP_OPTIONS") or "{}"))
        client = CDPClient(cdp_api_key=API_KEY, cdp_endpoint=url, cdp_fallback_endpoints=[], **extra)
        return client.track
    if name == "posthog":
        from posthog import Posthog

        capture = Posthog(API_KEY, host=url).capture

        def track(user: str, event: str, properties: dict[str, Any]) -> None:
            capture(event, distinct_id=user, properties=properties)

        return track
    if name == "segment":
        from segment.analytics import Client

        return Client(write_key=API_KEY, host=url).track
    raise ValueError(f"BENCH_TRACKER must be none, cdp, cdp_dual, posthog or segment; got {name!r}")


def name_threads(directory: str) -> None:
    """Keep ``<directory>/<pid>.json`` current: ``{native thread id: thread name}`` of this
    process (the main thread's id is the pid), so that CPU read from /proc/<pid>/task can be
    told apart by thread; a daemon thread looks every 0.2 s and rewrites it when a thread came
    or went (senders start on demand)."""
    path = os.path.join(directory, f"{os.getpid()}.json")

    def keep() -> None:
        written: dict[str, str] = {}
        while True:
            names = {str(os.getpid()): "MainThread"}
            for thread in threading.enumerate():
                if thread is not threading.main_thread() and thread.native_id is not None:
                    names[str(thread.native_id)] = thread.name
            if names != written:
                with open(path + ".tmp", "w") as f:
                    json.dump(names, f)
                os.replace(path + ".tmp", path)
                written = names
            time.sleep(0.2)

    threading.Thread(target=keep, name="bench-thread-names", daemon=True).start()


def create_app() -> Flask:
    if os.environ.get("BENCH_THREADS"):
        name_threads(os.environ["BENCH_THREADS"])
    track = make_tracker(os.environ.get("BENCH_TRACKER", "none"), os.environ.get("BENCH_SINK", ""))
    users = USERS
    app = Flask(__name__)

    @app.get("/track/<int:n>")
    def handle(n: int) -> dict[str, object]:
        for i in range(n):
            track(users[i], EVENT, {"plan": "pro", "amount": i})
        return {"ok": True, "calls": n}

    return app


app = create_app()
