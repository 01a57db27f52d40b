"""The reference receiver: a WSGI app that accepts, validates and stores batches.

    from campaign_cart_analytics.receiver import create_app, serve
    app = create_app("sqlite:///events.sqlite3", token="s3cret")  # any WSGI server
    app = create_app("postgresql://shop@db:5432/analytics")        # shared by many workers
    server = serve(app, host="127.0.0.1", port=0)                  # or a local threaded one
    server.url  # 'http://127.0.0.1:PORT/analytics'

See ``app`` for what it checks and answers and ``store`` for where it keeps
it. ``campaign-cart-analytics receive`` runs it from the command line, with
``--workers N`` under gunicorn.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import sys
import threading
from typing import IO, Any, Callable, Optional, cast
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer, make_server

from .app import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_RETRY_AFTER,
    READ_TIMEOUT_KEY,
    BatchError,
    ReceiverApp,
    parse_body,
    validate_batch,
)
from .sqlite_store import SQLiteStore
from .store import EventQuery, Page, Position, Store, StoreUnavailable, open_store

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_RETRY_AFTER",
    "BatchError",
    "LocalServer",
    "ReceiverApp",
    "EventQuery",
    "Page",
    "Position",
    "SQLiteStore",
    "Store",
    "StoreUnavailable",
    "open_store",
    "create_app",
    "parse_body",
    "serve",
    "validate_batch",
]


def create_app(
    database: str = ":memory:",
    *,
    db_path: Optional[str] = None,
    token: Optional[str] = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    log: Optional[Callable[[str], None]] = None,
    pool_size: int = 4,
    statement_timeout: float = 5.0,
    connect_timeout: float = 5.0,
    retry_after: int = DEFAULT_RETRY_AFTER,
) -> ReceiverApp:
    """A receiver storing into ``database``: ``sqlite:///PATH``, ``postgresql://USER@HOST:PORT/DB``
    or a SQLite path (``db_path`` is its older name); in memory by default.

    ``read_timeout`` (seconds) is how long ``LocalServer`` waits for each read
    from a client before answering 408 and closing; under another WSGI server,
    that server's own timeout applies. ``pool_size`` (connections in this
    process), ``statement_timeout`` and ``connect_timeout`` (seconds) are for
    PostgreSQL; past them a request is answered 503 with ``Retry-After:
    retry_after``. A PostgreSQL server that is not up yet is no error: the app
    answers 503 until it is.
    """
    return ReceiverApp(
        open_store(
            database if db_path is None else db_path,
            pool_size=pool_size,
            statement_timeout=statement_timeout,
            connect_timeout=connect_timeout,
        ),
        token=token,
        max_body_bytes=max_body_bytes,
        read_timeout=read_timeout,
        log=log,
        retry_after=retry_after,
    )


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    read_timeout = DEFAULT_READ_TIMEOUT


class _QuietServerHandler(ServerHandler):
    request_handler: WSGIRequestHandler

    def handle_error(self) -> None:
        """A client gone or too slow while the answer is written: nothing to log, no 500."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error()  # a bug in the app: the traceback and a 500 are what helps


class _Handler(WSGIRequestHandler):
    """One request per connection, a timeout on every read, and errors as JSON.

    ``WSGIRequestHandler`` would wait forever for a silent client, print a
    traceback when a read fails, and answer a malformed request line in HTML.
    """

    def setup(self) -> None:
        self.read_timeout = cast(_ThreadingWSGIServer, self.server).read_timeout
        self.request.settimeout(self.read_timeout)
        self.requestline, self.request_version, self.command = "", "", ""  # until one is read
        super().setup()

    def handle(self) -> None:
        try:
            self._handle_one()
        except (socket.timeout, TimeoutError):
            self._answer_quietly(408, f"the request did not arrive within {self.read_timeout:g} s")
        except OSError:
            pass  # the client went away: nobody to answer

    def _handle_one(self) -> None:
        """``WSGIRequestHandler.handle``, with a ``ServerHandler`` that keeps quiet."""
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.send_error(414)
            return
        if not self.parse_request():
            return  # an error was sent
        app = cast(WSGIServer, self.server).get_app()
        assert app is not None  # LocalServer always has one
        handler = _QuietServerHandler(
            self.rfile, cast(IO[bytes], self.wfile), self.get_stderr(), self.get_environ()
        )
        handler.request_handler = self  # for its log line
        handler.run(app)

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()
        environ[READ_TIMEOUT_KEY] = self.read_timeout
        return environ

    def send_error(
        self, code: int, message: Optional[str] = None, explain: Optional[str] = None
    ) -> None:
        """An error found before the app runs (a malformed request line, huge headers), as JSON."""
        if self.request_version in ("", "HTTP/0.9"):
            self.request_version = "HTTP/1.0"  # so that the status line and headers are sent
        short = self.responses.get(code, ("Error", ""))[0]
        text = message or short
        body = json.dumps({"success": False, "error": text[:200]}).encode()
        self.send_response(code, short)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True

    def _answer_quietly(self, code: int, message: str) -> None:
        with contextlib.suppress(OSError):  # not writable either: nobody to answer
            self.send_error(code, message)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the app logs one line per request itself, when asked to


class LocalServer:
    """A threaded local server for a receiver app, running in a background thread.

    ``read_timeout`` (seconds; by default the app's) bounds each read from a
    client, so that a client that stops sending holds a thread that long at most.
    """

    def __init__(
        self, app: ReceiverApp, host: str, port: int, *, read_timeout: Optional[float] = None
    ) -> None:
        self.app = app
        self.read_timeout = app.read_timeout if read_timeout is None else read_timeout
        if not self.read_timeout > 0:
            raise ValueError(f"read_timeout must be a positive number of seconds: {read_timeout}")
        self._server = make_server(
            host, port, app, server_class=_ThreadingWSGIServer, handler_class=_Handler
        )
        self._server.read_timeout = self.read_timeout
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


def serve(
    app: ReceiverApp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    read_timeout: Optional[float] = None,
) -> LocalServer:
    """Serve ``app`` on ``host:port`` (0 picks a free port) from a background thread."""
    return LocalServer(app, host, port, read_timeout=read_timeout).start()
