"""A programmable HTTP receiver on 127.0.0.1 for delivery tests.

Each request is recorded with its arrival time (``time.monotonic()``),
headers and body. What it answers is decided per request by ``respond``, a
callable given the recorded request and returning a ``Reply``; the default
answers 202. Scripted sequences: ``receiver.script(Reply(503), Reply(503))``
answers those in order, then falls back to the default.
"""

from __future__ import annotations

import collections
import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import attrs


@attrs.frozen
class Reply:
    status: int = 202
    headers: dict[str, str] = attrs.field(factory=dict)
    body: bytes = b""
    delay: float = 0.0  # seconds to wait before answering
    cut_body: bool = False  # promise a longer body, send part of it, then close the connection


@attrs.frozen
class Received:
    at: float
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    ok: bool = True  # answered 2xx

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self.json["events"])


class Receiver:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Received] = []
        self.respond: Callable[[Received], Reply] = lambda request: Reply()
        self._scripted: collections.deque[Reply] = collections.deque()
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                request = Received(
                    at=time.monotonic(),
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self.rfile.read(length),
                )
                reply = receiver._reply_for(request)
                request = attrs.evolve(request, ok=200 <= reply.status < 300)
                with receiver._changed:
                    receiver.requests.append(request)
                    receiver._changed.notify_all()
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    promised = len(reply.body) + (1000 if reply.cut_body else 0)
                    self.send_header("Content-Length", str(promised))
                    self.end_headers()
                    self.wfile.write(reply.body)
                    if reply.cut_body:
                        self.wfile.flush()
                        self.close_connection = True
                except OSError:
                    pass  # the client gave up (timeout); nothing to answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        scheme = "http" if tls is None else "https"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_port}/analytics"

    def _reply_for(self, request: Received) -> Reply:
        with self._changed:
            if self._scripted:
                return self._scripted.popleft()
        return self.respond(request)

    def script(self, *replies: Reply) -> None:
        with self._changed:
            self._scripted.extend(replies)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[Received]:
        with self._changed:
            self._changed.wait_for(lambda: len(self.requests) >= count, timeout)
            return list(self.requests)

    def delivered_events(self) -> list[dict[str, Any]]:
        """Events of the requests answered 2xx, in arrival order."""
        with self._changed:
            return [e for request in self.requests if request.ok for e in request.events]

    def delivered_in_tracking_order(self) -> list[dict[str, Any]]:
        """Delivered events by the order they were tracked in (requests may overtake each
        other): the counter in ``<session>_<n>_<ms>`` ids counts up in each process."""
        return sorted(self.delivered_events(), key=lambda e: int(e["event_id"].split("_")[-2]))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def free_port() -> int:
    """A loopback port nothing listens on (the OS just handed it out and took it back)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def refused_url() -> str:
    """A loopback URL where nothing listens: connecting is refused at once."""
    return f"http://127.0.0.1:{free_port()}/analytics"
