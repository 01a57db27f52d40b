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
  disk until later, and returns False once after some were kept;
- beyond ``spool_max_bytes`` (the file's pages in use, measured each second,
  plus this process's inserts since) the newest events are refused and
  counted as ``dropped_spool_full``: what was accepted is never given up.

Several processes may share one file; each sends only the rows it owns
(``spool_file`` says how a dead owner's rows are taken over). A duplicate
can only come from a process dying between the endpoint's 2xx and the
delete; the receiver drops it by ``event_id`` or ``Idempotency-Key``.

``track()`` never raises because of the spool and never waits long: an
insert that cannot get the file's write lock within ``PUT_WAIT``, or fails
(full or read-only disk), keeps that event in memory instead (the base
class's queue, bounded by ``max_queue_size``), counted as ``spool_fallback``.
A file that is not a database is moved aside with an ERROR and a fresh one
started; one that cannot be opened at all leaves the client in memory.

The connection is used under the same lock as the counters, so a row's
state and its count in ``stats()`` change together.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Callable, Optional

import attrs

from ._logging import RateLimitedLog, logger
from .config import Config
from .pending import PendingEvents, TakenBatch
from .spool_file import OWNER_TTL, SpoolUnusable, is_corrupt
from .spool_rows import OwnRows, SpoolBatch, SpoolRows
from .stats import Stats

#: Seconds an insert in ``track()`` waits for another process's write lock before the
#: event is kept in memory instead.
PUT_WAIT = 0.1

#: Seconds between the delivery thread's rounds of upkeep: heartbeat, taking over rows
#: of dead processes, deferred rows coming due, WAL checkpoint, size.
UPKEEP_INTERVAL = 1.0

#: Bytes a row costs beyond its body, for the size estimate between two measurements.
ROW_OVERHEAD = 48


class SpooledEvents(PendingEvents):
    """``PendingEvents`` whose events live in the spool file at ``config.spool_path``.

    The base class's memory queue still serves the events the file could not
    take (``spool_fallback``); the rows on disk are this class's.
    """

    def __init__(self, config: Config) -> None:
        super().__init__(
            batch_size=config.batch_size,
            max_size=config.max_queue_size,
            interval=config.batch_interval_ms / 1000,
        )
        assert config.spool_path is not None
        self._path = config.spool_path
        self._sync = config.spool_sync
        self._max_bytes = config.spool_max_bytes
        self._max_pause = config.spool_max_pause_ms / 1000
        # The seed's schedule goes on where max_retries stopped: d * 2**max_retries, then
        # doubling with each deferral, up to spool_max_pause_ms. (Exponents are capped
        # only so that the numbers stay floats.)
        self._first_pause = min(
            self._max_pause, config.retry_delay_ms / 1000 * 2 ** min(config.max_retries, 64)
        )
        self._rows: Optional[SpoolRows] = None
        self._opened = False  # tried to open (once per process)
        self._ready = 0  # own rows ready to go
        self._next_ready_id: Optional[int] = None  # the lowest of them
        self._next_ready_at = 0.0  # monotonic time its batch interval ends
        self._own_pending = 0  # own rows not yet counted delivered, dropped or left on disk
        self._last_row = 0  # highest row id this process answers for
        self._flush_rows = 0  # rows up to here are to be sent now
        self._outstanding: dict[int, SpoolBatch] = {}  # claimed, not settled; by first row id
        self._dead_reasons: dict[int, tuple[str, Optional[int], str]] = {}
        self._next_deferred_due: Optional[float] = None  # epoch seconds
        self._approx_bytes = 0
        self._last_beat = 0.0  # monotonic time of the last heartbeat
        self._next_upkeep = 0.0
        self._kept_unreported = False  # events kept on disk since the last completed flush
        self._trouble_log = RateLimitedLog(10.0)
        self._gauges: tuple[Optional[int], Optional[int]] = (None, None)

    # ------------------------------------------------------------ opening

    def open(self) -> int:
        """Open the file now (else at the first ``put``); how many events were taken over."""
        with self._lock:
            if not self._opened:
                self._open_locked()
            return self._counts["recovered"]

    def _open_locked(self) -> None:
        self._opened = True
        try:
            rows = SpoolRows(self._path, sync=self._sync, put_wait=PUT_WAIT)
            self._read_back(rows.own_rows())
            self._approx_bytes = rows.used_bytes()
        except (sqlite3.Error, SpoolUnusable, OSError) as exc:
            logger.error(
                "Spool %s cannot be used (%s); events are kept in memory only, as without "
                "spool_path (stats: spool_fallback)",
                self._path, exc,
            )  # fmt: skip
            return
        self._rows = rows
        self._last_beat = time.monotonic()
        self._took_over(rows.adopted)

    def _read_back(self, own: OwnRows) -> None:
        """What this process answers for, as the file says (after rows changed hands)."""
        self._ready = own.ready
        self._last_row = max(self._last_row, own.highest)
        self._set_next_ready(own.next_ready)
        self._next_deferred_due = own.next_deferred_due

    def _took_over(self, adopted: int) -> None:
        if not adopted:
            return
        self._counts["recovered"] += adopted
        self._counts["queued"] += adopted
        self._own_pending += adopted
        logger.info(
            "Spool %s: took over %d events left by an earlier run or a process that ended; "
            "they go out first",
            self._path, adopted,
        )  # fmt: skip
        self._work_ready.notify()

    # ------------------------------------------------------------ track() side

    def put(self, text: bytes) -> Optional[str]:
        with self._lock:
            if not self._closing:
                refused = self._put_on_disk(text)
                if refused != "fallback":
                    return refused
                self._counts["spool_fallback"] += 1
        return super().put(text)  # kept in memory: bounded and counted there

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
        self._approx_bytes += len(text) + ROW_OVERHEAD
        self._counts["tracked"] += 1
        self._counts["queued"] += 1
        self._own_pending += 1
        self._last_row = row
        self._ready += 1
        if self._ready == 1:
            self._next_ready_id = row
            self._next_ready_at = time.monotonic() + self._interval
        if self._worker_wants_batch and (self._ready == 1 or self._ready == self._batch_size):
            self._work_ready.notify()
        return None

    # ------------------------------------------------------------ worker side

    def take_ready(self) -> Optional[TakenBatch]:
        in_memory = super().take_ready()
        if in_memory is not None:
            return in_memory
        with self._settled:
            due = self._rows_due_at()
            if due is None or due > time.monotonic() or self._rows is None:
                return None
            try:
                return self._claim(self._rows)
            except sqlite3.Error as exc:
                self._trouble(exc, "batches wait until it can be read")
                return None

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
        self._upkeep_if_due()
        wake = self._next_upkeep if until is None else min(until, self._next_upkeep)
        super().wait(wake, for_batch=for_batch, since=since)

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
        if not isinstance(batch, SpoolBatch):
            return False
        with self._settled:
            if batch.first_seq not in self._outstanding:
                return False  # a shutdown has counted it already
            if kind in ("rejected", "too_large"):
                self._dead_reasons[batch.first_seq] = (batch_id, status, problem)
                return False
            del self._outstanding[batch.first_seq]
            if self._closing:
                self._write(lambda rows: rows.defer(batch.row_ids, 0.0, count=False))
                self._leave_on_disk(len(batch.row_ids))
            else:
                self._defer(batch, batch_id, problem)
            self._settled.notify_all()
            return True

    def _defer(self, batch: SpoolBatch, batch_id: str, problem: str) -> None:
        pause = min(self._max_pause, self._first_pause * 2 ** min(batch.deferrals, 64))
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
        """As in memory, for both stores; events kept on disk for a later try settle the
        flush (it does not wait out an outage) but make it return False, once."""
        with self._settled:
            waiter = self._request_flush()
            target = self._last_row
            if self._flush_rows < target:
                self._flush_rows = target
                self._work_ready.notify()
            try:
                done = self._settled.wait_for(
                    lambda: (waiter is None or waiter.done) and self._rows_settled(target),
                    timeout,
                )
            finally:
                if waiter is not None:
                    self._waiters.remove(waiter)
            if not done:
                return False, False
            kept, self._kept_unreported = self._kept_unreported, False
            return True, self._report_losses() and not kept

    def drained(self) -> bool:
        with self._lock:
            return self._closing and not self._items and self._ready == 0

    def write_off(self, problem: str) -> list[bytes]:
        """Memory events are dropped as without a spool; spooled ones stay on disk."""
        texts = super().write_off(problem)
        with self._settled:
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

    # ------------------------------------------------------------ reading

    def stats(self) -> Stats:
        base = super().stats()
        with self._lock:
            if self._rows is not None:  # else the last seen (after shutdown), or None
                try:
                    self._gauges = self._rows.gauges()
                except sqlite3.Error as exc:
                    self._trouble(exc, "stats() shows its last known depth")
            depth, dead = self._gauges
        return attrs.evolve(base, spool_depth=depth, spool_dead_letters=dead)

    # ------------------------------------------------------------ internals (lock held)

    def _batch_due_at(self) -> Optional[float]:
        due = [at for at in (self._queue_due_at(), self._rows_due_at()) if at is not None]
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
            return 0.0
        return self._next_ready_at

    def _rows_settled(self, target: int) -> bool:
        """Every row up to ``target`` this process answers for is delivered, dropped or
        kept on disk for later: none is ready or in flight."""
        if self._ready and self._next_ready_id is not None and self._next_ready_id <= target:
            return False
        return all(batch.first_seq > target for batch in self._outstanding.values())

    def _set_next_ready(self, row: Optional[tuple[int, float]]) -> None:
        if row is None:
            self._next_ready_id = None
            return
        self._next_ready_id = row[0]
        waited = max(0.0, time.time() - row[1])
        self._next_ready_at = time.monotonic() - waited + self._interval

    def _write(self, change: Callable[[SpoolRows], None]) -> None:
        """Change rows now; if the file is busy or failing, the change is kept and made
        at the next upkeep (the rows stay this process's meanwhile)."""
        if self._rows is None:
            return
        try:
            change(self._rows)
        except sqlite3.Error as exc:
            self._trouble(exc, "the change is made again in a second")

    def _trouble(self, error: sqlite3.Error, consequence: str) -> None:
        # Another process holding the write lock for long is a passing state; a full or
        # read-only disk, or a damaged file, needs someone to act.
        busy = "locked" in str(error) or "busy" in str(error)
        level = logging.WARNING if busy else logging.ERROR
        self._trouble_log.log(level, "Spool %s: %s; %s", self._path, error, consequence)
        if is_corrupt(error) and self._rows is not None:
            logger.error("Spool %s is damaged; this client keeps events in memory", self._path)
            self._rows.retire()  # other processes may still be using it: no close here
            self._rows = None
            self._ready = 0

    def _heartbeat(self, rows: SpoolRows) -> None:
        self._last_beat = time.monotonic()
        if not rows.heartbeat():
            self._heartbeat_lost()

    # ------------------------------------------------------------ upkeep (delivery thread)

    def _upkeep_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_upkeep:
            return
        self._next_upkeep = now + UPKEEP_INTERVAL
        with self._settled:
            rows = self._rows
            if rows is None:
                return
            try:
                self._upkeep(rows)
            except sqlite3.Error as exc:
                self._trouble(exc, "upkeep is tried again in a second")
        try:  # outside the lock: track() goes on meanwhile
            rows.checkpoint()
        except sqlite3.Error as exc:
            logger.debug("Spool %s: checkpoint failed (%s); tried again later", self._path, exc)

    def _upkeep(self, rows: SpoolRows) -> None:
        due = self._next_deferred_due
        # A client shutting down takes nothing over and tries no deferred row again:
        # both stay on disk for whoever comes next.
        if self._closing:
            due = None
        adopted, readmitted, alive = rows.upkeep(due, take_over=not self._closing)
        self._last_beat = time.monotonic()
        if not alive:
            self._heartbeat_lost()
        if adopted or readmitted or (due is not None and due <= time.time()):
            self._read_back(rows.own_rows())
        self._took_over(adopted)
        if readmitted:
            self._work_ready.notify()
        self._approx_bytes = rows.used_bytes()

    def _heartbeat_lost(self) -> None:
        if not self._own_pending:
            return  # it had nothing another process could have taken over
        logger.warning(
            "Spool %s: this process had been taken for dead (no heartbeat for %g s); "
            "some of its events may be sent twice",
            self._path, OWNER_TTL,
        )  # fmt: skip
