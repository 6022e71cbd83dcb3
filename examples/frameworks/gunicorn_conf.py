"""gunicorn configuration for gunicorn_app.py: shut each worker's client down when it exits.

gunicorn --preload -w 4 -c gunicorn_conf.py gunicorn_app:app
"""

from __future__ import annotations

import sys
from typing import Any

graceful_timeout = 30  # the worker's client.shutdown(timeout=5.0) fits well inside it


def worker_exit(server: Any, worker: Any) -> None:
    """Runs in the worker process as it stops: deliver what it queued (5 s at most)."""
    module = sys.modules.get("gunicorn_app")
    if module is None:
        return
    client = module.client
    report = client.shutdown(timeout=5.0)
    delivered = client.stats().destinations["opencdp"].delivered
    server.log.info("cdp_batcher: worker %s stopped: delivered=%s ok=%s", worker.pid, delivered, bool(report))
