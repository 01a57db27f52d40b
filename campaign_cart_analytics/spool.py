"""``SpooledEvents``: ``PendingEvents`` kept in a SQLite file, so that nothing accepted is lost.

With ``spool_path`` set, ``track()`` commits each encoded event to the spool
file (``spool_file``; the statements are in ``spool_rows``) before it returns
its id, and the worker drains the file through the interface it drains
memory with: ``take_ready`` claims the oldest ready rows of this process as a
batch, ``settle_delivered`` deletes them. The worker does not know which
store it drains; the few fates that differ are decided here:

- a batch whose retries are exhausted (``keep``) stays on disk, deferred
  for a pause that doubles each time (``retry_delay * 2**(max_retries + n)``,
  at most ``spool_max_pause_ms``), and is tried again then, however long the
  outage lasts;
- a batch the endpoint rejected for good is counted as dropped, as in
  memory, and its events go to the ``dead_letters`` table with the status and
  the start of the response body;
- at shutdown, what could not be delivered in time stays on disk, counted as
  ``spooled_at_exit`` (not ``dropped_shutdown``), and is handed to whichever
  client opens the file next (``detach``);
- ``flush()`` waits for what is ready or in flight, not for events kept on
  disk until later, and returns False while any event tracked before it is
  still undelivered (``shutdown()`` too, when it leaves events on disk);
- beyond ``spool_max_bytes`` (the file's pages in use with its WAL and
  shared memory, measured each second, plus this process's inserts since,
  each a WAL page until a checkpoint) the newest events are refused and
  counted as ``dropped_spool_full``: what was accepted is never given up.
  A WAL grown past its limit is emptied by the delivery thread at once.

Several processes may share one file; each sends only the rows it owns
(``spool_file`` says how a dead owner's rows are taken over). A duplicate
can only come from a process dying between the endpoint's 2xx and the
delete; the receiver drops it by ``event_id`` or ``Idempotency-Key``.

``track()`` never raises because of the spool and never waits long: an
insert that cannot get the file's write lock within ``PUT_WAIT``, or fails
(full or read-only disk), keeps that event in memory instead, counted as
``spool_fallback``, until the delivery thread moves it into the file
(module ``spool_fallback``). Opening waits up to ``OPEN_WAIT`` for the write lock;
a file that is locked, on a full disk or failing is opened again in the
background (``spool_upkeep``). A file that is not a database is moved aside
with an ERROR and a fresh one started; a path that cannot be used at all (a
read-only folder) leaves the client in memory for good.

The connection is used under the same lock as the counters, so a row's
state and its count in ``stats()`` change together.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Callable, Optional

from ._logging import logger
from .config import Config
from .pending import TakenBatch
from .spool_file import OWNER_TTL
from .spool_rows import SpoolBatch, SpoolRows
from .spool_upkeep import PUT_WAIT, SpoolUpkeep

__all__ = ["PUT_WAIT", "SpooledEvents"]

#: Seconds the delivery thread waits after a failed claim: the first pause, doubled
#: after each failure up to the last (a full disk fails at once: no busy loop).
CLAIM_PAUSE_MIN, CLAIM_PAUSE_MAX = 0.05, 1.0


class SpooledEvents(SpoolUpkeep):
    """``PendingEvents`` whose events live in the spool file at ``config.spool_path``.

    The memory queue (``MemoryFallback``) holds the events the file could not
    take yet (``spool_fallback``); the rows on disk are this class's.
    """

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._claims_wait_until = 0.0  # monotonic; after a failed claim
        self._claim_pause = CLAIM_PAUSE_MIN
        self._flush_rows = 0  # rows up to here are to be sent now
        self._outstanding: dict[int, SpoolBatch] = {}  # claimed, not settled; by first row id
        self._dead_reasons: dict[int, tuple[str, Optional[int], str]] = {}

    # ------------------------------------------------------------ track() side

    def put(self, text: bytes) -> Optional[str]:
        with self._lock:
            if not self._closing:
                refused = self._put_on_disk(text)
                if refused != "fallback":
                    return refused
            return self._put_in_memory(text)  # bounded and counted there

    def _put_on_disk(self, text: bytes) -> Optional[str]:
        """None once the event is committed; else ``dropped_spool_full`` or ``fallback``."""
        if not self._opened:
            self._open_locked()
        rows = self._rows
        if rows is None:
            return "fallback"
        if self._approx_bytes + len(text) > self._max_bytes:
            self._counts["tracked"] += 1
            self._counts["dropped_spool_full"] += 1
            self._losses += 1
            return "dropped_spool_full"
        try:
            if time.monotonic() - self._last_beat > OWNER_TTL / 3:
                self._heartbeat(rows)  # idle for long: others must not take it for dead
            row = rows.insert(text)
        except sqlite3.Error as exc:
            self._trouble(exc, "events are kept in memory only while it lasts")
            return "fallback"
        self._count_insert(len(text))
        self._counts["tracked"] += 1
        self._counts["queued"] += 1
        self._own_pending += 1
        self._last_row = row
        self._ready += 1
        if self._ready == 1:
            self._next_ready_id = row
            self._next_ready_at = time.monotonic() + self._interval
        self._tell_of_new_event(self._ready)
        return None

    # ------------------------------------------------------------ worker side

    def take_ready(self) -> Optional[TakenBatch]:
        with self._settled:
            held = self._take_held()
            if held is not None:
                return held
        in_memory = super().take_ready()
        if in_memory is not None:
            return in_memory
        with self._settled:
            due = self._rows_due_at()
            if due is None or due > time.monotonic() or self._rows is None:
                return None
            try:
                batch = self._claim(self._rows)
            except sqlite3.Error as exc:
                self._trouble(exc, "batches wait until it can be read")
                # A full disk fails at once: pause before the next claim, longer each time.
                self._claims_wait_until = time.monotonic() + self._claim_pause
                self._claim_pause = min(CLAIM_PAUSE_MAX, self._claim_pause * 2)
                return None
            self._claim_pause = CLAIM_PAUSE_MIN
            return batch

    def _claim(self, rows: SpoolRows) -> Optional[SpoolBatch]:
        batch, following = rows.claim(self._batch_size)
        if batch is None and following is None:  # the count was off: ask the file
            self._read_back(rows.own_rows())
            return None
        self._set_next_ready(following)
        taken = 0 if batch is None else len(batch.row_ids)
        self._ready = 0 if following is None else max(1, self._ready - taken)
        self._settled.notify_all()
        if batch is not None:
            self._outstanding[batch.first_seq] = batch
        return batch

    def wait(self, until: Optional[float], *, for_batch: bool, since: int) -> None:
        self._reopen_if_due()
        self._upkeep_if_due()
        self._move_to_disk_if_due()
        wakes = [self._next_upkeep] + ([] if until is None else [until])
        if self._reopen_at is not None:
            wakes.append(self._reopen_at)
        if (self._items or self._held) and not self._memory_only:
            wakes.append(self._next_move)  # they go into the file then
        super().wait(min(wakes), for_batch=for_batch, since=since)

    def split(self, batch: TakenBatch) -> tuple[TakenBatch, TakenBatch]:
        if not isinstance(batch, SpoolBatch):
            return super().split(batch)
        first, second = batch.halves()
        with self._lock:
            if self._outstanding.pop(batch.first_seq, None) is not None:
                self._outstanding[first.first_seq] = first
                self._outstanding[second.first_seq] = second
        return first, second

    def keep(
        self, batch: TakenBatch, kind: str, *, batch_id: str, status: Optional[int], problem: str
    ) -> bool:
        """Asked before a batch is dropped. Rejected for good: its events go to the dead
        letters (False: the worker drops and reports them as without a spool). Anything
        else (retries exhausted, a shutdown's deadline): they stay on disk (True)."""
        with self._settled:
            if kind in ("rejected", "too_large") and not isinstance(batch, SpoolBatch):
                return False
            if not isinstance(batch, SpoolBatch):  # not on disk yet: held in memory
                return self._hold(batch, batch_id, problem)
            if batch.first_seq not in self._outstanding:
                return False  # a shutdown has counted it already
            if kind in ("rejected", "too_large"):
                self._dead_reasons[batch.first_seq] = (batch_id, status, problem)
                return False
            del self._outstanding[batch.first_seq]
            self._last_error = problem  # why the events are still undelivered
            if self._closing:
                self._write(lambda rows: rows.defer(batch.row_ids, 0.0, count=False))
                self._leave_on_disk(len(batch.row_ids))
            else:
                self._defer(batch, batch_id, problem)
            self._settled.notify_all()
            return True

    def _defer(self, batch: SpoolBatch, batch_id: str, problem: str) -> None:
        pause = self._pause_after(batch.deferrals)
        due = time.time() + pause
        self._write(lambda rows: rows.defer(batch.row_ids, due))
        if self._next_deferred_due is None or due < self._next_deferred_due:
            self._next_deferred_due = due
        self._kept_unreported = True
        logger.warning(
            "Batch %s (%d events) is kept in the spool after %s; tried again in %.3g s",
            batch_id, len(batch.row_ids), problem, pause,
        )  # fmt: skip

    def count(self, batch: TakenBatch, counter: str, problem: Optional[str] = None) -> bool:
        if not isinstance(batch, SpoolBatch):
            with self._lock:
                self._times_held.pop(batch.first_seq, None)
            return super().count(batch, counter, problem)
        with self._settled:
            if self._outstanding.pop(batch.first_seq, None) is None:
                return False
            if problem is not None:
                self._last_error = problem
            ids = batch.row_ids
            self._counts["queued"] -= len(ids)
            self._counts[counter] += len(ids)
            self._own_pending -= len(ids)
            if counter == "delivered":
                self._counts["batches_sent"] += 1
                self._write(lambda rows: rows.delete(ids))
            else:  # never into the void: the dead letters keep them
                self._losses += len(ids)
                self._reporting += 1
                batch_id, status, why = self._dead_reasons.pop(
                    batch.first_seq, ("", None, problem or "dropped")
                )
                self._write(lambda rows: rows.dead_letter(ids, batch_id, status, why))
            return True

    def release(self, batch: TakenBatch, *, reported: bool = False) -> None:
        if not isinstance(batch, SpoolBatch):
            super().release(batch, reported=reported)
            return
        with self._settled:
            if reported:
                self._reporting -= 1
            self._settled.notify_all()

    # ------------------------------------------------------------ flush and shutdown

    def flush(self, timeout: Optional[float]) -> tuple[bool, bool]:
        """As in memory, for both stores; events kept for a later try (on disk or held in
        memory) settle the flush (it does not wait out an outage) but make it return
        False, as long as any event tracked before it is kept."""
        with self._settled:
            waiter = self._request_flush()
            seq_target = self._last_seq
            target = self._last_row
            if self._flush_rows < target:
                self._flush_rows = target
                self._work_ready.notify()

            def rows_target() -> int:  # events moved from memory meanwhile: their rows too
                return target if waiter is None else max(target, waiter.rows_through)

            def settled() -> bool:
                memory = waiter is None or waiter.done or self._memory_settled(seq_target)
                return memory and self._rows_settled(rows_target())

            try:
                done = self._settled.wait_for(settled, timeout)
            finally:
                if waiter is not None:
                    self._waiters.remove(waiter)
            if not done:
                return False, False
            self._kept_unreported = False
            kept = self._memory_kept(seq_target) or self._kept_on_disk(rows_target())
            return True, self._report_losses() and not kept

    def _kept_on_disk(self, target: int) -> bool:
        """Some row up to ``target`` this process answers for is still on disk (deferred,
        or not deleted yet); True too when the file cannot say."""
        if self._rows is None:
            return False
        try:
            return self._rows.holds_own_through(target)
        except sqlite3.Error:
            return True

    def drained(self) -> bool:
        with self._lock:
            return self._closing and not self._items and not self._held and self._ready == 0

    def write_off(self, problem: str) -> list[bytes]:
        """Everything stays on disk for the next run: memory events are moved into the
        file first; those it does not take are dropped as without a spool."""
        with self._settled:
            if not self._memory_only:
                self._move_all_to_disk()
        texts = super().write_off(problem)
        with self._settled:
            if self._own_pending > 0:
                self._last_error = problem
            self._leave_on_disk(self._own_pending)
            self._outstanding.clear()
            self._ready = 0
            self._next_ready_id = None
            self._settled.notify_all()
        return texts

    def detach(self) -> None:
        """The client is done: what is still on disk is left to the next client (in any
        process) to take over, and the file is closed."""
        with self._settled:
            self._leave_on_disk(self._own_pending)  # also if the file failed under way
            self._outstanding.clear()
            self._ready = 0
            left = self._counts["spooled_at_exit"]
            rows = self._rows
            if rows is None:
                return
            self._rows = None
            try:
                self._gauges = rows.gauges()
                rows.hand_over()
            except sqlite3.Error as exc:  # its rows keep this process's token: taken over later
                logger.error("Spool %s: could not hand its events over (%s)", self._path, exc)
        if left:
            logger.warning(
                "%d events were not delivered before shutdown; they stay in the spool %s "
                "for the next run (stats: spooled_at_exit)",
                left, self._path,
            )  # fmt: skip

    def _leave_on_disk(self, count: int) -> None:
        if count <= 0:
            return
        self._counts["queued"] -= count
        self._counts["spooled_at_exit"] += count
        self._own_pending -= count
        self._kept_unreported = True

    # ------------------------------------------------------------ internals (lock held)

    def _batch_due_at(self) -> Optional[float]:
        due = [at for at in (self._memory_due_at(), self._rows_due_at()) if at is not None]
        return min(due, default=None)

    def _rows_due_at(self) -> Optional[float]:
        if not self._ready or self._next_ready_id is None:
            return None
        # Claimed rows are held in memory until settled: at most max_queue_size of them,
        # so that an outage with a deep spool does not pull the whole file into memory.
        if sum(len(batch.row_ids) for batch in self._outstanding.values()) >= self._max_size:
            return None
        if (
            self._closing
            or self._ready >= self._batch_size
            or self._next_ready_id <= self._flush_rows
        ):
            return self._claims_wait_until
        return max(self._next_ready_at, self._claims_wait_until)

    def _rows_settled(self, target: int) -> bool:
        """Every row up to ``target`` this process answers for is delivered, dropped or
        kept on disk for later: none is ready or in flight."""
        if self._ready and self._next_ready_id is not None and self._next_ready_id <= target:
            return False
        return all(batch.first_seq > target for batch in self._outstanding.values())

    def _append_rows(
        self, texts: list[bytes], *, deferred_until: Optional[float], flushed: bool
    ) -> int:
        if self._rows is None:
            raise sqlite3.OperationalError("the spool file is not open")
        last = self._rows.insert_many(texts, deferred_until)
        self._own_pending += len(texts)
        self._last_row = max(self._last_row, last)
        for text in texts:
            self._count_insert(len(text))
        if flushed:
            self._flush_rows = max(self._flush_rows, last)
        if deferred_until is None:
            self._read_back(self._rows.own_rows())
            self._work_ready.notify()
        elif self._next_deferred_due is None or deferred_until < self._next_deferred_due:
            self._next_deferred_due = deferred_until
        return last

    def _write(self, change: Callable[[SpoolRows], None]) -> None:
        """Change rows now; if the file is busy or failing, the change is kept and made
        at the next upkeep (the rows stay this process's meanwhile)."""
        if self._rows is None:
            return
        try:
            change(self._rows)
        except sqlite3.Error as exc:
            self._trouble(exc, "the change is made again in a second")
