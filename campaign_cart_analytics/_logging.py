"""The package logger and a rate limit for warnings that could repeat per event.

The SDK never prints. Everything goes to the ``campaign_cart_analytics``
logger, which has a ``NullHandler`` so that an application without logging
configured hears nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

logger = logging.getLogger("campaign_cart_analytics")
logger.addHandler(logging.NullHandler())


class RateLimitedLog:
    """Logs a message at most once per ``interval`` seconds, counting what it held back.

    Used for conditions that can happen on every ``track()`` call (a full
    queue, a broken transform): the first occurrence is logged at once, later
    ones are summed and reported with the next message let through.
    """

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._next_at = 0.0
        self._suppressed = 0

    def log(self, level: int, msg: str, *args: Any, exc_info: Any = None) -> bool:
        """Log unless one was logged less than ``interval`` ago; True when it was logged."""
        now = time.monotonic()
        with self._lock:
            if now < self._next_at:
                self._suppressed += 1
                return False
            suppressed, self._suppressed = self._suppressed, 0
            self._next_at = now + self._interval
        if suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        logger.log(level, msg, *args, exc_info=exc_info)
        return True
