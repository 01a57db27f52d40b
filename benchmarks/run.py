"""One benchmark run: one SDK, one scenario, in this process; prints one JSON line.

    python benchmarks/run.py deliver [--sdk ours|segment] [--url URL] [--events 50000]

With no ``--url`` it starts ``sink.py`` itself. Scenarios:

- ``deliver``: track realistic add-to-cart events (one item, user_properties,
  attribution) as fast as one thread can while the SDK delivers, then flush.
  Reports ``track()`` p50/p99 in microseconds (each call timed on its own),
  end-to-end events/s (first track to flush returning) and CPU microseconds
  per delivered event (this process: track + background thread + HTTP).
- ``memory``: endpoint down; 200,000 ``track()`` calls at the default
  ``max_queue_size``; reports how much the process grew (RSS, MB).
- ``exit``: track 1,000 events and end without flushing; prints the time of
  the last ``track()`` so the caller can time the exit.
- ``flaky``: 10,000 events to an endpoint failing 30% of requests with 500,
  ``retry_delay_ms=100``; reports seconds from ``flush()`` to drained.
- ``remote``: 5,000 events to an endpoint answering every POST after 50 ms
  (``sink.py --delay-ms 50``); reports delivered events/s, first track to
  flush returning. ``--concurrency N`` sets our ``max_concurrent_requests``.
- ``ratelimited``: 2,000 events in batches of 10 to a limiter refusing all
  beyond N requests a second (``sink.py --rate N``); reports seconds to
  drained; the sink counts what was delivered and refused.

Batches are 100 events for both SDKs (Segment's default upload size).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

SINK = str(Path(__file__).with_name("sink.py"))


def add_to_cart(n: int) -> dict[str, Any]:
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


class SDK:
    """The calls a scenario makes, for either SDK."""

    def __init__(self, name: str, url: str, batch_size: int = 100, **options: Any) -> None:
        self.name = name
        if name == "ours":
            import campaign_cart_analytics as cca

            client = cca.Analytics(url, batch_size=batch_size, **options)
            self.track: Callable[[dict[str, Any]], Any] = lambda properties: client.track(
                "dl_add_to_cart", properties
            )
            self.flush: Callable[[], Any] = lambda: client.flush(timeout=300)
        else:
            from segment.analytics import Client

            segment_options = {"max_queue_size": options.get("max_queue_size", 10000)}
            client = Client(
                "benchmark-write-key",
                host=url.rsplit("/", 1)[0],
                upload_size=batch_size,
                **segment_options,
            )
            self.track = lambda properties: client.track(
                user_id=properties["user_properties"]["user_id"],
                event="dl_add_to_cart",
                properties=properties,
            )
            self.flush = client.flush


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def deliver(
    sdk_name: str, url: str, events: int, concurrency: int = 0, **options: Any
) -> dict[str, Any]:
    if concurrency:
        options["max_concurrent_requests"] = concurrency
    sdk = SDK(sdk_name, url, max_queue_size=max(10_000, events), **options)
    payloads = [add_to_cart(n) for n in range(events)]
    latencies = []
    clock = time.perf_counter_ns
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    for properties in payloads:
        started = clock()
        sdk.track(properties)
        latencies.append(clock() - started)
    sdk.flush()
    wall = time.perf_counter() - wall_started
    cpu = time.process_time() - cpu_started
    latencies.sort()
    return {
        "track_p50_us": latencies[len(latencies) // 2] / 1000,
        "track_p99_us": latencies[int(len(latencies) * 0.99)] / 1000,
        "events_per_s": events / wall,
        "cpu_s": cpu,
    }


def memory(sdk_name: str, url: str, events: int) -> dict[str, Any]:
    sdk = SDK(sdk_name, url)
    sdk.track(add_to_cart(0))
    gc.collect()
    before = rss_mb()
    for n in range(events):
        sdk.track(add_to_cart(n))
    gc.collect()
    return {"rss_growth_mb": rss_mb() - before}


def exit_without_flush(sdk_name: str, url: str, events: int) -> dict[str, Any]:
    sdk = SDK(sdk_name, url)
    for n in range(events):
        sdk.track(add_to_cart(n))
    return {"last_track": time.monotonic()}


def flaky(sdk_name: str, url: str, events: int) -> dict[str, Any]:
    options = {"retry_delay_ms": 100, "max_retries": 10} if sdk_name == "ours" else {}
    sdk = SDK(sdk_name, url, max_queue_size=max(10_000, events), **options)
    for n in range(events):
        sdk.track(add_to_cart(n))
    started = time.perf_counter()
    sdk.flush()
    return {"drain_s": time.perf_counter() - started}


def remote(sdk_name: str, url: str, events: int, concurrency: int = 0) -> dict[str, Any]:
    options = {"max_concurrent_requests": concurrency} if concurrency else {}
    sdk = SDK(sdk_name, url, max_queue_size=max(10_000, events), **options)
    started = time.perf_counter()
    for n in range(events):
        sdk.track(add_to_cart(n))
    sdk.flush()
    return {"events_per_s": events / (time.perf_counter() - started)}


def rate_limited(sdk_name: str, url: str, events: int, concurrency: int = 0) -> dict[str, Any]:
    options = {"max_concurrent_requests": concurrency} if concurrency else {}
    sdk = SDK(sdk_name, url, batch_size=10, max_queue_size=max(10_000, events), **options)
    started = time.perf_counter()
    for n in range(events):
        sdk.track(add_to_cart(n))
    sdk.flush()
    return {"drain_s": time.perf_counter() - started}


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "deliver": deliver,
    "memory": memory,
    "exit": exit_without_flush,
    "flaky": flaky,
    "remote": remote,
    "ratelimited": rate_limited,
}
DEFAULT_EVENTS = {
    "deliver": 50_000, "memory": 200_000, "exit": 1_000, "flaky": 10_000,
    "remote": 5_000, "ratelimited": 2_000,
}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--sdk", choices=["ours", "segment"], default="ours")
    parser.add_argument("--url", help="endpoint; by default a sink.py started for this run")
    parser.add_argument("--events", type=int)
    parser.add_argument("--concurrency", type=int, default=0, help="our max_concurrent_requests")
    args = parser.parse_args()
    events = args.events or DEFAULT_EVENTS[args.scenario]
    sink = None
    url = args.url
    if url is None:
        sink = subprocess.Popen([sys.executable, SINK], stdout=subprocess.PIPE, text=True)
        assert sink.stdout is not None
        url = f"http://127.0.0.1:{sink.stdout.readline().split()[1]}/analytics"
    try:
        extra = (
            {"concurrency": args.concurrency}
            if args.scenario in ("deliver", "remote", "ratelimited")
            else {}
        )
        result = SCENARIOS[args.scenario](args.sdk, url, events, **extra)
    finally:
        if sink is not None:
            sink.kill()
    print(json.dumps({"sdk": args.sdk, "scenario": args.scenario, "events": events, **result}))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
