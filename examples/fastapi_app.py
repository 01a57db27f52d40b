"""A FastAPI shop using the ASGI integration: request context, awaitable flush, graceful stop.

    pip install campaign-cart-analytics fastapi uvicorn
    CCA_ENDPOINT=https://api.yourapp.com/analytics CCA_TOKEN=... \\
        uvicorn --app-dir examples fastapi_app:app --workers 4

Every event tracked in a request carries the visitor's session id (a
``cca_session_id`` cookie, set on the first response that tracked
something), the logged-in user (with Starlette's AuthenticationMiddleware)
and the request's utm_* attribution; the endpoint passes only what it knows.
``track()`` only queues, so a response never waits for the analytics
endpoint, except where the endpoint asks for it: ``/checkout`` flushes before
it answers, awaiting without holding the event loop. On SIGTERM uvicorn
finishes the requests in flight, then the lifespan shuts the client down,
delivering what is queued within ``shutdown_timeout_ms``.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

import campaign_cart_analytics as cca
from campaign_cart_analytics.integrations.asgi import AnalyticsMiddleware, lifespan

analytics = cca.configure(
    endpoint=os.environ.get("CCA_ENDPOINT", "http://127.0.0.1:8000/analytics"),
    headers={"Authorization": f"Bearer {os.environ.get('CCA_TOKEN', '')}"},
    batch_size=20,
    shutdown_timeout_ms=3000,  # below the grace period before a SIGKILL (Kubernetes: 30 s)
)

app = FastAPI(lifespan=lifespan())  # shuts the module-level client down at application shutdown
app.add_middleware(AnalyticsMiddleware)  # uses the module-level client


class Item(BaseModel):
    item_id: str
    price: float
    quantity: int = 1


@app.post("/cart/items", status_code=201)
async def add_to_cart(item: Item) -> dict[str, Any]:
    value = round(item.price * item.quantity, 2)
    cca.track(
        "dl_add_to_cart",
        {"ecommerce": {"items": [item.model_dump()], "value": value, "currency": "USD"}},
    )
    return {"item_id": item.item_id, "value": value}


@app.post("/checkout")
async def checkout(order_id: str) -> dict[str, Any]:
    cca.track("dl_purchase", {"ecommerce": {"transaction_id": order_id, "currency": "USD"}})
    # The purchase must be recorded before the confirmation: wait (at most 2 s) for the
    # endpoint, while this worker's event loop goes on serving other requests.
    recorded = await analytics.flush_async(timeout=2)
    return {"order_id": order_id, "recorded": recorded}


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8001")))
