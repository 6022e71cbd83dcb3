"""Flask: one client per process, track() inside requests, shut down when the process ends.

    pip install flask
    CDP_API_KEY=... flask --app examples/frameworks/flask_app.py run
    CDP_API_KEY=... python examples/frameworks/flask_app.py --selftest   # 10 requests, shutdown, report

The client is created in the app factory and kept in ``app.extensions["cdp"]``; views reach it
with ``cdp()``. ``track()`` only queues, so a request pays microseconds and never waits on the
network; an ``after_request`` hook tracks every request in one place. Never flush per request.

Flask has no "application stopped" hook: the client's own exit hook flushes at interpreter exit,
and a server with a shutdown hook calls ``shutdown()`` there (gunicorn: ``worker_exit``, see
gunicorn_app.py). Under gunicorn ``--preload`` the client may be created before the fork: each
worker starts with an empty queue and its own thread.
"""

from __future__ import annotations

import sys
from typing import Optional

from flask import Flask, Response, current_app, request

from cdp_batcher import CDPClient


def cdp() -> CDPClient:
    """The application's client (inside a request or an app context)."""
    client: CDPClient = current_app.extensions["cdp"]
    return client


def create_app(client: Optional[CDPClient] = None) -> Flask:
    app = Flask(__name__)
    app.extensions["cdp"] = client if client is not None else CDPClient.from_env()

    @app.after_request
    def track_request(response: Response) -> Response:
        user = request.headers.get("X-User-Id", "anonymous")
        cdp().track(user, "request", {"path": request.path, "status": response.status_code})
        return response

    @app.post("/checkout")
    def checkout() -> dict[str, object]:
        user = request.headers.get("X-User-Id", "anonymous")
        order = request.get_json(silent=True) or {}
        cdp().track(user, "purchase_completed", {"amount": order.get("amount", 0), "currency": "EUR"})
        return {"ok": True}

    @app.get("/products/<int:product_id>")
    def product(product_id: int) -> dict[str, object]:
        return {"product": product_id}

    return app


def main() -> int:
    app = create_app()
    if "--selftest" not in sys.argv:
        app.run(port=8000)
        return 0
    with app.test_client() as http:
        for i in range(8):
            http.get(f"/products/{i}", headers={"X-User-Id": f"flask-user-{i % 2}"})
        http.post("/checkout", json={"amount": 42.5}, headers={"X-User-Id": "flask-user-1"})
        http.post("/checkout", json={"amount": 7}, headers={"X-User-Id": "flask-user-0"})
    report = cdp_of(app).shutdown(timeout=5.0)
    delivered = cdp_of(app).stats().destinations["opencdp"].delivered
    print(
        f"flask_app: 10 requests, 12 events (one per request, two checkouts), delivered={delivered} ok={bool(report)}"
    )
    return 0 if report else 1


def cdp_of(app: Flask) -> CDPClient:
    client: CDPClient = app.extensions["cdp"]
    return client


if __name__ == "__main__":
    sys.exit(main())
