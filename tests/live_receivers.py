"""Receivers for the live view's tests, and how the tests post to them.

``ReceiveCommand`` runs ``campaign-cart-analytics receive`` in a subprocess.

``PagedReceiver`` serves the page, and ``/events`` and ``/stats`` by contract:
``PagedReceiver(cursor=True)`` speaks the paging contract: ``GET /events?limit=N``
answers the latest N events oldest first, ``?after=CURSOR&limit=N`` those received
after the cursor, and every answer carries ``next``. ``cursor=False`` speaks as a
receiver without paging: the latest N, no ``next``, ``after`` ignored. Events are
added straight into memory (``add``); ``fail_with`` makes every answer of
``failing_paths`` an error until it is cleared; ``stats_take`` slows ``/stats`` down.
So the page's two ways of polling and its handling of a failing receiver are tested
whatever the reference receiver speaks.
"""

from __future__ import annotations

import json
import re
import signal
import socketserver
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from campaign_cart_analytics.receiver import live


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class PagedReceiver:
    def __init__(self, *, cursor: bool) -> None:
        self.cursor = cursor
        self.fail_with: Optional[int] = None
        self.failing_paths = ("/events", "/stats")  # those that fail_with fails
        self.stats_take = 0.0  # seconds GET /stats takes, as counting a big store does
        self.stats_asked = 0
        self.queries: list[dict[str, str]] = []  # of each GET /events, in order
        self._events: list[dict[str, Any]] = []  # position i + 1 is the cursor after event i
        self._lock = threading.Lock()
        self._server = make_server("127.0.0.1", 0, self, _Server, _QuietHandler)
        self.base = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> PagedReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, *events: dict[str, Any]) -> None:
        with self._lock:
            self._events.extend(events)

    def reset(self) -> None:
        """Forget every event, as a receiver restarted on an empty store would."""
        with self._lock:
            self._events.clear()

    def restart_with(self, *events: dict[str, Any]) -> None:
        """Forget every event and hold ``events`` at once: a receiver restarted on an empty
        store that was sent these before the page looked again."""
        with self._lock:
            self._events[:] = events

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        if path in live.PATHS:
            return live.serve(environ, start_response)
        if self.fail_with is not None and path in self.failing_paths:
            return _json(start_response, self.fail_with, {"error": "the store is down"})
        if path == "/stats":
            with self._lock:
                self.stats_asked += 1  # as asked, before the answer
            time.sleep(self.stats_take)
            with self._lock:
                return _json(start_response, 200, {"events": len(self._events), "batches": 0,
                             "duplicates": 0, "rejected_requests": 0, "by_event": {}})  # fmt: skip
        query = {name: values[0] for name, values in parse_qs(environ["QUERY_STRING"]).items()}
        with self._lock:
            self.queries.append(query)
            return _json(start_response, 200, self._page(query))

    def _page(self, query: dict[str, str]) -> dict[str, Any]:
        limit, name = int(query["limit"]), query.get("event")
        numbered = [
            (position, event)
            for position, event in enumerate(self._events, start=1)
            if name is None or event["event"] == name
        ]
        if not self.cursor:
            return {"events": [event for _, event in numbered[-limit:]]}
        if "after" in query:
            page = [(p, e) for p, e in numbered if p > int(query["after"])][:limit]
            end = page[-1][0] if page else int(query["after"])
        else:
            page, end = numbered[-limit:], len(self._events)
        return {"events": [event for _, event in page], "next": str(end)}


def _json(start_response: Callable[..., Any], status: int, body: Any) -> list[bytes]:
    payload = json.dumps(body).encode()
    start_response(
        f"{status} X",
        [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))],
    )
    return [payload]


class ReceiveCommand:
    """``campaign-cart-analytics receive`` in a subprocess; its log goes to a file."""

    def __init__(self, log: Path, *args: str, port: int = 0) -> None:
        self.log = log
        with log.open("a") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "campaign_cart_analytics", "receive",
                 "--host", "127.0.0.1", "--port", str(port), *args],
                stdout=subprocess.PIPE, stderr=stderr, text=True,
            )  # fmt: skip
        assert self.process.stdout is not None
        first_line = self.process.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:([0-9]+)/", first_line)
        assert found, f"{first_line!r}; log: {log.read_text()}"
        self.port = int(found.group(1))
        self.base = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.communicate(timeout=10)


def event(name: str, **properties: Any) -> dict[str, Any]:
    return {"event": name, "event_id": f"live_{uuid.uuid4().hex[:12]}",
            "event_time": "2026-12-02T18:30:00.123Z", **properties}  # fmt: skip


def post(base: str, events: list[dict[str, Any]], token: Optional[str] = None) -> int:
    """POST a batch in the wire format; the status."""
    body = {"events": events, "batch_info": {"size": len(events), "source": "next-campaign-cart",
            "timestamp": "2026-12-02T18:30:01.000Z", "batch_id": f"b_{uuid.uuid4().hex}"}}  # fmt: skip
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"{base}/analytics", data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
