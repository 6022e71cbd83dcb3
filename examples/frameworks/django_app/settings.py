"""Minimal settings for the Django recipe (no database needed)."""

from __future__ import annotations

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "urls"
INSTALLED_APPS = ["analytics"]
MIDDLEWARE = ["analytics.middleware.track_requests"]
DATABASES: dict[str, object] = {}
USE_TZ = True

#: Keyword arguments for CDPClient.from_env(); keys stay in the environment, never in settings.
CDP_BATCHER = {"flush_interval": 0.5}
