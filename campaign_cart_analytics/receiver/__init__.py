"""The reference receiver: a WSGI app that accepts, validates and stores batches.

    from campaign_cart_analytics.receiver import create_app, serve
    app = create_app(db_path="events.sqlite3", token="s3cret")     # any WSGI server
    server = serve(app, host="127.0.0.1", port=0)                  # or a local threaded one
    server.url  # 'http://127.0.0.1:PORT/analytics'

See ``app`` for what it checks and answers. ``campaign-cart-analytics
receive`` runs it from the command line.
"""

from __future__ import annotations

import socketserver
import threading
from typing import Any, Callable, Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .app import DEFAULT_MAX_BODY_BYTES, BatchError, ReceiverApp, validate_batch
from .store import Store

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "BatchError",
    "LocalServer",
    "ReceiverApp",
    "Store",
    "create_app",
    "serve",
    "validate_batch",
]


def create_app(
    db_path: str = ":memory:",
    *,
    token: Optional[str] = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    log: Optional[Callable[[str], None]] = None,
) -> ReceiverApp:
    """A receiver storing into the SQLite database at ``db_path`` (in memory by default)."""
    return ReceiverApp(Store(db_path), token=token, max_body_bytes=max_body_bytes, log=log)


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # the app logs one line per request itself, when asked to


class LocalServer:
    """A threaded local server for a receiver app, running in a background thread."""

    def __init__(self, app: ReceiverApp, host: str, port: int) -> None:
        self.app = app
        self._server = make_server(
            host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self.host = host
        self.port = self._server.server_port
        self.url = f"http://{host}:{self.port}/analytics"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> LocalServer:
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.app.store.close()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve(app: ReceiverApp, host: str = "127.0.0.1", port: int = 0) -> LocalServer:
    """Serve ``app`` on ``host:port`` (0 picks a free port) from a background thread."""
    return LocalServer(app, host, port).start()
