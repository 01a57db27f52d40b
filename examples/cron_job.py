"""A cron job or backfill: track a run's events, flush, and fail loudly if any were lost.

    CCA_ENDPOINT=https://api.yourapp.com/analytics python examples/cron_job.py

Exits 0 when every event was delivered, 1 otherwise (the reason is logged),
so cron's mail or your scheduler's alerting sees the failure.
"""

from __future__ import annotations

import logging
import os
import sys

import campaign_cart_analytics as cca


def orders_to_report() -> list[dict[str, object]]:
    """Stand-in for the job's real query."""
    return [{"order_id": f"ord_{n}", "value": 20 + n, "session_id": f"sess_{n}"} for n in range(25)]


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    analytics = cca.Analytics(
        os.environ.get("CCA_ENDPOINT", "http://127.0.0.1:8000/analytics"),
        headers={"Authorization": f"Bearer {os.environ.get('CCA_TOKEN', '')}"},
        batch_size=50,
        retry_delay_ms=int(os.environ.get("CCA_RETRY_DELAY_MS", "1000")),
    )
    for order in orders_to_report():
        analytics.track(
            "dl_purchase",
            {
                "ecommerce": {"transaction_id": order["order_id"], "value": order["value"]},
                "user_properties": {"session_id": order["session_id"]},
            },
        )
    delivered = analytics.flush(timeout=30)
    stats = analytics.stats()
    analytics.shutdown(timeout=5)
    if not delivered or stats.dropped:
        print(
            f"analytics: {stats.dropped} events not delivered: {stats.last_error}", file=sys.stderr
        )
        return 1
    print(f"analytics: {stats.delivered} events delivered in {stats.batches_sent} batches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
