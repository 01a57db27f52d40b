"""``receive``: run the reference receiver until interrupted.

Without ``--workers``, a threaded server in this process (the demo's, fine for
one machine). With ``--workers N``, gunicorn's master and N worker processes,
each with its own connection pool; several such commands, on other ports or
machines, may share one PostgreSQL database.

A database that does not answer at startup is no error: the receiver starts,
says so on standard error, and answers 503 (``/healthz`` too) until it does,
since a load balancer may start replicas before their database. A bad URL or a
schema newer than this release is an error at once.
"""

from __future__ import annotations

import argparse
import errno
import signal
import socket
import sys
from typing import Any, Callable

from ..receiver import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_RETRY_AFTER,
    LocalServer,
    ReceiverApp,
    StoreUnavailable,
    create_app,
)
from ..receiver.migrations import SchemaTooNew
from ..receiver.store import redact
from ._common import CommandError

NAME = "receive"
HELP = "run the reference receiver: POST /analytics, GET /events, /stats, /healthz"
DEFAULT_DATABASE = "sqlite:///campaign-cart-events.sqlite3"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--database",
        metavar="URL",
        help="sqlite:///PATH or postgresql://USER@HOST:PORT/DB (the postgres extra); "
        f"default {DEFAULT_DATABASE}. A password is never printed; PGPASSWORD keeps it "
        "out of the command line",
    )
    where.add_argument("--db", metavar="PATH", help="a SQLite file (':memory:' for none)")
    parser.add_argument("--token", help="require 'Authorization: Bearer TOKEN'")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument(
        "--workers", type=int, metavar="N", help="serve with N processes under gunicorn"
    )
    parser.add_argument(
        "--threads", type=int, default=4, metavar="N",
        help="requests at once per worker, and its database connections (default 4)",
    )  # fmt: skip
    parser.add_argument(
        "--statement-timeout", type=float, default=5.0, metavar="SECONDS",
        help="answer 503 when the database takes longer (default 5)",
    )  # fmt: skip
    parser.add_argument(
        "--connect-timeout", type=float, default=5.0, metavar="SECONDS",
        help="answer 503 when no database connection comes in time (default 5)",
    )  # fmt: skip
    parser.add_argument(
        "--retry-after", type=int, default=DEFAULT_RETRY_AFTER, metavar="SECONDS",
        help=f"the Retry-After of a 503 (default {DEFAULT_RETRY_AFTER})",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    _check(args)
    database = args.database or args.db or DEFAULT_DATABASE
    make_app = _app_factory(args, database)
    app = _open(make_app, database)
    if args.workers and app.store.in_memory:
        app.store.close()
        raise CommandError("--workers needs a database they share: a SQLite file or PostgreSQL")
    if not args.workers:
        server = _local_server(app, args.host, args.port)
        _announce(server.url, app, "this process")
        return _serve_here(server)
    app.store.close()  # each worker opens its own, after the fork
    listener = _listen(args.host, args.port)  # bound here: port 0 is known before gunicorn
    _announce(
        f"http://{args.host}:{listener.getsockname()[1]}/analytics",
        app,
        f"{args.workers} worker processes (gunicorn)",
    )
    return _serve_with_gunicorn(make_app, listener, args)


def _announce(url: str, app: ReceiverApp, served_by: str) -> None:
    print(f"Listening on {url}", flush=True)
    print(f"Live view on {url.rsplit('/', 1)[0]}/", flush=True)
    _log(f"Storing in {app.store.description}; serving from {served_by}")


def _check(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise CommandError(f"--port must be from 0 to 65535; got {args.port}")
    if args.max_body_bytes < 1:
        raise CommandError(f"--max-body-bytes must be at least 1; got {args.max_body_bytes}")
    if args.workers is not None and not 1 <= args.workers <= 256:
        raise CommandError(f"--workers must be from 1 to 256; got {args.workers}")
    if not 1 <= args.threads <= 256:
        raise CommandError(f"--threads must be from 1 to 256; got {args.threads}")
    for option in ("statement_timeout", "connect_timeout"):
        if not 0 < getattr(args, option) <= 3600:
            flag = "--" + option.replace("_", "-")
            raise CommandError(f"{flag} must be more than 0 and at most 3600 seconds")
    if not 0 <= args.retry_after <= 3600:
        raise CommandError(f"--retry-after must be from 0 to 3600; got {args.retry_after}")


def _app_factory(args: argparse.Namespace, database: str) -> Callable[[], ReceiverApp]:
    def make_app() -> ReceiverApp:
        return create_app(
            database,
            token=args.token,
            max_body_bytes=args.max_body_bytes,
            log=_log,
            pool_size=args.threads,
            statement_timeout=args.statement_timeout,
            connect_timeout=args.connect_timeout,
            retry_after=args.retry_after,
        )

    return make_app


def _open(make_app: Callable[[], ReceiverApp], database: str) -> ReceiverApp:
    """The app, its database migrated if it answers; errors that cannot heal by waiting."""
    shown = redact(database)
    try:
        app = make_app()
    except ValueError as exc:  # a bad URL; the message never holds a password
        raise CommandError(str(exc)) from None
    except Exception as exc:  # sqlite3 cannot open the file
        raise CommandError(f"cannot open database {shown!r}: {exc}") from None
    try:
        app.store.check()
    except SchemaTooNew as exc:
        app.store.close()
        raise CommandError(str(exc)) from None
    except StoreUnavailable as exc:
        _log(f"The database does not answer yet ({exc}); answering 503 until it does")
    return app


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(2048)
    except OSError as exc:
        raise _listen_error(exc, host, port) from None
    return listener


def _local_server(app: ReceiverApp, host: str, port: int) -> LocalServer:
    try:
        return LocalServer(app, host, port)
    except OSError as exc:
        app.store.close()
        raise _listen_error(exc, host, port) from None


def _listen_error(exc: OSError, host: str, port: int) -> CommandError:
    if exc.errno == errno.EADDRINUSE:
        return CommandError(f"port {port} on {host} is already in use")
    return CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def _serve_here(server: LocalServer) -> int:
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _serve_with_gunicorn(
    make_app: Callable[[], ReceiverApp], listener: socket.socket, args: argparse.Namespace
) -> int:
    try:
        from ..receiver.workers import serve
    except ImportError:
        raise CommandError("--workers needs gunicorn: pip install gunicorn") from None
    return serve(make_app, listener, workers=args.workers, threads=args.threads)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _stop(*_: Any) -> None:
    raise KeyboardInterrupt
