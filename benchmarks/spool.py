"""The durable spool's cost (issue 10): ours in memory, ours with a spool, and Segment, one run.

    pip install -e '.[bench]'
    python benchmarks/spool.py [--runs 3] [--events 50000]

The ``deliver`` scenario of ``run.py`` (realistic add-to-cart events tracked
as fast as one thread can while the SDK delivers, batches of 100, then
``flush()``), in a fresh process per measurement against a fresh ``sink.py``,
the variants alternating run by run so that all see the same machine noise:

- ``memory``: ours without a spool (as today);
- ``spool``: ours with ``spool_path`` (WAL, ``synchronous=NORMAL``: survives a
  process crash), at the default ``max_concurrent_requests`` (4);
- ``spool-1req``: the same with ``max_concurrent_requests=1``;
- ``spool-full``: ``spool_sync="full"`` (an fsync per event: survives a
  power loss), on fewer events, since each costs a disk flush;
- ``segment``: Segment's ``analytics-python``, in memory.

Prints the medians as a Markdown table: ``track()`` p50/p99 (each call timed
on its own), delivered events/s (first track to flush returning), CPU per
delivered event (the whole process), events delivered.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from compare import Sink, delivery_row  # noqa: E402
from run import deliver  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "memory": {},
    "spool": {"spool": True},
    "spool-1req": {"spool": True, "max_concurrent_requests": 1},
    "spool-full": {"spool": True, "spool_sync": "full", "events": 5_000},
    "segment": {"sdk": "segment"},
}


def one(variant: str, url: str, events: int, folder: str) -> dict[str, float]:
    """One measurement in this process."""
    options = dict(VARIANTS[variant])
    sdk_name = options.pop("sdk", "ours")
    events = options.pop("events", events)
    if options.pop("spool", False):
        options["spool_path"] = os.path.join(folder, "spool.sqlite3")
    return {**deliver(sdk_name, url, events, **options), "events": events}


def measure(variant: str, events: int) -> dict[str, float]:
    sink = Sink()
    try:
        with tempfile.TemporaryDirectory() as folder:
            output = subprocess.run(
                [sys.executable, __file__, "--one", variant, "--url", sink.url,
                 "--events", str(events), "--folder", folder],
                capture_output=True, text=True, timeout=600, check=True,
            ).stdout  # fmt: skip
        result: dict[str, float] = json.loads(output.splitlines()[-1])
        delivered = sink.counts()["events"]
    finally:
        sink.close()
    return {
        **delivery_row(result, delivered),
        "delivered": delivered,
        "tracked": result["events"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.url, args.events, args.folder)), flush=True)
        return 0
    variants = args.variants.split(",")
    results: dict[str, list[dict[str, float]]] = {variant: [] for variant in variants}
    for run_number in range(args.runs):
        for variant in variants:
            results[variant].append(measure(variant, args.events))
            print(f"run {run_number + 1} {variant}: {results[variant][-1]}", file=sys.stderr)
    metrics = list(next(iter(results.values()))[0])
    print("| metric | " + " | ".join(variants) + " |")
    print("|---|" + "---:|" * len(variants))
    for metric in metrics:
        cells = [f"{statistics.median(r[metric] for r in results[v]):,.3g}" for v in variants]
        print(f"| {metric} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
