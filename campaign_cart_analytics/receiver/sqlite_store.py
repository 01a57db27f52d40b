"""The SQLite store: one file (or memory), for one machine, the demo and tests.

One connection per store, behind a lock: SQLite takes one writer at a time
anyway. Several processes may share a file (write-ahead log, and a wait of
``busy_timeout`` seconds for the write lock before answering 503); beyond one
machine, use PostgreSQL.

The position of an event is its row id. Writers are serialized by SQLite's
lock and rows are never deleted, so row ids grow in commit order and a reader
paging by row id never skips a row committed later.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional

from . import migrations
from .store import EventQuery, Page, Position, Store, StoreUnavailable


class SQLiteStore(Store):
    """Events in the SQLite database at ``path`` (``:memory:`` for one that vanishes)."""

    def __init__(self, path: str = ":memory:", *, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.in_memory = path == ":memory:"
        self.description = "SQLite in memory" if self.in_memory else f"SQLite file {path}"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            path, timeout=busy_timeout, check_same_thread=False, isolation_level=None
        )
        try:
            if path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _migrate(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")  # one process at a time migrates
        try:
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {migrations.TABLE} "
                "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            (applied,) = self._db.execute(
                f"SELECT COALESCE(MAX(version), 0) FROM {migrations.TABLE}"
            ).fetchone()
            for version, sql in migrations.pending(applied, migrations.SQLITE):
                for statement in filter(str.strip, sql.split(";")):
                    self._db.execute(statement)  # executescript would commit midway
                self._db.execute(
                    f"INSERT INTO {migrations.TABLE} VALUES (?, ?)", (version, time.time())
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection in a write transaction; a locked or failing file: ``StoreUnavailable``."""
        with self._lock, _unavailable_on_error():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def add_batch(self, batch_id: Optional[str], events: Sequence[dict[str, Any]]) -> int:
        now = time.time()
        rows = [
            (e["event_id"], e["event"], e["event_time"], batch_id, now, json.dumps(e))
            for e in events
        ]
        with self._transaction() as db:
            inserted = db.executemany(
                "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?)", rows
            ).rowcount
            duplicates = len(rows) - max(inserted, 0)
            db.execute(
                "INSERT INTO batches VALUES (?, ?, ?, ?)", (batch_id, now, len(rows), duplicates)
            )
        return duplicates

    def count_rejected(self, status: int) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO rejections VALUES (?, 1) "
                "ON CONFLICT (status) DO UPDATE SET requests = requests + 1",
                (status,),
            )

    def page(self, query: EventQuery) -> Page:
        clauses: list[str] = []
        parameters: list[object] = []
        if query.after is not None:
            clauses.append("rowid > ?")
            parameters.append(query.after.major)
        for clause, value in (
            ("event = ?", query.event),
            ("received_at >= ?", query.since),
            ("received_at < ?", query.until),
        ):
            if value is not None:
                clauses.append(clause)
                parameters.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "ASC" if query.after is not None else "DESC"
        sql = f"SELECT rowid, body FROM events {where} ORDER BY rowid {order} LIMIT ?"
        with self._lock, _unavailable_on_error():
            rows = self._db.execute(sql, (*parameters, query.limit)).fetchall()
        if query.after is None:
            rows.reverse()
        start = query.after if query.after is not None else Position()
        return Page(
            events=[json.loads(body) for _, body in rows],
            next=Position(rows[-1][0]) if rows else start,
        )

    def stats(self) -> dict[str, Any]:
        with self._lock, _unavailable_on_error():
            (events,) = self._db.execute("SELECT COUNT(*) FROM events").fetchone()
            batches, duplicates = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(duplicates), 0) FROM batches"
            ).fetchone()
            by_event = dict(
                self._db.execute("SELECT event, COUNT(*) FROM events GROUP BY event ORDER BY event")
            )
            (rejected,) = self._db.execute(
                "SELECT COALESCE(SUM(requests), 0) FROM rejections"
            ).fetchone()
        return {
            "events": events,
            "batches": batches,
            "duplicates": duplicates,
            "rejected_requests": rejected,
            "by_event": by_event,
        }

    def check(self) -> None:
        with self._lock, _unavailable_on_error():
            self._db.execute("SELECT 1 FROM events LIMIT 1").fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()


@contextmanager
def _unavailable_on_error() -> Iterator[None]:
    """SQLite's operational errors (locked, I/O, full disk) as ``StoreUnavailable``."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise StoreUnavailable(f"SQLite: {exc}") from None
