"""Quick start: track a shopping session and see it arrive, with no server to set up.

Starts the package's reference receiver on a free 127.0.0.1 port (SQLite in
memory), points a client at it, tracks a view, an add-to-cart and a purchase
with a transform that scrubs a PII field, flushes, and prints what arrived.

    python examples/quickstart.py
"""

from __future__ import annotations

import decimal
from typing import Any

import campaign_cart_analytics as cca
from campaign_cart_analytics.receiver import create_app, serve


def scrub_pii(event: dict[str, Any]) -> dict[str, Any]:
    event.get("user_properties", {}).pop("customer_phone", None)
    event["app_version"] = "1.0.0"
    return event


def main() -> int:
    receiver = serve(create_app(token="demo-token"))
    print(f"Receiver listening on {receiver.url}")

    user = {"user_id": "user_123", "session_id": "sess_123", "customer_phone": "555-0100"}
    price = decimal.Decimal("99.99")
    item = {"item_id": "SKU123", "item_name": "Trail Shoe", "price": price, "quantity": 1}
    cart = {"value": price, "currency": "USD", "items": [item]}
    attribution = {"source": "google", "medium": "cpc", "campaign": "summer_sale"}

    with cca.Analytics(
        receiver.url,
        headers={"Authorization": "Bearer demo-token"},
        transform_function=scrub_pii,
    ) as analytics:
        for name in ("dl_view_item", "dl_add_to_cart", "dl_purchase"):
            analytics.track(
                name, {"ecommerce": cart, "user_properties": user, "attribution": attribution}
            )
        delivered = analytics.flush(timeout=10)
        stats = analytics.stats()

    received = receiver.app.store.events()
    receiver.stop()
    print(f"\n{'event':<16} {'event_id':<34} {'value':>7}  phone scrubbed")
    for event in received:
        scrubbed = "customer_phone" not in event["user_properties"]
        value = event["ecommerce"]["value"]
        print(f"{event['event']:<16} {event['event_id']:<34} {value:>7}  {scrubbed}")
    print(
        f"\ndelivered={stats.delivered} batches_sent={stats.batches_sent} dropped={stats.dropped}"
    )
    return 0 if delivered and len(received) == 3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
