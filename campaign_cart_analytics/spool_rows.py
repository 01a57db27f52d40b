"""``SpoolRows``: this process's connection to the spool file and every statement it runs.

``SpooledEvents`` (``spool``) keeps the books; this module moves rows. It
knows the file only through the statements below, all on one connection per
process (a forked child opens its own; the copy it inherited is kept alive
and never used, since closing it could disturb the parent's locks).

Callers hold ``SpooledEvents``' lock: one thread at a time uses the
connection. Every call into SQLite also holds ``spool_gate``'s gate, which a
fork waits for (see there).

A write that fails (the file busy for longer than the busy timeout, a full
disk) is kept and tried again at the next ``upkeep``; the rows stay claimed
by this process meanwhile, so nobody else sends them.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Optional

import attrs

from ._logging import logger
from .pending import TakenBatch
from .spool_file import (
    DEFERRED,
    adopt_orphans,
    connect,
    copy_own_rows,
    file_identity,
    file_size,
    is_corrupt,
    mark_unowned,
    move_aside,
    new_owner_token,
    register_owner,
)
from .spool_gate import gated as _gated
from .spool_gate import inherited as _inherited
from .spool_gate import live as _live

Statement = tuple[str, tuple[Any, ...]]

_INSERT = "INSERT INTO events (body, owner, queued_at) VALUES (?, ?, ?)"
_INSERT_MANY = (
    "INSERT INTO events (body, owner, queued_at, state, not_before) VALUES (?, ?, ?, ?, ?)"
)
_OWN_THROUGH = "SELECT 1 FROM events WHERE owner = ? AND id <= ? LIMIT 1"
_CLAIM = (
    "SELECT id, body, deferrals FROM events WHERE id > ? AND owner = ? AND state = 0 "
    "ORDER BY id LIMIT ?"
)
_MARK_CLAIMED = "UPDATE events SET state = 1 WHERE id > ? AND id <= ? AND owner = ? AND state = 0"
_NEXT_READY = (
    "SELECT id, queued_at FROM events WHERE id > ? AND owner = ? AND state = 0 ORDER BY id LIMIT 1"
)
_COUNT_READY = "SELECT count(*) FROM events WHERE owner = ? AND state = 0"
_HIGHEST = "SELECT max(id) FROM events WHERE owner = ?"
_READMIT = "UPDATE events SET state = 0 WHERE owner = ? AND state = 2 AND not_before <= ?"
_NEXT_DEFERRED = "SELECT min(not_before) FROM events WHERE owner = ? AND state = 2"
_UNKNOWN_OWNERS = (
    "UPDATE events SET owner = ?, state = 0, not_before = 0 "
    "WHERE owner NOT IN (SELECT token FROM owners)"
)
_HAND_OVER = "UPDATE events SET owner = NULL, state = 0, not_before = 0 WHERE owner = ?"
# Changes to claimed rows name their owner too: after the file was made again (rows
# copied under new ids) or rows were taken over, an id may be another process's row.
_DELETE = "DELETE FROM events WHERE owner = ? AND id IN ({})"
_DEFER = (
    "UPDATE events SET state = 2, not_before = ?, deferrals = deferrals + ? "
    "WHERE owner = ? AND id IN ({})"
)
_DEAD_LETTER = (
    "INSERT INTO dead_letters (body, batch_id, status, problem, failed_at) "
    "SELECT body, ?, ?, ?, ? FROM events WHERE owner = ? AND id IN ({}) ORDER BY id"
)


def _in(template: str, ids: tuple[int, ...]) -> str:
    return template.format(",".join("?" * len(ids)))


@attrs.frozen
class SpoolBatch(TakenBatch):
    """A batch of spooled rows: ``first_seq`` is its first row id, ``row_ids`` all of them."""

    row_ids: tuple[int, ...] = ()
    deferrals: int = 0  # how many times its events were deferred before

    def halves(self) -> tuple[SpoolBatch, SpoolBatch]:
        half = len(self.texts) // 2
        ids, texts, deferrals = self.row_ids, self.texts, self.deferrals
        return (
            SpoolBatch(ids[0], texts[:half], row_ids=ids[:half], deferrals=deferrals),
            SpoolBatch(ids[half], texts[half:], row_ids=ids[half:], deferrals=deferrals),
        )


@attrs.frozen
class OwnRows:
    """What this process answers for, read back after rows changed hands or came due."""

    ready: int
    highest: int  # the highest row id it owns, 0 if none
    next_ready: Optional[tuple[int, float]]  # (id, queued_at) of the lowest ready row
    next_deferred_due: Optional[float]  # epoch seconds


class SpoolRows:
    """One process's connection to a spool file, registered there as an owner."""

    @_gated
    def __init__(self, path: str, *, sync: str, put_wait: float, open_wait: float) -> None:
        """Open (or create) the file and take over what no live process answers for.

        A file that is not a database is moved aside (ERROR log) and a fresh one made.
        Waits up to ``open_wait`` for another process's write lock, ``put_wait`` later.
        Raises ``sqlite3.Error``, ``SpoolUnusable`` or ``OSError`` when it cannot be used.
        """
        self.path = path
        self.token = new_owner_token()
        self.adopted = 0
        self._failed: list[list[Statement]] = []
        # Rows below the cursor are claimed or deferred: claims walk on from it. It goes
        # back when rows below it become ready again (taken over, deferral over).
        self._cursor = 0
        self._checkpointer: Optional[sqlite3.Connection] = None
        self._wal_limit = 4 * 2**20
        self._sync, self._put_wait = sync, put_wait
        db = self._connect(sync, open_wait)
        self._identity = file_identity(path)
        try:
            db.execute("PRAGMA wal_autocheckpoint=0")  # upkeep checkpoints, not track()
            self._db: Optional[sqlite3.Connection] = db
            self._transaction(self._register_and_adopt)
            db.execute(f"PRAGMA busy_timeout={int(put_wait * 1000)}")
        except BaseException:
            db.close()
            raise
        _live.add(self)

    def _connect(self, sync: str, wait: float) -> sqlite3.Connection:
        try:
            return connect(self.path, sync=sync, timeout=wait)
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            aside = move_aside(self.path)
            logger.error(
                "Spool %s is not a usable SQLite file (%s); moved aside to %s and a fresh "
                "one started: the events in it were not sent",
                self.path, exc, aside,
            )  # fmt: skip
            return connect(self.path, sync=sync, timeout=wait)

    def _register_and_adopt(self, db: sqlite3.Connection) -> None:
        register_owner(db, self.token)
        self.adopted = adopt_orphans(db, self.token)
        self.adopted += db.execute(_UNKNOWN_OWNERS, (self.token,)).rowcount

    @property
    def usable(self) -> bool:
        return self._db is not None

    def retire(self) -> None:
        """Stop using the connection without closing it (after a fork, or a damaged file
        other processes may still be using)."""
        if self._db is not None:
            _inherited.append(self._db)
            self._db = None
        if self._checkpointer is not None:
            _inherited.append(self._checkpointer)
            self._checkpointer = None

    # ------------------------------------------------------------ track() and the worker

    @_gated
    def insert(self, text: bytes) -> int:
        """Commit one encoded event; its row id. Raises ``sqlite3.Error``."""
        row = self._conn().execute(_INSERT, (text, self.token, time.time())).lastrowid
        assert row is not None
        if row <= self._cursor:  # ids start again at 1 once the table is empty
            self._cursor = row - 1
        return row

    @_gated
    def insert_many(self, texts: list[bytes], deferred_until: Optional[float]) -> int:
        """Commit events in one transaction, ready or deferred until ``deferred_until``
        (epoch seconds); the last row id. Raises ``sqlite3.Error``."""

        def insert(db: sqlite3.Connection) -> int:
            now, state = time.time(), 0 if deferred_until is None else DEFERRED
            row: Optional[int] = 0
            for text in texts:
                row = db.execute(
                    _INSERT_MANY, (text, self.token, now, state, deferred_until or 0)
                ).lastrowid
            assert row is not None
            return row

        last: int = self._transaction(insert)
        first = last - len(texts) + 1
        if first <= self._cursor:
            self._cursor = first - 1
        return last

    @_gated
    def holds_own_through(self, last: int) -> bool:
        """Whether any row up to id ``last`` is still this process's."""
        found = self._conn().execute(_OWN_THROUGH, (self.token, last)).fetchone()
        return found is not None

    @_gated
    def claim(self, limit: int) -> tuple[Optional[SpoolBatch], Optional[tuple[int, float]]]:
        """Mark this process's oldest ``limit`` ready rows as in flight: them as a batch
        (None if there were none), and ``(id, queued_at)`` of the next ready row."""

        def claim(db: sqlite3.Connection) -> Any:
            rows = db.execute(_CLAIM, (self._cursor, self.token, limit)).fetchall()
            last = rows[-1][0] if rows else self._cursor
            if rows:
                db.execute(_MARK_CLAIMED, (self._cursor, last, self.token))
            return rows, db.execute(_NEXT_READY, (last, self.token)).fetchone()

        rows, following = self._transaction(claim)
        if not rows:
            return None, following
        self._cursor = rows[-1][0]  # only once committed: a failed claim leaves rows ready
        ids = tuple(row[0] for row in rows)
        texts = [row[1] for row in rows]
        deferrals = max(row[2] for row in rows)
        return SpoolBatch(ids[0], texts, row_ids=ids, deferrals=deferrals), following

    @_gated
    def delete(self, ids: tuple[int, ...]) -> None:
        self._write([(_in(_DELETE, ids), (self.token, *ids))])

    @_gated
    def defer(self, ids: tuple[int, ...], not_before: float, *, count: bool = True) -> None:
        """Set rows aside until ``not_before`` (epoch seconds); ``count``: one more deferral."""
        self._write([(_in(_DEFER, ids), (not_before, int(count), self.token, *ids))])

    @_gated
    def dead_letter(
        self, ids: tuple[int, ...], batch_id: str, status: Optional[int], problem: str
    ) -> None:
        self._write(
            [
                (
                    _in(_DEAD_LETTER, ids),
                    (batch_id, status, problem[:1000], time.time(), self.token, *ids),
                ),
                (_in(_DELETE, ids), (self.token, *ids)),
            ]
        )

    # ------------------------------------------------------------ upkeep

    @_gated
    def heartbeat(self) -> bool:
        """Say this process is alive; False if another had taken it for dead meanwhile."""
        db = self._conn()
        beat = "UPDATE owners SET heartbeat = ? WHERE token = ?"
        if db.execute(beat, (time.time(), self.token)).rowcount:
            return True
        register_owner(db, self.token)
        return False

    @_gated
    def upkeep(self, deferred_due: Optional[float], *, take_over: bool) -> tuple[int, int, bool]:
        """Failed writes again, heartbeat, rows of dead owners taken over (with
        ``take_over``), deferred rows whose time came (``deferred_due``) made ready.
        Returns (adopted, readmitted, alive: whether this owner was still registered)."""
        db = self._conn()
        while self._failed:
            self._run(db, self._failed[0])
            self._failed.pop(0)

        def upkeep(db: sqlite3.Connection) -> tuple[int, int, bool]:
            alive = self.heartbeat()
            adopted = adopt_orphans(db, self.token) if take_over else 0
            readmitted = 0
            if deferred_due is not None and deferred_due <= time.time():
                readmitted = db.execute(_READMIT, (self.token, time.time())).rowcount
            return adopted, readmitted, alive

        result: tuple[int, int, bool] = self._transaction(upkeep)
        return result

    @_gated
    def limit_wal(self, limit: int) -> None:
        """Have a checkpoint that resets the WAL cut the file down to ``limit`` bytes."""
        self._wal_limit = limit
        self._conn().execute(f"PRAGMA journal_size_limit={int(limit)}").fetchone()

    @_gated
    def checkpoint(self) -> None:
        """Copy the WAL into the database file, on a connection of its own, so that the
        caller need not hold the lock ``track()`` takes. Passive (it never holds up
        writers) while the WAL is small; past the size limit, a TRUNCATE checkpoint
        waits briefly for writers and empties the file."""
        if self._db is None:
            return  # handed over or retired: no new connection now
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(
                self.path, timeout=0.1, isolation_level=None, check_same_thread=False
            )
            self._checkpointer.execute(f"PRAGMA journal_size_limit={self._wal_limit}").fetchone()
        mode = "TRUNCATE" if file_size(self.path + "-wal") > self._wal_limit else "PASSIVE"
        self._checkpointer.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()

    def replaced(self) -> bool:
        """Whether the file at the path is no longer the one open here (deleted, or
        another put in its place)."""
        return file_identity(self.path) != self._identity

    @_gated
    def recreate(self) -> tuple[int, int]:
        """Make the spool again at the path (or open the one now there), carry over this
        process's rows from the file still open here, and use the new one from now on.
        Returns (rows carried over, rows of dead owners taken over in the new file)."""
        old = self._conn()
        new = connect(self.path, sync=self._sync, timeout=self._put_wait)
        try:
            new.execute("PRAGMA wal_autocheckpoint=0")
            new.execute(f"PRAGMA journal_size_limit={int(self._wal_limit)}").fetchone()
            new.execute("BEGIN IMMEDIATE")
            register_owner(new, self.token)
            carried = copy_own_rows(old, new, self.token)
            adopted = adopt_orphans(new, self.token)
            new.execute("COMMIT")
        except BaseException:
            new.close()
            raise
        self._identity = file_identity(self.path)
        self._db = new
        for connection in (old, self._checkpointer):
            if connection is not None:
                connection.close()
        self._checkpointer = None
        return carried, adopted

    @_gated
    def own_rows(self) -> OwnRows:
        """Read back what this process answers for (after rows changed hands or came due:
        the claims' cursor starts again from the lowest ready row)."""
        db = self._conn()
        self._cursor = 0
        next_ready = db.execute(_NEXT_READY, (0, self.token)).fetchone()
        if next_ready is not None:
            self._cursor = next_ready[0] - 1
        return OwnRows(
            ready=db.execute(_COUNT_READY, (self.token,)).fetchone()[0],
            highest=db.execute(_HIGHEST, (self.token,)).fetchone()[0] or 0,
            next_ready=next_ready,
            next_deferred_due=db.execute(_NEXT_DEFERRED, (self.token,)).fetchone()[0],
        )

    @_gated
    def used_bytes(self) -> int:
        """Bytes of the file in use (free pages left by deleted rows excluded), with its
        WAL and shared-memory files."""
        db = self._conn()
        page_size, pages, free = (
            db.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("page_size", "page_count", "freelist_count")
        )
        companions = file_size(self.path + "-wal") + file_size(self.path + "-shm")
        return int((pages - free) * page_size) + companions

    @_gated
    def frame_bytes(self) -> int:
        """Bytes one commit adds to the WAL at least: a page and its frame header."""
        return int(self._conn().execute("PRAGMA page_size").fetchone()[0]) + 24

    @_gated
    def gauges(self) -> tuple[int, int]:
        """Events and dead letters in the whole file."""
        db = self._conn()
        return (
            db.execute("SELECT count(*) FROM events").fetchone()[0],
            db.execute("SELECT count(*) FROM dead_letters").fetchone()[0],
        )

    @_gated
    def hand_over(self) -> None:
        """Leave every row of this process to whoever looks next, unregister, close."""
        db = self._conn()
        try:
            while self._failed:
                self._run(db, self._failed.pop(0))

            def hand_over(db: sqlite3.Connection) -> None:
                if db.execute(_HAND_OVER, (self.token,)).rowcount:
                    mark_unowned(db)
                db.execute("DELETE FROM owners WHERE token = ?", (self.token,))

            self._transaction(hand_over)
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            self._db = None
            db.close()
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None

    # ------------------------------------------------------------ internals

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.OperationalError("the spool connection is closed")
        return self._db

    def _write(self, statements: list[Statement]) -> None:
        """Run writes now; if that fails, keep them for the next upkeep and re-raise."""
        try:
            self._run(self._conn(), statements)
        except sqlite3.Error:
            self._failed.append(statements)
            raise

    def _run(self, db: sqlite3.Connection, statements: list[Statement]) -> None:
        if len(statements) == 1:
            db.execute(*statements[0])
            return

        def run_all(db: sqlite3.Connection) -> None:
            for statement in statements:
                db.execute(*statement)

        self._transaction(run_all)

    def _transaction(self, work: Any) -> Any:
        """``work(db)`` in one ``BEGIN IMMEDIATE`` transaction: the write lock is taken
        up front, so no other process changes the rows between its reads and writes."""
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            result = work(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.rollback()
            raise
        return result
