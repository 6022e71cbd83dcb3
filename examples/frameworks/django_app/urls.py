from __future__ import annotations

from analytics import views
from django.urls import path

urlpatterns = [
    path("products/<int:product_id>", views.product),
    path("checkout", views.checkout),
]
