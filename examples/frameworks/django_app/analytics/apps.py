"""Where the client lives in Django: one per process, created in ``AppConfig.ready()``.

``ready()`` runs once per process after the settings are loaded. The client starts no thread
until the first call, so ``manage.py migrate`` and friends pay nothing. Under gunicorn
``--preload`` (or any pre-fork server) the client created in the master is reset in every worker
at fork: empty queue, own thread and connections.

Shutdown: Django has no "server stopped" signal. The client's own exit hook flushes at
interpreter exit (runserver, management commands, most servers); where the server offers a hook,
call ``get_client().shutdown(timeout=5.0)`` there: gunicorn's ``worker_exit`` (see
gunicorn_conf.py), uWSGI's ``uwsgi.atexit``. Never flush per request.
"""

from __future__ import annotations

from typing import Optional

from django.apps import AppConfig, apps
from django.conf import settings

from cdp_batcher import CDPClient


class AnalyticsConfig(AppConfig):
    name = "analytics"
    client: Optional[CDPClient] = None

    def ready(self) -> None:
        if AnalyticsConfig.client is None:
            AnalyticsConfig.client = CDPClient.from_env(**getattr(settings, "CDP_BATCHER", {}))


def get_client() -> CDPClient:
    """The process's client (after Django's set-up)."""
    config = apps.get_app_config("analytics")
    assert isinstance(config, AnalyticsConfig) and config.client is not None
    return config.client
