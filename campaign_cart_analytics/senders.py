"""Sender threads: up to ``max_concurrent_requests`` batches in flight at once.

The worker decides what goes out and when; a sender only makes the one
attempt it is handed (``Transport.post``) and hands the ``Answer`` back
through ``on_answer``. One shortcut: while no overload is in force and
nothing waits for a retry, a sender whose batch was delivered asks
``follow_on`` for the next batch (waiting a few milliseconds for one to fill)
and sends it on the same slot, so that on a fast endpoint one thread carries
batch after batch with no hand-off between threads.

Threads start as they are needed, never more than ``size``, and never fewer
than the jobs handed out and not answered, so a due batch never waits behind
a slow request while a slot is free. They share the transport's session and
its pool of kept-alive connections.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Optional

import attrs

from ._logging import logger
from ._threads import mark_as_delivery_thread
from .events import batch_body
from .pending import TakenBatch
from .retry import DeliveryRetry
from .transport import Answer, Transport


@attrs.define(eq=False)
class Job:
    """A batch on its way: what it takes to (re)send it and to judge the answer."""

    batch: TakenBatch
    batch_id: str
    sent_at_ms: int  # with the texts and the id, rebuilds the body byte for byte
    retry: DeliveryRetry
    due: float = 0.0  # when it may go out (again)
    started_at: float = 0.0  # when its last attempt went out
    waiting_since: float = 0.0
    problem: str = ""  # why it waits: the last failure, or the overload
    is_retry: bool = False  # its next attempt counts as a retry (a pause does not)
    overloaded_since: Optional[float] = None  # its first 429/503 (see OVERLOAD_PATIENCE)
    last_chance: bool = False  # a shutdown's deadline: whatever happens, no further attempt
    waited: float = 0.0  # seconds its last attempt waited (on the endpoint, or for the GIL)


class SenderPool:
    def __init__(
        self,
        transport: Transport,
        size: int,
        on_answer: Callable[[Job, Answer], None],
        follow_on: Callable[[Job, Answer], Optional[Job]],
    ) -> None:
        self._transport = transport
        self._size = size
        self._on_answer = on_answer
        self._follow_on = follow_on
        self._jobs: queue.SimpleQueue[Optional[Job]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._unanswered = 0

    def submit(self, job: Job) -> None:
        """Send ``job`` on a free sender thread (the caller keeps within ``size``).

        With one request at a time (``size`` 1) the caller makes the attempt itself: a
        thread of its own would only add a hand-off each way. So does it where no thread
        can be started (at interpreter exit, Python 3.12 and newer refuse new threads).
        """
        with self._lock:
            self._unanswered += 1
            wanted = self._size > 1 and self._unanswered > len(self._threads)
            if wanted and len(self._threads) < self._size:
                self._start_thread()
            inline = not self._threads
            if inline:
                self._unanswered -= 1
        if inline:
            self._on_answer(job, self._post(job))
        else:
            self._jobs.put(job)

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._serve, name="campaign-cart-analytics-sender", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # interpreter shutdown, or no threads left
            logger.debug("No sender thread could be started", exc_info=True)
            return
        self._threads.append(thread)

    def stop(self) -> None:
        """Let every sender thread end once the jobs before this are answered."""
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(None)

    def _serve(self) -> None:
        mark_as_delivery_thread()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            answer = self._post(job)
            # Delivered, and the next batch is ready: send it on this slot at once, without
            # a round trip through the delivery thread (which only hears of exceptions).
            following = self._follow_on(job, answer) if answer.kind == "delivered" else None
            while following is not None:
                job, answer = following, self._post(following)
                following = self._follow_on(job, answer) if answer.kind == "delivered" else None
            with self._lock:
                self._unanswered -= 1
            try:
                self._on_answer(job, answer)
            except Exception:  # pragma: no cover - on_answer only queues
                logger.exception("Unexpected error handing back batch %s", job.batch_id)

    def _post(self, job: Job) -> Answer:
        started, cpu_started = time.monotonic(), time.thread_time()
        try:
            body = batch_body(job.batch.texts, job.batch_id, job.sent_at_ms)
            return self._transport.post(body, job.batch_id)
        except BaseException as exc:  # a bug of ours, or SystemExit from a header callable:
            # the batch is answered (never orphaned) and the thread goes on
            logger.exception("Unexpected error while sending batch %s", job.batch_id)
            return Answer("fatal", problem=f"internal error {type(exc).__name__}")
        finally:  # the attempt's time less this thread's CPU time: what it waited
            job.waited = time.monotonic() - started - (time.thread_time() - cpu_started)
