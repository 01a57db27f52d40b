"""``demo``: a shopping session sent through the SDK to an embedded receiver, shown as a table."""

from __future__ import annotations

import argparse
import decimal
import os
import tempfile
from typing import Any

from ..client import Analytics
from ..receiver import LocalServer, create_app

NAME = "demo"
HELP = "send a sample shopping session to a local receiver and show what it stored"

USER = {"user_id": "user_123", "session_id": "sess_123", "country": "US",
        "customer_phone": "555-0100"}  # fmt: skip
ITEM = {"item_id": "SKU123", "item_name": "Trail Shoe", "price": decimal.Decimal("99.99"),
        "quantity": 1}  # fmt: skip
ATTRIBUTION = {"source": "google", "medium": "cpc", "campaign": "summer_sale"}
SESSION = [
    ("dl_view_item", {"ecommerce": {"value": ITEM["price"], "currency": "USD", "items": [ITEM]}}),
    ("dl_add_to_cart", {"ecommerce": {"value": ITEM["price"], "currency": "USD", "items": [ITEM]}}),
    ("dl_purchase", {"ecommerce": {"transaction_id": "T-1001", "value": ITEM["price"],
                                   "currency": "USD", "items": [ITEM]}}),
]  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def scrub_pii(event: dict[str, Any]) -> dict[str, Any]:
    """The transform: drop the phone number, tag the app version."""
    event.get("user_properties", {}).pop("customer_phone", None)
    event["app_version"] = "1.0.0"
    return event


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as directory:
        app = create_app(os.path.join(directory, "demo.sqlite3"))
        with LocalServer(app, "127.0.0.1", 0) as server:
            print(f"Receiver listening on {server.url} (SQLite in a temporary folder)")
            print(f"Live view on http://{server.host}:{server.port}/ (`receive` keeps one open)")
            with Analytics(server.url, transform_function=scrub_pii) as analytics:
                with analytics.context(user_properties=USER, attribution=ATTRIBUTION):
                    for name, properties in SESSION:
                        analytics.track(name, properties)
                delivered = analytics.flush(timeout=10)
                stats = analytics.stats()
            stored = app.store.events()
            receiver_stats = app.store.stats()
    print()
    print(f"{'event':<15} {'event_id':<34} {'event_time':<25} {'value':>6}  {'phone':<8} app")
    for event in stored:
        phone = event["user_properties"].get("customer_phone", "scrubbed")
        print(
            f"{event['event']:<15} {event['event_id']:<34} {event['event_time']:<25} "
            f"{event['ecommerce']['value']:>6}  {phone:<8} {event['app_version']}"
        )
    print()
    print(
        f"SDK: tracked {stats.tracked}, delivered {stats.delivered} in {stats.batches_sent} "
        f"batch(es), dropped {stats.dropped}. Receiver: stored {receiver_stats['events']}, "
        f"duplicates {receiver_stats['duplicates']}."
    )
    return 0 if delivered and len(stored) == len(SESSION) else 1
