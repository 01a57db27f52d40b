"""The gate every call into SQLite holds, and what a fork does to open spool connections.

SQLite's own global mutexes must not be held by another thread at the moment
of ``fork()``, or the child's first connection hangs: every ``SpoolRows``
method that calls into SQLite holds ``gate`` (``@gated``), and a fork waits
for it. In the child, every connection inherited from the parent is retired:
kept alive and never used, since closing it could disturb the parent's locks.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import weakref
from typing import Any, Callable, Protocol, TypeVar


class Retirable(Protocol):
    def retire(self) -> None: ...


live: weakref.WeakSet[Retirable] = weakref.WeakSet()  # open SpoolRows: retired in a forked child
inherited: list[sqlite3.Connection] = []  # connections no code path uses any more
_gate = threading.RLock()  # held around every call into SQLite; a fork waits for it

_Method = TypeVar("_Method", bound=Callable[..., Any])


def gated(method: _Method) -> _Method:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        with _gate:
            return method(*args, **kwargs)

    return call  # type: ignore[return-value]


def _before_fork() -> None:
    _gate.acquire()


def _after_fork_in_parent() -> None:
    _gate.release()


def _after_fork_in_child() -> None:
    global _gate
    _gate = threading.RLock()
    for rows in list(live):
        rows.retire()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
