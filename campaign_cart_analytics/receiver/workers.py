"""The receiver served by several processes: gunicorn's master and its workers.

``receive --workers N`` binds the listening socket itself (so that port 0 is
known and printed before anything forks) and hands it to gunicorn, whose
master forks N workers. Each worker builds its own app, so each has its own
database connections: a pool opened after the fork, never shared with
another process. Workers are gunicorn's ``gthread`` kind: ``threads`` requests
at once each, over kept-alive connections, as the SDK sends them.

The master restarts a worker that dies, and stops them all gracefully on
SIGTERM (requests in progress finish) or at once on SIGINT.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]

from .app import ReceiverApp


class _Application(BaseApplication):  # type: ignore[misc]  # gunicorn has no type hints
    def __init__(self, make_app: Callable[[], ReceiverApp], settings: dict[str, Any]) -> None:
        self._make_app = make_app
        self._settings = settings
        super().__init__()

    def load_config(self) -> None:
        for name, value in self._settings.items():
            self.cfg.set(name, value)

    def load(self) -> ReceiverApp:
        """Called in each worker after the fork: its own app, store and pool."""
        return self._make_app()


def serve(
    make_app: Callable[[], ReceiverApp], listener: socket.socket, *, workers: int, threads: int
) -> int:
    """Serve apps from ``make_app`` on ``listener`` with ``workers`` processes until stopped;
    the exit code."""
    listener.set_inheritable(True)
    settings = {
        "bind": [f"fd://{listener.fileno()}"],
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "keepalive": 5,
        "timeout": 60,  # a worker silent this long is restarted; requests end far sooner
        "graceful_timeout": 10,
        "loglevel": "warning",  # the app logs one line per request itself
        "proc_name": "campaign-cart-analytics receive",
    }
    try:
        _Application(make_app, settings).run()
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else 1
    return 0
