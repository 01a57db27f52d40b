"""Small checks shared by the tests."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Optional

import campaign_cart_analytics as cca


def assert_balanced(stats: cca.Stats) -> None:
    """Every tracked event is in exactly one bucket (SPEC section 8); with a spool, events
    taken over from the file come in as ``recovered``, and leave as ``spooled_at_exit``."""
    buckets = stats.queued + stats.delivered + stats.filtered + stats.dropped
    assert stats.tracked + stats.recovered == buckets + stats.spooled_at_exit, stats


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition`` every 5 ms until it holds or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class Errors:
    """An ``on_error`` that keeps what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[dict[str, Any]], BaseException]] = []

    def __call__(self, events: list[dict[str, Any]], error: BaseException) -> None:
        self.calls.append((events, error))

    @property
    def events(self) -> list[dict[str, Any]]:
        return [event for events, _ in self.calls for event in events]


def http_json(
    url: str, body: Optional[bytes] = None, method: Optional[str] = None
) -> tuple[int, dict[str, str], Any]:
    """One request to a receiver: its status, headers and JSON body (None when empty),
    4xx and 5xx included."""
    request = urllib.request.Request(url, data=body, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, headers, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, headers, raw = error.code, dict(error.headers), error.read()
    return status, headers, json.loads(raw) if raw else None


class RawServer:
    """A loopback TCP server for cases that need exact bytes: each connection is handed to
    ``handle`` on a thread of its own; ``close()`` stops taking new ones and sets ``stop``."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/analytics"
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.listener.close()
