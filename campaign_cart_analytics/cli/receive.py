"""``receive``: run the reference receiver locally until interrupted."""

from __future__ import annotations

import argparse
import errno
import signal
import sys
from typing import Any

from ..receiver import DEFAULT_MAX_BODY_BYTES, LocalServer, create_app
from ._common import CommandError

NAME = "receive"
HELP = "run the reference receiver: POST /analytics, GET /events, GET /stats"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument(
        "--db", default="campaign-cart-events.sqlite3", help="SQLite file (':memory:' for none)"
    )
    parser.add_argument("--token", help="require 'Authorization: Bearer TOKEN'")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise CommandError(f"--port must be from 0 to 65535; got {args.port}")
    if args.max_body_bytes < 1:
        raise CommandError(f"--max-body-bytes must be at least 1; got {args.max_body_bytes}")
    try:
        app = create_app(args.db, token=args.token, max_body_bytes=args.max_body_bytes, log=_log)
    except Exception as exc:  # sqlite3 cannot open the file
        raise CommandError(f"cannot open database {args.db!r}: {exc}") from None
    try:
        server = LocalServer(app, args.host, args.port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CommandError(f"port {args.port} on {args.host} is already in use") from None
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    print(f"Listening on {server.url}", flush=True)
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _stop(*_: Any) -> None:
    raise KeyboardInterrupt
