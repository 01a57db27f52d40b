"""Quick start: track a shopping session and watch it arrive, with no server to set up.

Starts a small receiver on a free 127.0.0.1 port (in this process), points
the SDK at it, tracks a view, an add-to-cart and a purchase with a transform
that scrubs a PII field, flushes, and prints what the receiver got.

    python examples/quickstart.py
"""

from __future__ import annotations

import decimal
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import campaign_cart_analytics as cca

received: list[dict[str, Any]] = []


class Receiver(BaseHTTPRequestHandler):
    """Accepts batches the way the seed recommends: 202 and a small JSON body."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        batch = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        received.extend(batch["events"])
        body = json.dumps(
            {
                "success": True,
                "message": "Analytics events received",
                "batch_id": batch["batch_info"]["batch_id"],
                "events_processed": len(batch["events"]),
            }
        ).encode()
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def scrub_pii(event: dict[str, Any]) -> dict[str, Any]:
    event.get("user_properties", {}).pop("customer_phone", None)
    event["app_version"] = "1.0.0"
    return event


def main() -> int:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}/analytics"
    print(f"Receiver listening on {endpoint}")

    user = {"user_id": "user_123", "session_id": "sess_123", "customer_phone": "555-0100"}
    item = {
        "item_id": "SKU123",
        "item_name": "Trail Shoe",
        "price": decimal.Decimal("99.99"),
        "quantity": 1,
    }
    cart = {"value": decimal.Decimal("99.99"), "currency": "USD", "items": [item]}
    attribution = {"source": "google", "medium": "cpc", "campaign": "summer_sale"}

    with cca.Analytics(endpoint, headers={"Authorization": "Bearer demo-token"},
                       transform_function=scrub_pii) as analytics:  # fmt: skip
        for name in ("dl_view_item", "dl_add_to_cart", "dl_purchase"):
            analytics.track(
                name, {"ecommerce": cart, "user_properties": user, "attribution": attribution}
            )
        delivered = analytics.flush(timeout=10)
        stats = analytics.stats()

    print(f"\n{'event':<16} {'event_id':<36} {'value':>7}  phone scrubbed")
    for event in received:
        scrubbed = "customer_phone" not in event["user_properties"]
        value = event["ecommerce"]["value"]
        print(f"{event['event']:<16} {event['event_id']:<36} {value:>7}  {scrubbed}")
    print(
        f"\ndelivered={stats.delivered} batches_sent={stats.batches_sent} dropped={stats.dropped}"
    )
    server.shutdown()
    return 0 if delivered and len(received) == 3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
