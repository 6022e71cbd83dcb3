"""The uWSGI recipe's app with one slow path, for the busy-worker cells of tests/test_servers.py.

``GET /slow/<n>`` waits ``SLOW_SECONDS`` before the recipe's app serves it (and tracks its
event), so the stop signal finds that worker inside a request. Importing ``uwsgi_app`` also
installs its ``uwsgi.atexit`` hook, exactly as the recipe does.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from typing import Any, Callable

from uwsgi_app import app as recipe_app

#: Long enough for the test to send the stop signal while the request is being served.
SLOW_SECONDS = 2.0


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if str(environ.get("PATH_INFO", "")).startswith("/slow/"):
        sys.stdout.write(f"slow request started in worker {os.getpid()}\n")
        sys.stdout.flush()
        time.sleep(SLOW_SECONDS)  # the server being slow: the fault this cell injects
    return recipe_app(environ, start_response)
