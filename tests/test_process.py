"""Process life in real subprocesses: import, delivery at exit, prompt exit when down."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
from receiver import Receiver, Reply, refused_url


def run_script(body: str, timeout: float = 20) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``body`` in a fresh interpreter; return the result and the time its last line ran.

    The script prints ``time.monotonic()`` as its last line of output (a
    system-wide clock on Linux), so exit latency is measured from there.
    """
    script = textwrap.dedent(body) + "\nimport time; print(time.monotonic(), flush=True)\n"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout
    )
    exited = time.monotonic()
    assert result.returncode == 0, result.stderr
    last_line = float(result.stdout.strip().splitlines()[-1])
    return result, exited - last_line


TRACK_1000 = """
import logging, sys
logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
import campaign_cart_analytics as cca
analytics = cca.Analytics({url!r}{options})
for i in range(1000):
    analytics.track("dl_add_to_cart", {{"ecommerce": {{"value": i}}}})
"""


def test_importing_starts_no_thread_and_opens_no_connection(receiver: Receiver) -> None:
    result, _ = run_script(
        f"""
        import os, threading
        import campaign_cart_analytics as cca
        client = cca.Analytics({receiver.url!r})
        sockets = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                sockets += os.readlink(f"/proc/self/fd/{{fd}}").startswith("socket:")
            except OSError:
                pass  # the directory listing's own descriptor, already closed
        print(threading.active_count(), sockets)
        """
    )
    assert result.stdout.splitlines()[0] == "1 0"
    assert receiver.requests == []


def test_a_script_that_never_flushes_still_delivers(receiver: Receiver) -> None:
    run_script(
        f"""
        import campaign_cart_analytics as cca
        analytics = cca.Analytics({receiver.url!r}, batch_interval_ms=60_000)
        for i in range(25):
            analytics.track("dl_view_item", {{"i": i}})
        cca.configure(endpoint={receiver.url!r})
        cca.track("dl_purchase")
        cca.Analytics({receiver.url!r}).track("dl_anonymous")  # client dropped at once
        """
    )
    events = receiver.delivered_events()
    assert sorted(e.get("i", -1) for e in events) == [-1, -1, *range(25)]
    assert {e["event"] for e in events} == {"dl_view_item", "dl_purchase", "dl_anonymous"}


def test_delivery_at_exit_with_the_endpoint_up_delivers_all_1000(receiver: Receiver) -> None:
    _, exit_latency = run_script(TRACK_1000.format(url=receiver.url, options=""))
    assert len(receiver.delivered_events()) == 1000
    assert exit_latency < 3


@pytest.mark.parametrize("endpoint_down", ["refused", "503"])
def test_exit_is_prompt_when_the_endpoint_is_down(receiver: Receiver, endpoint_down: str) -> None:
    receiver.respond = lambda request: Reply(503)
    url = refused_url() if endpoint_down == "refused" else receiver.url
    result, exit_latency = run_script(TRACK_1000.format(url=url, options=""))
    assert exit_latency < 1.0, exit_latency  # default schedule would wait 1 + 2 + 4 s per batch
    if endpoint_down == "503":
        attempts: dict[str, int] = {}
        for request in receiver.requests:
            batch_id = request.headers["idempotency-key"]
            attempts[batch_id] = attempts.get(batch_id, 0) + 1
        # Every batch is tried; at exit one more attempt each, no retry schedule: a batch
        # first sent (and failed) before exit may show two requests, none shows more.
        assert len(attempts) == 100 and max(attempts.values()) <= 2
    warnings = [line for line in result.stderr.splitlines() if "could not be delivered" in line]
    assert len(warnings) == 1, result.stderr  # logged once
    assert "1000 events" in warnings[0] and "interpreter exit" in warnings[0]


def test_exit_never_waits_longer_than_shutdown_timeout(receiver: Receiver) -> None:
    receiver.respond = lambda request: Reply(202, delay=5)  # accepts, then never answers in time
    result, exit_latency = run_script(
        TRACK_1000.format(url=receiver.url, options=", shutdown_timeout_ms=300")
    )
    assert 0.25 < exit_latency < 1.2, exit_latency
    assert "could not be delivered" in result.stderr


def test_the_sdk_never_prints_without_logging_configured() -> None:
    result, _ = run_script(
        f"""
        import campaign_cart_analytics as cca
        analytics = cca.Analytics({refused_url()!r}, retry_delay_ms=10, max_retries=1, batch_size=1)
        analytics.track("e")
        analytics.flush(timeout=5)
        print(analytics.stats().dropped_delivery)
        """
    )
    assert result.stdout.splitlines()[0] == "1"
    assert result.stderr == ""
