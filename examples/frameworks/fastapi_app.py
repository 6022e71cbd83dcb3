"""FastAPI: the client lives in the lifespan; flush and shut down without blocking the loop.

    pip install fastapi uvicorn
    CDP_API_KEY=... uvicorn fastapi_app:app --app-dir examples/frameworks
    CDP_API_KEY=... python examples/frameworks/fastapi_app.py --selftest   # runs the lifespan and 10 requests

``track()`` never waits on the network, so it is fine to call from ``async def`` endpoints.
At shutdown the lifespan awaits ``client.aflush()`` and ``client.ashutdown()``: both run the
blocking wait in a worker thread, so other requests and tasks keep running meanwhile.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Request

from cdp_batcher import CDPClient

log = logging.getLogger("fastapi_app")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    client = CDPClient.from_env()
    app.state.cdp = client
    yield
    report = await client.aflush(timeout=5.0)  # deliver what is queued; the loop keeps serving
    if not report:
        log.warning("cdp_batcher: not everything was delivered at shutdown: %s", report)
    app.state.cdp_report = await client.ashutdown(timeout=5.0)


app = FastAPI(lifespan=lifespan)


def get_cdp(request: Request) -> CDPClient:
    client: CDPClient = request.app.state.cdp
    return client


Cdp = Annotated[CDPClient, Depends(get_cdp)]


@app.get("/products/{product_id}")
async def product(
    product_id: int, cdp: Cdp, x_user_id: Annotated[str, Header()] = "anonymous"
) -> dict[str, int]:
    cdp.track(x_user_id, "product_viewed", {"product": product_id})
    return {"product": product_id}


@app.post("/checkout")
async def checkout(cdp: Cdp, x_user_id: Annotated[str, Header()] = "anonymous") -> dict[str, bool]:
    cdp.track(x_user_id, "purchase_completed", {"amount": 42.5, "currency": "EUR"})
    return {"ok": True}


def main() -> int:
    if "--selftest" not in sys.argv:
        import uvicorn  # type: ignore[import-not-found]

        uvicorn.run(app, port=8000)
        return 0
    from fastapi.testclient import TestClient

    with TestClient(app) as http:  # runs the lifespan: start-up, then shutdown at the end
        for i in range(9):
            http.get(f"/products/{i}", headers={"X-User-Id": f"fastapi-user-{i % 3}"})
        http.post("/checkout", headers={"X-User-Id": "fastapi-user-1"})
    report = app.state.cdp_report
    delivered = app.state.cdp.stats().destinations["opencdp"].delivered
    print(f"fastapi_app: 10 requests, delivered={delivered} ok={bool(report)}")
    return 0 if report and delivered == 10 else 1


if __name__ == "__main__":
    sys.exit(main())
