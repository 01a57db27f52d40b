"""Where the reference receiver keeps what arrived: SQLite, one row per distinct event_id.

Storing is idempotent, as the source document's best practices ask of a
receiver: an event whose ``event_id`` is already stored is counted as a
duplicate and not stored again, so a retried batch does no harm.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any, Optional

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    event TEXT NOT NULL,
    event_time TEXT NOT NULL,
    batch_id TEXT,
    received_at REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT,
    received_at REAL NOT NULL,
    size INTEGER NOT NULL,
    duplicates INTEGER NOT NULL
);
"""


class Store:
    """A SQLite database of received events, safe to share between server threads."""

    def __init__(self, path: str = ":memory:") -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self.rejected = 0  # requests answered 4xx, kept in memory for /stats

    def add_batch(self, batch_id: Optional[str], events: Sequence[dict[str, Any]]) -> int:
        """Store a batch's events; return how many of them were already stored."""
        now = time.time()
        rows = [
            (e["event_id"], e["event"], e["event_time"], batch_id, now, json.dumps(e))
            for e in events
        ]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                inserted = self._db.executemany(
                    "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?)", rows
                ).rowcount
                duplicates = len(rows) - max(inserted, 0)
                self._db.execute(
                    "INSERT INTO batches VALUES (?, ?, ?, ?)",
                    (batch_id, now, len(rows), duplicates),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return duplicates

    def count_rejected(self) -> None:
        with self._lock:
            self.rejected += 1

    def events(self, *, limit: int = 100, event: Optional[str] = None) -> list[dict[str, Any]]:
        """The most recent ``limit`` events (optionally of one name), oldest first."""
        query = "SELECT body FROM events"
        parameters: tuple[Any, ...] = ()
        if event is not None:
            query += " WHERE event = ?"
            parameters = (event,)
        query += " ORDER BY rowid DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*parameters, limit)).fetchall()
        return [json.loads(body) for (body,) in reversed(rows)]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            (events,) = self._db.execute("SELECT COUNT(*) FROM events").fetchone()
            batches, duplicates = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(duplicates), 0) FROM batches"
            ).fetchone()
            by_event = dict(
                self._db.execute("SELECT event, COUNT(*) FROM events GROUP BY event ORDER BY event")
            )
            rejected = self.rejected
        return {
            "events": events,
            "batches": batches,
            "duplicates": duplicates,
            "rejected_requests": rejected,
            "by_event": by_event,
        }

    def close(self) -> None:
        with self._lock:
            self._db.close()
