"""What a shutdown that ran out of time hands to ``on_error``, and how long it waits for it.

The events a shutdown writes off go to ``on_error`` in a thread of its own, and the
shutdown waits for that call, and for any the delivery thread is making, until one
deadline: REPORT_GRACE after the write-off. At interpreter exit every client's reports
start first and share one such deadline (REPORT_GRACE after the last client's), so that
neither one slow callback nor many clients hold the process past its bound. Python 3.12
starts no thread at interpreter exit: there the call is made inline, unbounded.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ._logging import logger
from ._threads import mark_as_delivery_thread
from .config import Config
from .pending import PendingEvents
from .worker import report_error

#: At a shutdown that ran out of time, how long to let on_error calls finish: those already
#: under way in the delivery thread (at exit it would be cut off half way), and the one told
#: of what is written off (a slow callback must not hold the process past its bound).
REPORT_GRACE = 1.0


class WriteOffReports:
    def __init__(self, last_deadline: float) -> None:
        """Reports let go REPORT_GRACE after ``last_deadline`` (a shutdown's, or at exit
        the last client's)."""
        self.until = last_deadline + REPORT_GRACE
        self._calls: list[threading.Thread] = []
        self._pending: list[PendingEvents] = []

    def start(self, config: Config, events: list[dict[str, Any]], error: BaseException) -> None:
        """Call ``on_error(events, error)`` in a thread of its own, or inline where none starts."""
        if config.on_error is None:
            return
        call = threading.Thread(
            target=_report_as_delivery, args=(config, events, error),
            name="campaign-cart-analytics-report", daemon=True,
        )  # fmt: skip
        try:
            call.start()
        except RuntimeError:  # Python 3.12 at interpreter exit
            try:
                report_error(config, events, error)
            except BaseException:  # SystemExit: the shutdown (of other clients too) goes on
                logger.exception("on_error callback raised; the shutdown goes on")
            return
        self._calls.append(call)

    def include(self, pending: PendingEvents) -> None:
        """Wait for the on_error calls its delivery thread is making, too."""
        self._pending.append(pending)

    def wait(self) -> None:
        """Wait for every call until the deadline; say which ones the shutdown leaves behind."""
        for pending in self._pending:
            pending.wait_for_reports(max(0.0, self.until - time.monotonic()))
        for call in self._calls:
            call.join(max(0.0, self.until - time.monotonic()))
        left = sum(call.is_alive() for call in self._calls)
        if left:
            logger.warning(
                "%d on_error call(s) still running at the shutdown's bound; it goes on "
                "without them",
                left,
            )


def _report_as_delivery(config: Config, events: list[dict[str, Any]], error: BaseException) -> None:
    """``report_error`` in a thread that stands in for the delivery thread: what the callback
    raises, SystemExit included, is logged, and a flush() inside it does not wait."""
    mark_as_delivery_thread()
    report_error(config, events, error)
