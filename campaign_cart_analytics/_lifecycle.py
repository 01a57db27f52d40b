"""Process life: the interpreter-exit flush and fresh state after ``os.fork()``.

Every client with a running worker is kept here (strongly: a script that
does ``Analytics(...).track(...)`` and drops the client must still deliver).
At interpreter exit all of them are shut down together, each bounded by its
own ``shutdown_timeout_ms``; this is the browser SDK's page-unload flush.

After ``os.fork()`` every client in the child drops its parent's queue,
thread, locks and HTTP session and starts afresh at its next ``track()``.

Some pools end a forked child with ``os._exit``, so ``atexit`` never runs
there. ``multiprocessing`` runs its own finalizers first, and Celery's
prefork pool sends ``worker_process_shutdown``: the child's clients are
flushed from those instead.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from ._logging import logger
from .write_off import WriteOffReports

if TYPE_CHECKING:
    from .client import Analytics

_lock = threading.Lock()
_running: set[Analytics] = set()
_all_clients: weakref.WeakSet[Analytics] = weakref.WeakSet()
_hooks_installed = False


def created(client: Analytics) -> None:
    """Note a new client, so that a fork can reset it."""
    global _hooks_installed
    with _lock:
        _all_clients.add(client)
        if not _hooks_installed:
            atexit.register(shutdown_all_at_exit)
            if hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=_after_fork_in_child)
            _hooks_installed = True
    _flush_when_a_celery_child_exits()


def started(client: Analytics) -> None:
    with _lock:
        _running.add(client)


def stopped(client: Analytics) -> None:
    with _lock:
        _running.discard(client)


def shutdown_all_at_exit() -> None:
    """Shut every running client down at once, each within its ``shutdown_timeout_ms``."""
    with _lock:
        clients = list(_running)
    now = time.monotonic()
    deadlines = [now + client.config.shutdown_timeout_ms / 1000 for client in clients]
    for client, deadline in zip(clients, deadlines):
        client._begin_shutdown(waits_until=now, gives_up_at=deadline)
    reports = WriteOffReports(last_deadline=max(deadlines, default=now))  # one for all
    for client, deadline in zip(clients, deadlines):
        try:
            client._finish_shutdown(
                gives_up_at=deadline, reason="interpreter exit", reports=reports
            )
        except BaseException:  # one client's trouble must not leave the others' events unsaid
            logger.exception("Shutting a client down at exit failed; the others go on")
    reports.wait()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # the parent's may have been held by another thread
    _running.clear()
    for client in list(_all_clients):
        client._reset_for_new_process()
    _flush_when_a_pool_child_exits()
    _flush_when_a_celery_child_exits()


class _ForkToken:
    """A live object to key ``register_after_fork`` on (it holds only weak references)."""


_FORK_TOKEN = _ForkToken()


def _flush_when_a_pool_child_exits() -> None:
    # A multiprocessing child clears its finalizers right after the fork, then
    # runs the after-fork hooks: register the exit flush from one of those.
    util = sys.modules.get("multiprocessing.util")
    if util is None:
        return

    def register_finalizer(_token: object) -> None:
        util.Finalize(None, shutdown_all_at_exit, exitpriority=10)

    util.register_after_fork(_FORK_TOKEN, register_finalizer)


def _flush_when_a_celery_child_exits() -> None:
    # Celery's prefork children leave through os._exit, past atexit and the
    # multiprocessing finalizers, but send this signal just before.
    signals = sys.modules.get("celery.signals")
    if signals is not None:
        signals.worker_process_shutdown.connect(
            _on_celery_worker_process_shutdown, weak=False, dispatch_uid=__name__
        )


def _on_celery_worker_process_shutdown(**_signal_arguments: Any) -> None:
    shutdown_all_at_exit()
