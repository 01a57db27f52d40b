"""How long a script that tracked 1,000 events takes to exit, endpoint up or down.

    python benchmarks/bench_exit.py [--runs 3]

For each endpoint state (up, refusing connections, answering 503) a fresh
interpreter tracks 1,000 add-to-cart events with default options and ends
without calling flush(). Printed: the median time from its last track() to
the process having exited, and how many events the exit-time flush delivered.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import atexit, sys, time
    # Registered before the SDK's own hook, so it runs after it: report what exit delivered.
    atexit.register(lambda: print("DELIVERED", analytics.stats().delivered, flush=True))
    import campaign_cart_analytics as cca
    analytics = cca.Analytics(sys.argv[1])
    for n in range(1000):
        analytics.track("dl_add_to_cart", {"ecommerce": {"value": 29.99, "items": [{"item_id": n}]},
                                           "user_properties": {"session_id": "sess_1"}})
    print("LAST_TRACK", time.monotonic(), flush=True)
    """
)


def refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/analytics"


def run_once(url: str) -> tuple[float, int]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, url], capture_output=True, text=True, timeout=60
    )
    exited = time.monotonic()
    fields = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    return exited - float(fields["LAST_TRACK"]), int(fields["DELIVERED"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sink_path = str(Path(__file__).with_name("sink.py"))
    print(f"{'endpoint':<10} {'exit after last track()':>24} {'delivered':>10}")
    for state in ("up", "refused", "503"):
        sink = None
        if state == "refused":
            url = refused_url()
        else:
            status = "202" if state == "up" else "503"
            sink = subprocess.Popen(
                [sys.executable, sink_path, status], stdout=subprocess.PIPE, text=True
            )
            assert sink.stdout is not None
            url = f"http://127.0.0.1:{sink.stdout.readline().split()[1]}/analytics"
        try:
            runs = [run_once(url) for _ in range(args.runs)]
        finally:
            if sink is not None:
                sink.kill()
        latency = statistics.median(r[0] for r in runs)
        delivered = statistics.median(r[1] for r in runs)
        print(f"{state:<10} {latency * 1000:>21.0f} ms {delivered:>10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
