from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from .apps import get_client


def product(request: HttpRequest, product_id: int) -> JsonResponse:
    return JsonResponse({"product": product_id})


def checkout(request: HttpRequest) -> JsonResponse:
    user = request.headers.get("X-User-Id", "anonymous")
    get_client().track(user, "purchase_completed", {"amount": 42.5, "currency": "EUR"})
    return JsonResponse({"ok": True})
