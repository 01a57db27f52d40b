"""``MemoryFallback``: the spool's events that are not (yet) on disk.

With ``spool_path`` set, an event the file could not take when ``track()``
ran (another process held the write lock past ``PUT_WAIT``, a full disk, a
file that could not be opened yet) waits in the memory queue of
``PendingEvents``, counted as ``spool_fallback``. It is still a spool event:

- the delivery thread moves such events into the file, oldest first and in
  batches, whenever the file takes writes again (``_move_to_disk_if_due``);
  from there on they are rows like any other. After a failed move it waits
  a pause that doubles up to ``MOVE_PAUSE_MAX`` before the next try;
- while in memory they are sent as usual, but a batch whose retries are
  exhausted is not dropped: it is held (``_held``) and tried again after the
  spool's growing pause, unless the file takes it first;
- they stay bounded by ``max_queue_size`` (with the memory batches in
  flight): beyond it ``track()`` refuses the newest as ``dropped_queue_full``.

Only a client whose spool can never be used (a path that cannot be created,
a read-only folder: ``_memory_only``) sends from memory alone and drops
after the retries, as without ``spool_path``.

``SpooledEvents`` (``spool``) builds on this class: it says how rows are
written (``_append_rows``) and keeps the books of what is on disk.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Optional

from ._logging import logger
from .config import Config
from .pending import PendingEvents, TakenBatch

#: Most events moved from memory into the file in one transaction.
MOVE_CHUNK = 500

#: Seconds between tries to move events into a file that refused them: the first pause,
#: doubled after each failure up to the last.
MOVE_PAUSE_MIN, MOVE_PAUSE_MAX = 0.05, 2.0


class MemoryFallback(PendingEvents):
    """``PendingEvents`` whose memory queue holds spool events the file could not take."""

    def __init__(self, config: Config) -> None:
        super().__init__(
            batch_size=config.batch_size,
            max_size=config.max_queue_size,
            interval=config.batch_interval_ms / 1000,
        )
        self._max_pause = config.spool_max_pause_ms / 1000
        # The seed's schedule goes on where max_retries stopped: d * 2**max_retries, then
        # doubling with each deferral, up to spool_max_pause_ms. (Exponents are capped
        # only so that the numbers stay floats.)
        self._first_pause = min(
            self._max_pause, config.retry_delay_ms / 1000 * 2 ** min(config.max_retries, 64)
        )
        self._memory_only = False  # the file can never be used: plain memory from here on
        self._held: dict[int, float] = {}  # first_seq -> monotonic time it may go again
        self._times_held: dict[int, int] = {}  # first_seq -> how often it was held so far
        self._kept_unreported = False  # events kept for later since the last completed flush
        self._move_pause = MOVE_PAUSE_MIN
        self._next_move = 0.0  # monotonic

    # ------------------------------------------------------------ for SpooledEvents

    def _append_rows(
        self, texts: list[bytes], *, deferred_until: Optional[float], flushed: bool
    ) -> int:
        """Write events to the file as this process's rows (ready, or deferred until the
        epoch time ``deferred_until``) and count them there; the last row id. Raises
        ``sqlite3.Error`` when the file does not take them now."""
        raise NotImplementedError

    def _pause_after(self, deferrals: int) -> float:
        """The spool's pause before the next try of events kept ``deferrals`` times before."""
        return float(min(self._max_pause, self._first_pause * 2.0 ** min(deferrals, 64)))

    # ------------------------------------------------------------ track() side

    def _put_in_memory(self, text: bytes) -> Optional[str]:
        """Keep an event the file did not take (lock held); bounded by what memory holds."""
        if not self._closing:
            self._counts["spool_fallback"] += 1
        return self._enqueue(text, self._in_memory())

    def _in_memory(self) -> int:
        return len(self._items) + sum(len(batch.texts) for batch in self._taken.values())

    # ------------------------------------------------------------ worker side

    def _take_held(self) -> Optional[TakenBatch]:
        """A held batch whose pause is over (all at once while closing), or None."""
        now = time.monotonic()
        for first_seq, due in sorted(self._held.items()):
            if due <= now or self._closing:
                del self._held[first_seq]
                return self._taken[first_seq]
        return None

    def _hold(self, batch: TakenBatch, batch_id: str, problem: str) -> bool:
        """Keep a memory batch whose retries ran out, instead of dropping it (lock held).
        False where memory is all there is, or at shutdown if the file refuses it."""
        if self._memory_only or batch.first_seq not in self._taken:
            return False
        self._last_error = problem
        if self._closing:  # no later try in this process: onto the disk or nowhere
            return self._move(batch.first_seq, batch.texts, time.time(), queued=False)
        times = self._times_held.get(batch.first_seq, 0)
        pause = self._pause_after(times)
        self._held[batch.first_seq] = time.monotonic() + pause
        self._times_held[batch.first_seq] = times + 1
        self._kept_unreported = True
        self._settled.notify_all()
        logger.warning(
            "Batch %s (%d events, not yet in the spool file) is kept after %s; tried again "
            "in %.3g s",
            batch_id, len(batch.texts), problem, pause,
        )  # fmt: skip
        return True

    def _memory_due_at(self) -> Optional[float]:
        due = list(self._held.values())
        queue = self._queue_due_at()
        if queue is not None:
            due.append(queue)
        if self._closing and self._held:
            return 0.0
        return min(due, default=None)

    # ------------------------------------------------------------ flush

    def _memory_settled(self, target_seq: int) -> bool:
        """Every memory event up to ``target_seq`` is settled or held for a later try."""
        seq = self._settled_through + 1
        while seq <= target_seq:
            if seq in self._settled_above:
                seq = self._settled_above[seq] + 1
            elif seq in self._held:
                seq = self._taken[seq].last_seq + 1
            else:
                return False
        return True

    def _memory_kept(self, target_seq: int) -> bool:
        """Some memory event up to ``target_seq`` is held for a later try."""
        return any(first <= target_seq for first in self._held)

    # ------------------------------------------------------------ moving into the file

    def _move_to_disk_if_due(self) -> None:
        """Delivery thread: move what memory holds into the file, oldest first, while it
        takes it; after a failure, wait a growing pause before the next try."""
        with self._settled:
            if self._memory_only or not (self._items or self._held):
                return
            if time.monotonic() < self._next_move:
                return
            while self._move_oldest():
                pass

    def _move_all_to_disk(self) -> bool:
        """At shutdown: move every memory event (queued, held or in flight) into the file;
        whether it took them all. A batch in flight may then be sent twice."""
        while self._move_oldest(in_flight=True):
            pass
        return not self._items and not self._taken

    def _move_oldest(self, *, in_flight: bool = False) -> bool:
        """Move one chunk: the oldest held (or, with ``in_flight``, any taken) batch, else
        the oldest queued events. False when there was nothing to move or it failed."""
        movable = self._taken if in_flight else self._held
        if movable:
            first_seq = min(movable)
            due = self._held.get(first_seq)
            deferred_until = (
                time.time() + max(0.0, due - time.monotonic()) if due is not None else None
            )
            return self._move(first_seq, self._taken[first_seq].texts, deferred_until, queued=False)
        if not self._items:
            return False
        count = min(MOVE_CHUNK, len(self._items))
        texts = [self._items[index][0] for index in range(count)]
        return self._move(self._head_seq, texts, None, queued=True)

    def _move(
        self, first_seq: int, texts: list[bytes], deferred_until: Optional[float], *, queued: bool
    ) -> bool:
        """Write events (queued ones, or a taken batch) into the file; on success memory
        forgets them and their sequence numbers settle (they are rows now)."""
        last_seq = first_seq + len(texts) - 1
        try:
            last_row = self._append_rows(
                texts, deferred_until=deferred_until, flushed=first_seq <= self._flush_through
            )
        except sqlite3.Error as exc:
            self._next_move = time.monotonic() + self._move_pause
            self._move_pause = min(MOVE_PAUSE_MAX, self._move_pause * 2)
            logger.log(
                logging.DEBUG, "Spool: %d events stay in memory for now (%s)", len(texts), exc
            )
            return False
        self._move_pause = MOVE_PAUSE_MIN
        if queued:
            for _ in texts:
                self._items.popleft()
            self._head_seq += len(texts)
        else:
            self._taken.pop(first_seq, None)
            self._held.pop(first_seq, None)
            self._times_held.pop(first_seq, None)
        for waiter in self._waiters:  # their flushes now wait for these rows too
            if waiter.target_seq >= first_seq:
                waiter.rows_through = max(waiter.rows_through, last_row)
        self._mark_settled(first_seq, last_seq)
        self._settled.notify_all()
        return True
