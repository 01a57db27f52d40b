"""Which threads deliver: user code they run (``on_error``, header callables) must not wait
for them, or a ``flush()`` inside ``on_error`` would wait for itself for ever."""

from __future__ import annotations

import threading

_marks = threading.local()


def mark_as_delivery_thread() -> None:
    _marks.delivering = True


def in_delivery_thread() -> bool:
    return getattr(_marks, "delivering", False)
