"""``manage.py selftest``: ten requests through Django's test client, then shutdown and report."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.test import Client

from analytics.apps import get_client


class Command(BaseCommand):
    help = "Send ten requests through the app, shut the client down, print the delivery report."

    def handle(self, *args: Any, **options: Any) -> None:
        http = Client()
        for i in range(8):
            http.get(f"/products/{i}", headers={"X-User-Id": f"django-user-{i % 2}"})
        http.post("/checkout", headers={"X-User-Id": "django-user-1"})
        http.post("/checkout", headers={"X-User-Id": "django-user-0"})
        client = get_client()
        report = client.shutdown(timeout=5.0)
        delivered = client.stats().destinations["opencdp"].delivered
        self.stdout.write(f"django_app: 10 requests, 12 events, delivered={delivered} ok={bool(report)}")
        if not report or delivered != 12:
            raise CommandError("not everything was delivered")
