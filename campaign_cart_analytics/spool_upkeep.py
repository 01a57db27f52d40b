"""``SpoolUpkeep``: the spool file's life in one process: opening it, and the delivery
thread's upkeep of it.

``SpooledEvents`` (``spool``) keeps the books of the rows; this class owns the
connection (``SpoolRows``) and what keeps it healthy:

- opening, in ``Analytics()``: it waits up to ``OPEN_WAIT`` for another
  process's write lock. A file that is locked, on a full disk or failing
  then is opened again by the delivery thread after a pause that doubles up
  to ``REOPEN_PAUSE_MAX``; meanwhile events wait in memory
  (``spool_fallback``) and are moved into the file once it opens. A path
  that cannot be used at all (a read-only folder, not creatable) leaves the
  client in memory for good, with an ERROR;
- upkeep, about once a second: failed writes made again, a heartbeat, rows
  of dead processes taken over, deferred rows coming due, the size, and a
  WAL checkpoint (off ``track()``'s path).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Optional

import attrs

from ._logging import RateLimitedLog, logger
from .config import Config
from .spool_fallback import MemoryFallback
from .spool_file import OWNER_TTL, SpoolUnusable, is_corrupt, is_transient
from .spool_rows import OwnRows, SpoolRows
from .stats import Stats

#: Seconds an insert in ``track()`` waits for another process's write lock before the
#: event is kept in memory instead.
PUT_WAIT = 0.1

#: Seconds opening the file waits for another process's write lock (in ``Analytics()``).
OPEN_WAIT = 3.0

#: Seconds between tries to open a file that was locked or failing: the first pause,
#: doubled after each failure up to the last.
REOPEN_PAUSE_MIN, REOPEN_PAUSE_MAX = 0.1, 5.0

#: The most bytes the WAL may grow to before the delivery thread is asked for a
#: checkpoint that empties it; a quarter of ``spool_max_bytes`` when that is smaller.
WAL_LIMIT = 16 * 2**20

#: Seconds between the delivery thread's rounds of upkeep: heartbeat, taking over rows
#: of dead processes, deferred rows coming due, WAL checkpoint, size.
UPKEEP_INTERVAL = 1.0

#: Bytes a row costs beyond its body, for the size estimate between two measurements.
ROW_OVERHEAD = 48


class SpoolUpkeep(MemoryFallback):
    """The spool file's connection, opened (again) and looked after; the books of what
    this process owns on disk that opening and upkeep read back."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        assert config.spool_path is not None
        self._path = config.spool_path
        self._sync = config.spool_sync
        self._max_bytes = config.spool_max_bytes
        self._rows: Optional[SpoolRows] = None
        self._opened = False  # tried to open
        self._reopen_at: Optional[float] = None  # monotonic time of the next try to open
        self._reopen_pause = REOPEN_PAUSE_MIN
        self._ready = 0  # own rows ready to go
        self._next_ready_id: Optional[int] = None  # the lowest of them
        self._next_ready_at = 0.0  # monotonic time its batch interval ends
        self._own_pending = 0  # own rows not yet counted delivered, dropped or left on disk
        self._last_row = 0  # highest row id this process answers for
        self._next_deferred_due: Optional[float] = None  # epoch seconds
        self._approx_bytes = 0  # the file, its WAL and its shared memory, estimated
        self._wal_limit = min(WAL_LIMIT, config.spool_max_bytes // 4)
        self._wal_growth = 0  # bytes inserts added to the WAL since the last checkpoint
        self._frame = 4096 + 24  # bytes one insert adds to the WAL (a page, its header)
        self._last_beat = 0.0  # monotonic time of the last heartbeat
        self._next_upkeep = 0.0
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
        self._reopen_at = None
        try:
            rows = SpoolRows(self._path, sync=self._sync, put_wait=PUT_WAIT, open_wait=OPEN_WAIT)
            rows.limit_wal(self._wal_limit)
            self._read_back(rows.own_rows())
            self._approx_bytes = rows.used_bytes()
            self._frame = rows.frame_bytes()
        except (sqlite3.Error, SpoolUnusable, OSError) as exc:
            self._open_failed(exc)
            return
        self._rows = rows
        self._reopen_pause = REOPEN_PAUSE_MIN
        self._last_beat = time.monotonic()
        self._took_over(rows.adopted)

    def _open_failed(self, exc: BaseException) -> None:
        if is_transient(exc):  # locked, a full disk, an I/O error: it may pass
            self._reopen_at = time.monotonic() + self._reopen_pause
            self._trouble_log.log(
                logging.WARNING,
                "Spool %s cannot be opened now (%s); events wait in memory and it is tried "
                "again in %.3g s",
                self._path, exc, self._reopen_pause,
            )  # fmt: skip
            self._reopen_pause = min(REOPEN_PAUSE_MAX, self._reopen_pause * 2)
            return
        self._memory_only = True
        logger.error(
            "Spool %s cannot be used (%s); events are kept in memory only, as without "
            "spool_path (stats: spool_fallback)",
            self._path, exc,
        )  # fmt: skip

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

    def _set_next_ready(self, row: Optional[tuple[int, float]]) -> None:
        if row is None:
            self._next_ready_id = None
            return
        self._next_ready_id = row[0]
        waited = max(0.0, time.time() - row[1])
        self._next_ready_at = time.monotonic() - waited + self._interval

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

    def _reopen_if_due(self) -> None:
        """Open the file again if it was locked or failing when tried last."""
        with self._settled:
            if self._reopen_at is not None and self._reopen_at <= time.monotonic():
                self._open_locked()

    def _upkeep_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_upkeep:
            return
        self._next_upkeep = now + UPKEEP_INTERVAL
        with self._settled:
            rows = self._rows
            if rows is None:
                return
            if rows.replaced():
                self._recreate(rows)
            try:
                self._upkeep(rows)
            except sqlite3.Error as exc:
                self._trouble(exc, "upkeep is tried again in a second")
        try:  # outside the lock: track() goes on meanwhile
            rows.checkpoint()
        except sqlite3.Error as exc:
            logger.debug("Spool %s: checkpoint failed (%s); tried again later", self._path, exc)
            return
        with self._settled:  # the WAL may be empty now: measure again
            self._wal_growth = 0
            if self._rows is rows:
                try:
                    self._approx_bytes = rows.used_bytes()
                except sqlite3.Error as exc:
                    self._trouble(exc, "its size is measured again in a second")

    def _count_insert(self, size: int) -> None:
        """Add an insert to the size estimate (lock held); a WAL grown past its limit asks
        the delivery thread for a checkpoint now, not at its next upkeep."""
        # The row lands in a page of the file and its commit appends that page to the WAL;
        # about every page/row inserts, a page splits and the commit appends two more.
        row = size + ROW_OVERHEAD
        self._approx_bytes += row + self._frame + 2 * row
        self._wal_growth += self._frame + 2 * row
        if self._wal_growth > self._wal_limit and self._next_upkeep > 0:
            self._next_upkeep = 0.0
            self._interrupts += 1  # the worker plans again, and upkeep is due
            self._work_ready.notify()

    def _recreate(self, rows: SpoolRows) -> None:
        """The file was deleted or replaced under this client: make it again at the path,
        with every row this process holds, so that a kill from here on loses nothing."""
        try:
            carried, adopted = rows.recreate()
        except (sqlite3.Error, SpoolUnusable, OSError) as exc:
            self._trouble_log.log(
                logging.ERROR,
                "Spool %s was deleted or replaced while in use, and cannot be made again "
                "(%s); its events are kept in the old file until it can",
                self._path, exc,
            )  # fmt: skip
            return
        logger.error(
            "Spool %s was deleted or replaced while in use; made again at that path with "
            "this process's %d events (other processes' events in the old file are theirs "
            "to carry over; its dead letters are not)",
            self._path, carried,
        )  # fmt: skip
        self._read_back(rows.own_rows())
        self._took_over(adopted)
        self._work_ready.notify()

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
