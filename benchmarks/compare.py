"""This SDK against Segment's analytics-python, side by side, in one run.

    pip install -e '.[bench]'
    python benchmarks/compare.py [--runs 3] [--scenarios deliver,remote,ratelimited,...]

Every measurement is a fresh process (``run.py``) against a fresh sink
(``sink.py``, its own process), the two SDKs alternating run by run so that
both see the same machine noise. Prints the medians as a Markdown table,
with Segment/ours ratios.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).parent
SDKS = ("ours", "segment")
EXIT_CAP_S = 20.0  # an exit still running after this is killed and reported as "> 20 s"


class Sink:
    def __init__(self, *flags: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "sink.py"), *flags], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        port = self.process.stdout.readline().split()[1]
        self.url = f"http://127.0.0.1:{port}/analytics"

    def counts(self) -> dict[str, int]:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            counts: dict[str, int] = json.loads(response.read())
            return counts

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


def refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/analytics"


def run(
    scenario: str, sdk: str, url: str, timeout: float = 600, *flags: str
) -> tuple[dict[str, Any], float]:
    """One run.py process; its JSON result and when it exited (None fields if it was killed)."""
    process = subprocess.Popen(
        [sys.executable, str(HERE / "run.py"), scenario, "--sdk", sdk, "--url", url, *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # Segment logs every failed upload there
        text=True,
    )
    try:
        stdout, _ = process.communicate(timeout=timeout)
        exited = time.monotonic()
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, _ = process.communicate()
        exited = float("inf")
    return json.loads(stdout.splitlines()[0]), exited


def delivery_row(result: dict[str, Any], delivered: int) -> dict[str, Optional[float]]:
    """The table's rows for a ``deliver`` run: latency of track(), throughput, CPU per event."""
    return {
        "track() p50 (us)": result["track_p50_us"],
        "track() p99 (us)": result["track_p99_us"],
        "delivered events/s": result["events_per_s"],
        "CPU per delivered event (us)": result["cpu_s"] / max(1, delivered) * 1e6,
    }


def measure(scenario: str, sdk: str, run_number: int) -> dict[str, Optional[float]]:
    if scenario == "deliver":
        sink = Sink()
        try:
            result, _ = run("deliver", sdk, sink.url)
            delivered = sink.counts()["events"]
        finally:
            sink.close()
        return {**delivery_row(result, delivered), "delivered of 50,000": delivered}
    if scenario == "memory":
        result, _ = run("memory", sdk, refused_url())
        return {"RSS growth, 200,000 tracks, endpoint down (MB)": result["rss_growth_mb"]}
    if scenario == "exit":
        row: dict[str, Optional[float]] = {}
        for state in ("refused", "503", "up"):
            sink = (
                None if state == "refused" else Sink("--status", "503" if state == "503" else "200")
            )
            url = refused_url() if sink is None else sink.url
            try:
                result, exited = run("exit", sdk, url, timeout=EXIT_CAP_S)
                row[f"exit after last track(), endpoint {state} (s)"] = (
                    exited - result["last_track"]
                )
                if sink is not None and state == "up":
                    row["delivered at exit of 1,000, endpoint up"] = sink.counts()["events"]
            finally:
                if sink is not None:
                    sink.close()
        return row
    if scenario == "flaky":
        # Each run its own failure pattern (the same for both SDKs): one seed's luck is no result.
        sink = Sink("--fail-percent", "30", "--count-ids", "--seed", str(run_number))
        try:
            result, _ = run("flaky", sdk, sink.url)
            counts = sink.counts()
        finally:
            sink.close()
        return {
            "30% HTTP 500: drain after flush() (s)": result["drain_s"],
            "30% HTTP 500: delivered of 10,000": counts["distinct"],
            "30% HTTP 500: duplicates": counts["events"] - counts["distinct"],
        }
    if scenario == "remote":
        row = {"50 ms endpoint: events/s, defaults": _remote(sdk)}
        row["50 ms endpoint: events/s, max_concurrent_requests=16"] = (
            _remote(sdk, "--concurrency", "16") if sdk == "ours" else None
        )
        return row
    if scenario == "ratelimited":
        sink = Sink("--rate", str(LIMIT_PER_S), "--count-ids")
        try:
            result, _ = run("ratelimited", sdk, sink.url)
            counts = sink.counts()
        finally:
            sink.close()
        return {
            f"limiter at {LIMIT_PER_S}/s: delivered of 2,000": counts["distinct"],
            f"limiter at {LIMIT_PER_S}/s: duplicates": counts["events"] - counts["distinct"],
            f"limiter at {LIMIT_PER_S}/s: drained after (s)": result["drain_s"],
            f"limiter at {LIMIT_PER_S}/s: requests refused (%)": 100
            * counts["refused"]
            / max(1, counts["requests"]),
            f"limiter at {LIMIT_PER_S}/s: refused after the first second (%)": 100
            * counts["refused_after_1s"],
        }
    raise ValueError(scenario)


#: The rate limiter of the ``ratelimited`` scenario, requests a second.
LIMIT_PER_S = 50


def _remote(sdk: str, *flags: str) -> float:
    sink = Sink("--delay-ms", "50")
    try:
        result, _ = run("remote", sdk, sink.url, 600, *flags)
        assert sink.counts()["events"] >= 5000, "not everything arrived"
    finally:
        sink.close()
    return float(result["events_per_s"])


def fmt(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if value == float("inf"):
        return f"> {EXIT_CAP_S:g}"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenarios", default="deliver,memory,exit,flaky,remote,ratelimited")
    args = parser.parse_args()
    table: dict[str, dict[str, list[float]]] = {}
    for scenario in args.scenarios.split(","):
        for run_number in range(args.runs):
            for sdk in SDKS:
                started = time.monotonic()
                for metric, value in measure(scenario, sdk, run_number).items():
                    table.setdefault(metric, {}).setdefault(sdk, []).append(value)
                took = time.monotonic() - started
                print(f"  {scenario} run {run_number + 1} {sdk}: {took:.1f} s", file=sys.stderr)
    print(f"\nMedians of {args.runs} runs; Segment is segment-analytics-python", end=" ")
    print(f"{_segment_version()}, batch size 100 for both.\n")
    print("| metric | ours | Segment | Segment / ours |")
    print("|---|---:|---:|---:|")
    for metric, by_sdk in table.items():
        ours, segment = (_median(by_sdk[sdk]) for sdk in SDKS)
        ratio = segment / ours if ours and segment and segment != float("inf") else None
        print(f"| {metric} | {fmt(ours)} | {fmt(segment)} | {fmt(ratio) if ratio else '-'} |")
    return 0


def _median(values: list[Optional[float]]) -> Optional[float]:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def _segment_version() -> str:
    from importlib.metadata import version

    return version("segment-analytics-python")


if __name__ == "__main__":
    sys.exit(main())
