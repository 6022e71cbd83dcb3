#!/usr/bin/env python
"""Django: where the client lives (AppConfig.ready) and how it shuts down.

    pip install django
    CDP_API_KEY=... python examples/frameworks/django_app/manage.py runserver
    CDP_API_KEY=... python examples/frameworks/django_app/manage.py selftest   # 10 requests, shutdown, report

See analytics/apps.py.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
