"""uWSGI: one client per worker, whatever the fork mode, shut down by ``uwsgi.atexit``.

    pip install uwsgi
    cd examples/frameworks
    CDP_API_KEY=... uwsgi --ini uwsgi.ini                 # see uwsgi.ini for what each option changes

The client is made at module level. Without ``lazy-apps`` uWSGI imports this module once, in the
master, then forks the workers from C without running Python's fork hooks; the client notices
the fork on its first call in each worker and starts empty there, with its own thread and
connections (one INFO line says so). With ``lazy-apps`` each worker imports the module itself.

``uwsgi.atexit`` runs in each worker as it stops (SIGINT/SIGQUIT to the master, SIGTERM with
``die-on-term``, a reload, ``max-requests``): it shuts the client down, so what the worker
queued last is delivered. Keep the timeout below uWSGI's ``worker-reload-mercy`` (60 s).
uWSGI skips ``uwsgi.atexit`` in a worker that is busy with a request when a *brutal* stop
arrives: uwsgi.ini's ``hook-master-start = unix_signal:... gracefully_kill_them_all`` lines make
SIGTERM and SIGINT graceful, so a busy worker finishes its request and then runs it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import Any, Callable

from cdp_batcher import CDPClient

logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] %(name)s %(levelname)s %(message)s")
log = logging.getLogger("uwsgi_app")
client = CDPClient.from_env()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    user = environ.get("HTTP_X_USER_ID", "anonymous")
    client.track(user, "page_viewed", {"path": environ.get("PATH_INFO", "/"), "worker_pid": os.getpid()})
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"pid={os.getpid()}\n".encode()]


def stop_client() -> None:
    """Runs in each worker as it stops: deliver what it queued (5 s at most)."""
    report = client.shutdown(timeout=5.0)
    delivered = client.stats().destinations["opencdp"].delivered
    log.info("cdp_batcher: worker %s stopped: delivered=%s ok=%s", os.getpid(), delivered, bool(report))


try:
    import uwsgi  # type: ignore[import-not-found]  # only inside a uWSGI process
except ImportError:
    uwsgi = None
else:
    uwsgi.atexit = stop_client


if __name__ == "__main__":
    print(__doc__)
    sys.exit(2)
