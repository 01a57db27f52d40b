"""track() latency, throughput and CPU per event, delivering to a local sink.

    python benchmarks/bench_delivery.py [--events 50000] [--batch-size 100]

Tracks realistic add-to-cart events (one item, user_properties, attribution)
as fast as one thread can while the background thread delivers to
``sink.py`` in its own process, then flushes. Prints:

- track() latency p50/p99/max in microseconds (each call timed on its own);
- end-to-end events/s, from the first track() to flush() returning;
- CPU microseconds per delivered event (this process: track + worker + HTTP).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import campaign_cart_analytics as cca


def add_to_cart(n: int) -> dict[str, object]:
    return {
        "ecommerce": {
            "currency": "USD",
            "value": 29.99,
            "items": [
                {
                    "item_id": f"SKU{n % 500}",
                    "item_name": "Trail Running Shoe",
                    "item_brand": "Campaign",
                    "item_category": "Footwear",
                    "price": 29.99,
                    "quantity": 1,
                }
            ],
        },
        "user_properties": {
            "user_id": f"user_{n % 1000}",
            "session_id": f"sess_{n % 1000}",
            "country": "US",
        },
        "attribution": {"source": "google", "medium": "cpc", "campaign": "summer_sale"},
    }


def percentile(sorted_values: list[int], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))] / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()

    sink = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("sink.py"))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline().split()[1])
        analytics = cca.Analytics(
            f"http://127.0.0.1:{port}/analytics",
            batch_size=args.batch_size,
            max_queue_size=max(10_000, args.events),
        )
        payloads = [add_to_cart(n) for n in range(args.events)]
        latencies = []
        clock = time.perf_counter_ns
        cpu_started, wall_started = time.process_time(), time.perf_counter()
        for properties in payloads:
            started = clock()
            analytics.track("dl_add_to_cart", properties)
            latencies.append(clock() - started)
        delivered_all = analytics.flush(timeout=120)
        wall = time.perf_counter() - wall_started
        cpu = time.process_time() - cpu_started
        stats = analytics.stats()
        analytics.shutdown(timeout=5)
    finally:
        sink.kill()

    latencies.sort()
    print(f"events              {args.events} (batch size {args.batch_size})")
    print(f"delivered           {stats.delivered} in {stats.batches_sent} batches "
          f"(dropped {stats.dropped}, all delivered: {delivered_all})")  # fmt: skip
    print(f"track() p50         {percentile(latencies, 0.50):.1f} us")
    print(f"track() p99         {percentile(latencies, 0.99):.1f} us")
    print(f"track() max         {latencies[-1] / 1000:.1f} us")
    print(f"end to end          {args.events / wall:,.0f} events/s ({wall:.2f} s)")
    print(f"CPU per event       {cpu / max(1, stats.delivered) * 1e6:.1f} us")
    return 0 if delivered_all else 1


if __name__ == "__main__":
    sys.exit(main())
