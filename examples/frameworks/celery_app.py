"""Celery: one client per worker process, created and shut down by Celery's worker signals.

    pip install celery
    cd examples/frameworks
    CDP_API_KEY=... celery -A celery_app worker --loglevel=info          # prefork pool (the default)
    CDP_API_KEY=... python examples/frameworks/celery_app.py --selftest   # a task run eagerly, signals fired by hand

- ``worker_process_init`` runs in each pool child after the fork: it creates the child's own
  client (a client inherited from the parent would be reset by the fork hook anyway; a fresh one
  also picks up the child's environment).
- ``worker_process_shutdown`` runs in each child as it exits. Pool children end with
  ``os._exit()``, which skips ``atexit``: without this handler what the child queued last is lost.
- ``worker_shutdown`` runs in the main worker process: with the ``solo`` and ``threads`` pools the
  tasks run there, so it shuts that client down.

Tasks call ``cdp()``, which also creates a client lazily outside a worker (tests, eager mode,
a shell). Shutdown timeouts stay short: Celery waits for these handlers before the process exits.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown, worker_shutdown

from cdp_batcher import CDPClient

app = Celery("celery_app", broker=os.environ.get("CELERY_BROKER_URL", "memory://"))
_client: Optional[CDPClient] = None


def cdp() -> CDPClient:
    """This process's client (created on first use outside a worker)."""
    global _client
    if _client is None:
        _client = CDPClient.from_env()
    return _client


@worker_process_init.connect
def start_client(**kwargs: Any) -> None:
    """A pool child starts: give it its own client."""
    global _client
    _client = CDPClient.from_env()


@worker_process_shutdown.connect
@worker_shutdown.connect
def stop_client(**kwargs: Any) -> None:
    """A pool child (or, for solo/threads pools, the worker) stops: deliver what is queued."""
    if _client is not None:
        report = _client.shutdown(timeout=5.0)
        if not report:
            print(f"celery_app: not everything was delivered: {report}", file=sys.stderr)


@app.task
def welcome(user_id: str, plan: str) -> None:
    client = cdp()
    client.identify(user_id, {"plan": plan})
    client.track(user_id, "welcome_email_queued", {"plan": plan})


def selftest() -> int:
    """Run tasks eagerly with the worker signals sent as a prefork child would see them."""
    app.conf.task_always_eager = True
    worker_process_init.send(sender=None)
    for i in range(3):
        welcome.delay(f"celery-user-{i}", "pro")
    client = cdp()
    worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
    delivered = client.stats().destinations["opencdp"].delivered
    print(f"celery_app: 3 tasks, 6 events, delivered by worker_process_shutdown={delivered}")
    return 0 if delivered == 6 else 1


if __name__ == "__main__":
    sys.exit(selftest() if "--selftest" in sys.argv else 2)
