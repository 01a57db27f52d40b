"""What a client owns in one process: its queue, delivery thread, HTTP session and logs.

None of it may cross ``os.fork()``: a thread does not survive it, a lock may be copied
held, and a connection shared by two processes mixes their requests. A forked child
therefore builds a fresh ``ProcessState`` (``Analytics._reset_for_new_process``) and
sends only what it tracks itself; what the parent queued stays the parent's to send.
"""

from __future__ import annotations

import os
import threading
from typing import Optional

from ._logging import RateLimitedLog, logger
from .config import Config
from .pending import PendingEvents
from .shutdown_clock import ShutdownClock
from .spool import SpooledEvents
from .transforming import EventTransform
from .transport import Transport
from .worker import Worker

#: How often the same warning (queue full, transform failing) may be logged, in seconds.
WARNING_INTERVAL = 10.0


class ProcessState:
    """A client's delivery machinery in this process; see the module's docstring."""

    def __init__(self, config: Config) -> None:
        self.pid = os.getpid()
        self.pending: PendingEvents
        if config.spool_path is not None:  # durable: the worker drains it the same way
            self.pending = SpooledEvents(config)
        else:
            self.pending = PendingEvents(
                batch_size=config.batch_size,
                max_size=config.max_queue_size,
                interval=config.batch_interval_ms / 1000,
            )
        self.clock = ShutdownClock()
        self.transport = Transport(config, self.clock)
        self.worker = Worker(config, self.pending, self.transport, self.clock)
        self.transform = EventTransform(config, RateLimitedLog(WARNING_INTERVAL))
        self.queue_full_log = RateLimitedLog(WARNING_INTERVAL)
        self.thread: Optional[threading.Thread] = None
        self.thread_running = threading.Event()  # cheaper for track() than thread.is_alive()
        self._start_lock = threading.Lock()

    def start_worker(self) -> bool:
        """Start the delivery thread unless it runs; True when this call started it.

        A thread that ended (a bug in the worker, say) is replaced, with a warning.
        """
        with self._start_lock:
            if self.thread_running.is_set():
                return False
            if self.thread is not None:
                logger.warning("The delivery thread had stopped; starting a new one")
            thread = threading.Thread(
                target=self._deliver, name="campaign-cart-analytics", daemon=True
            )
            self.thread_running.set()
            try:
                thread.start()
            except RuntimeError:  # no threads at interpreter shutdown, or none left
                self.thread_running.clear()
                logger.exception("Cannot start the delivery thread; events stay queued")
                return False
            self.thread = thread
            return True

    def _deliver(self) -> None:
        """The delivery thread's body: the worker's loop, and a mark when it ends, however."""
        try:
            self.worker.run()
        except BaseException:  # the loop takes every Exception; this one is not (SystemExit)
            logger.exception(
                "The delivery thread ended; what is queued waits for the next track() or flush()"
            )
            raise
        finally:
            self.thread_running.clear()
