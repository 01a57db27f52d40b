"""The events a client has accepted and not yet delivered or dropped.

``PendingEvents`` is the one piece of state shared by the threads that call
``track()``/``flush()``/``shutdown()`` and the client's background worker. One
lock guards the queue, the counters and the flush waiters together, so an
event's sequence number, its place in the queue and its count in ``stats()``
change in one step.

Why not ``queue.Queue``: its ``put``/``get`` lock and notify once per item,
while the worker wants whole batches and needs waking only when a batch is
due (the first event of a batch arrives, ``batch_size`` is reached, a flush
is asked for). OpenTelemetry's batch processor makes the same choice.

Sequence numbers make ``flush()`` exact. Events are numbered in queue order
and a batch holds consecutive numbers. Batches may settle out of order (one
waiting to retry is overtaken by the next), so settled ranges above the
contiguous watermark ``settled_through`` are kept until the gap closes; then
"everything queued before this call has been settled" is
``settled_through >= the last number given out at the call``.

Losses are reported once (SPEC section 7). Every event lost (a rejected
batch, a full queue, a failing transform, a shutdown that ran out of time;
filtered events are not losses) adds to ``losses``. The first ``flush()`` or
shutdown that completes after a loss returns False and moves ``reported`` up
to ``losses``; a flush that times out leaves it, so the loss it could not
see is reported by a later one.

Batches the worker has taken and not settled are kept by their first
sequence number, so that a shutdown that runs out of time can count and
hand over every one of their events, in flight or parked for a retry.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Optional

import attrs

from .stats import COUNTERS, Stats


@attrs.frozen
class TakenBatch:
    """Events the worker took off the queue: their texts and their sequence numbers."""

    first_seq: int
    texts: list[bytes]  # each event's UTF-8 JSON, encoded once in track()

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.texts) - 1

    def halves(self) -> tuple[TakenBatch, TakenBatch]:
        half = len(self.texts) // 2
        return (
            TakenBatch(self.first_seq, self.texts[:half]),
            TakenBatch(self.first_seq + half, self.texts[half:]),
        )


@attrs.define(eq=False)  # each waiter is its own: two equal ones must not be confused
class _FlushWaiter:
    target_seq: int
    done: bool = False
    rows_through: int = 0  # the spool's: rows its events were moved to meanwhile


class PendingEvents:
    """A FIFO of encoded events with exact accounting of their fates.

    ``max_size`` bounds every event pending, in the queue or taken by the
    worker and not yet settled (in flight, or parked for a retry).

    ``batch_size`` and ``interval`` (seconds) decide when ``take_ready`` hands
    the worker a batch: when ``batch_size`` events wait, when the oldest has
    waited ``interval``, when a flush covers it, or at once while closing.
    """

    def __init__(self, *, batch_size: int, max_size: int, interval: float) -> None:
        self._batch_size = batch_size
        self._max_size = max_size
        self._interval = interval
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)  # the worker waits on this
        self._settled = threading.Condition(self._lock)  # flush() and shutdown() wait on this
        self._for_senders = threading.Condition(self._lock)  # idle senders wait on this
        self._items: collections.deque[tuple[bytes, float]] = collections.deque()
        self._taken: dict[int, TakenBatch] = {}  # taken by the worker, not settled; by first_seq
        self._head_seq = 1  # sequence number of self._items[0]
        self._last_seq = 0  # last sequence number given out
        self._settled_through = 0  # every event up to here is settled
        self._settled_above: dict[int, int] = {}  # first -> last seq of ranges settled beyond it
        self._flush_through = 0
        self._closing = False
        self._interrupts = 0  # bumped to make a waiting worker return and re-plan
        self._worker_wants_batch = False  # waiting for a batch: put() may wake it
        self._senders_waiting = 0  # senders waiting for a batch to follow on with
        self._waiters: list[_FlushWaiter] = []
        self._reporting = 0  # batches counted as dropped whose on_error call has not returned
        self._losses = 0  # events lost so far
        self._reported_losses = 0  # of those, how many a completed flush or shutdown reported
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._last_error: Optional[str] = None

    # ------------------------------------------------------------ track() side

    def put(self, text: bytes) -> Optional[str]:
        """Queue one encoded event; None when queued, else the counter it was dropped under."""
        with self._lock:  # the bare lock: cheaper to enter than its Condition, same lock
            return self._enqueue(text, self._counts["queued"])

    def _enqueue(self, text: bytes, held: int) -> Optional[str]:
        """``put`` with the lock held; ``held``: the events that count against ``max_size``
        (memory: all queued; the spool: those in memory)."""
        self._counts["tracked"] += 1
        if self._closing:
            self._counts["dropped_shutdown"] += 1
            self._losses += 1
            return "dropped_shutdown"
        # The bound covers all that is pending: queued, in flight, or parked for a retry.
        if held >= self._max_size:
            self._counts["dropped_queue_full"] += 1
            self._losses += 1
            return "dropped_queue_full"
        self._items.append((text, time.monotonic()))
        self._last_seq += 1
        self._counts["queued"] += 1
        self._tell_of_new_event(len(self._items))
        return None

    def _tell_of_new_event(self, ready: int) -> None:
        """With the lock held, after an event was queued and ``ready`` now wait: wake who
        waits for a batch, only when a plan changes (a batch's first event starts the
        interval, a full batch is due now). An idle sender first: it sends the batch itself,
        where the worker would hand it to a sender."""
        if ready == self._batch_size and self._senders_waiting:
            self._for_senders.notify()
        elif self._worker_wants_batch and (ready == 1 or ready == self._batch_size):
            self._work_ready.notify()

    def refuse(self, counter: str) -> None:
        """Count a tracked event that never reached the queue (filtered, transform error)."""
        with self._lock:
            self._counts["tracked"] += 1
            self._counts[counter] += 1
            if counter != "filtered":
                self._losses += 1

    # ------------------------------------------------------------ worker side

    def take_ready(self) -> Optional[TakenBatch]:
        """The next batch if one is due now (full, interval over, flushed, closing), or None."""
        with self._lock:
            due = self._queue_due_at()
            if due is None or due > time.monotonic():
                return None
            count = min(self._batch_size, len(self._items))
            texts = [self._items.popleft()[0] for _ in range(count)]
            batch = TakenBatch(self._head_seq, texts)
            self._taken[batch.first_seq] = batch
            self._head_seq += count
            return batch

    def interrupts(self) -> int:
        """A token for ``wait(since=...)``: how many ``interrupt()`` calls there were so far."""
        with self._lock:
            return self._interrupts

    def wait(self, until: Optional[float], *, for_batch: bool, since: int) -> None:
        """Block until the monotonic time ``until``, an ``interrupt()`` after the token
        ``since``, or, with ``for_batch``, until a batch is due; at once if one already is.

        The worker takes the token before it looks at its answers, so that an answer
        handed back while it was busy still wakes it."""
        with self._work_ready:
            self._worker_wants_batch = for_batch
            while self._interrupts == since:
                now = time.monotonic()
                wake_at = until
                if for_batch:
                    due = self._batch_due_at()
                    if due is not None and due <= now:
                        return
                    if due is not None and (wake_at is None or due < wake_at):
                        wake_at = due
                if wake_at is not None and wake_at <= now:
                    return
                self._work_ready.wait(None if wake_at is None else wake_at - now)

    def wait_for_batch(self, timeout: float) -> bool:
        """For a sender whose batch was delivered: block until a batch is due (True), at
        most ``timeout`` seconds, or until an ``interrupt()`` (False: the worker decides).

        One sender waits at a time; another one is told False at once and hands its slot
        back, so that only as many senders stay busy as the flow of events keeps busy."""
        deadline = time.monotonic() + timeout
        with self._for_senders:
            if self._senders_waiting:
                return False
            since = self._interrupts
            self._senders_waiting += 1
            try:
                while self._interrupts == since:
                    now = time.monotonic()
                    due = self._batch_due_at()
                    if due is not None and due <= now:
                        return True
                    wake_at = deadline if due is None else min(due, deadline)
                    if wake_at <= now:
                        return False
                    self._for_senders.wait(wake_at - now)
                return False
            finally:
                self._senders_waiting -= 1

    def split(self, batch: TakenBatch) -> tuple[TakenBatch, TakenBatch]:
        """Two halves, in order, of a batch the endpoint found too large; each settles alone."""
        first, second = batch.halves()
        with self._lock:
            if self._taken.pop(batch.first_seq, None) is not None:
                self._taken[first.first_seq] = first
                self._taken[second.first_seq] = second
        return first, second

    def settle_delivered(self, batch: TakenBatch) -> bool:
        """Record that a batch was delivered; False if shutdown had already written it off."""
        if not self.count(batch, "delivered"):
            return False
        self.release(batch)
        return True

    def keep(
        self, batch: TakenBatch, kind: str, *, batch_id: str, status: Optional[int], problem: str
    ) -> bool:
        """Asked before a batch is dropped (``kind``: the last answer's): True if the store
        keeps its events for a later attempt instead. Memory keeps nothing; the durable
        spool (``spool.SpooledEvents``) keeps what was not rejected for good."""
        return False

    def count(self, batch: TakenBatch, counter: str, problem: Optional[str] = None) -> bool:
        """Count the batch's fate; a shutdown no longer sees it. ``release`` follows.

        Between ``count`` and ``release`` the worker tells ``on_error``, so that a
        ``flush()`` never returns before the callback has heard of the loss it reports.
        """
        with self._settled:
            if self._taken.pop(batch.first_seq, None) is None:
                return False
            if problem is not None:
                self._last_error = problem
            count = len(batch.texts)
            self._counts["queued"] -= count
            self._counts[counter] += count
            if counter == "delivered":
                self._counts["batches_sent"] += 1
            else:
                self._losses += count
                self._reporting += 1
            return True

    def release(self, batch: TakenBatch, *, reported: bool = False) -> None:
        """After ``count``: flushes waiting for these events may return.

        ``reported``: the batch was dropped and ``on_error`` has returned.
        """
        with self._settled:
            if reported:
                self._reporting -= 1
                self._settled.notify_all()
            self._mark_settled(batch.first_seq, batch.last_seq)

    def _mark_settled(self, first: int, last: int) -> None:
        if last <= self._settled_through:
            return  # a shutdown wrote everything off meanwhile
        self._settled_above[first] = last
        while self._settled_through + 1 in self._settled_above:
            self._settled_through = self._settled_above.pop(self._settled_through + 1)
        self._update_waiters()

    def wait_for_reports(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for ``on_error`` calls the worker is making: at exit,
        a callback cut off half way would have heard of the loss and reported nothing."""
        with self._settled:
            self._settled.wait_for(lambda: self._reporting == 0, timeout)

    def note_problem(self, problem: str) -> None:
        """A delivery problem that costs no retry and loses nothing (an overload's pause)."""
        with self._settled:
            self._last_error = problem

    def count_retry(self, problem: str) -> None:
        with self._settled:
            self._counts["retries"] += 1
            self._last_error = problem

    # ------------------------------------------------------------ flush and shutdown

    def flush(self, timeout: Optional[float]) -> tuple[bool, bool]:
        """Have everything queued so far sent now; wait until it is settled or ``timeout``.

        Returns ``(settled, no_loss)``: whether every event queued at the call
        was delivered or dropped in time, and, if so, whether no loss was left
        unreported (see the module doc; this call reports them). A flush that
        times out returns ``(False, False)`` and reports nothing.
        """
        with self._settled:
            waiter = self._request_flush()
            if waiter is not None:
                try:
                    self._settled.wait_for(lambda: waiter.done, timeout)
                finally:
                    self._waiters.remove(waiter)
                if not waiter.done:
                    return False, False
            return True, self._report_losses()

    def close(self) -> None:
        """Refuse new events and have the worker send everything, then stop."""
        with self._work_ready:
            self._closing = True
        self.interrupt()

    def drained(self) -> bool:
        """True once closing and nothing is left to hand out: the worker may stop
        (when nothing it took is still on its way)."""
        with self._work_ready:
            return self._closing and not self._items

    def interrupt(self) -> None:
        """Wake the worker to plan again (an answer came, a shutdown changed what is due)."""
        with self._work_ready:
            self._interrupts += 1
            self._work_ready.notify()
            if self._senders_waiting:
                self._for_senders.notify_all()

    def write_off(self, problem: str) -> list[bytes]:
        """Count every event still pending as ``dropped_shutdown``; return their texts.

        Queued, in flight or parked for a retry: each is settled here, once,
        and a later ``count`` of its batch returns False. The losses count as
        reported: the shutdown that writes them off returns False.
        """
        with self._settled:
            texts = [text for text, _ in self._items]
            for batch in sorted(self._taken.values(), key=lambda taken: taken.first_seq):
                texts.extend(batch.texts)
            count = len(texts)
            if count:
                self._last_error = problem
            self._counts["queued"] -= count
            self._counts["dropped_shutdown"] += count
            self._losses += count
            self._report_losses()
            self._items.clear()
            self._taken.clear()
            self._head_seq = self._last_seq + 1
            self._closing = True
            self._settled_above.clear()
            self._settled_through = self._last_seq
            self._update_waiters()
            self._work_ready.notify()
            return texts

    def open(self) -> int:
        """Get the store ready; how many events it took over from an earlier run (memory:
        none). The spool opens its file here."""
        return 0

    def detach(self) -> None:
        """The client is done with the store (after shutdown): nothing to do in memory; the
        spool hands what it still holds to the next client and closes its file."""

    # ------------------------------------------------------------ reading

    def stats(self) -> Stats:
        with self._settled:
            return Stats(**self._counts, last_error=self._last_error)

    # ------------------------------------------------------------ internals (lock held)

    def _batch_due_at(self) -> Optional[float]:
        """When the worker has a batch to take next (the spool adds its file's)."""
        return self._queue_due_at()

    def _queue_due_at(self) -> Optional[float]:
        """When the queue's next batch is due: full, flushed or closing now; else its interval."""
        if not self._items:
            return None
        if (
            self._closing
            or len(self._items) >= self._batch_size
            or self._head_seq <= self._flush_through
        ):
            return 0.0
        return self._items[0][1] + self._interval

    def _request_flush(self) -> Optional[_FlushWaiter]:
        if self._settled_through >= self._last_seq:
            return None
        waiter = _FlushWaiter(self._last_seq)
        self._waiters.append(waiter)
        if self._flush_through < self._last_seq:
            self._flush_through = self._last_seq
            self._work_ready.notify()
            if self._senders_waiting:
                self._for_senders.notify()
        return waiter

    def _update_waiters(self) -> None:
        finished = False
        for waiter in self._waiters:
            if not waiter.done and self._settled_through >= waiter.target_seq:
                waiter.done = True
                finished = True
        if finished:
            self._settled.notify_all()

    def _report_losses(self) -> bool:
        """True if no loss is left unreported; either way, every loss so far is now reported."""
        unreported = self._losses > self._reported_losses
        self._reported_losses = self._losses
        return not unreported
