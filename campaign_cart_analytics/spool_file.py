"""The spool's SQLite file: schema, connection settings, owners, dead letters.

One file holds three tables:

- ``events``: one row per accepted event, its already-encoded JSON in
  ``body`` (stored as the bytes ``track()`` made, never re-encoded). ``owner``
  is the token of the client process that answers for it (None: anyone may
  take it over); ``state`` says whether it is ready to go, claimed by a batch
  in flight, or deferred until ``not_before`` (epoch seconds) because an
  outage outlasted its retries. Row ids count up, so ``ORDER BY id`` is the
  order events were accepted in, across runs and processes.
- ``owners``: one row per live client process: host, pid, the process's start
  time and a heartbeat. A process answers only for its own rows, so no two
  processes send the same event. A row whose owner is gone (on this host: its
  pid no longer runs, or runs another program; from another host: its
  heartbeat is older than ``OWNER_TTL``) is taken over by the next client
  that looks.
- ``dead_letters``: events the endpoint rejected for good (a 4xx other than
  408, 413 and 429, or a single event still too large), with the status and
  the start of the response body. ``campaign-cart-analytics spool
  dead-letters`` exports them, ``spool requeue`` puts them back.

Connections use WAL journaling: readers never wait for the writer, and a
commit is one append to the ``-wal`` file. ``synchronous=NORMAL`` (the
default) makes a committed event survive the process being killed; only
``FULL`` (an fsync per commit) makes it survive a power loss or an OS crash.
Spool files belong on a local disk: SQLite's locking is not safe over NFS.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import time
from typing import Optional

#: Seconds a live owner's heartbeat stays valid; the delivery thread beats every second.
OWNER_TTL = 30.0

#: ``events.state`` values.
READY, CLAIMED, DEFERRED = 0, 1, 2

SCHEMA_VERSION = 1

_SCHEMA = (
    # No secondary index and no AUTOINCREMENT: each would add a page to every commit
    # (one per tracked event). Claims walk the rowid from a cursor instead.
    """CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY,
        body BLOB NOT NULL,
        owner TEXT,
        state INTEGER NOT NULL DEFAULT 0,
        not_before REAL NOT NULL DEFAULT 0,
        deferrals INTEGER NOT NULL DEFAULT 0,
        queued_at REAL NOT NULL)""",
    # "unowned": set when rows are left without an owner (a client shut down with events
    # undelivered, a requeue), so live clients look for them only then.
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)",
    """CREATE TABLE IF NOT EXISTS owners (
        token TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started TEXT,
        heartbeat REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        body BLOB NOT NULL,
        batch_id TEXT NOT NULL,
        status INTEGER,
        problem TEXT NOT NULL,
        failed_at REAL NOT NULL)""",
)

_SYNC = {"normal": "NORMAL", "full": "FULL"}

HOST = socket.gethostname()


class SpoolUnusable(Exception):
    """The file cannot serve as a spool now (read-only, full, locked, newer schema)."""


def is_corrupt(error: BaseException) -> bool:
    """True for a file that is not (or no longer) a database, as opposed to one that is
    locked, read-only or on a full disk (``OperationalError``)."""
    return isinstance(error, sqlite3.DatabaseError) and not isinstance(
        error, sqlite3.OperationalError
    )


def is_transient(error: BaseException) -> bool:
    """True for trouble that may pass (the file locked or busy, a full disk, an I/O
    error), as opposed to a path that cannot be used (read-only, not creatable)."""
    text = str(error).lower()
    return isinstance(error, sqlite3.OperationalError) and any(
        word in text for word in ("locked", "busy", "full", "disk i/o")
    )


def connect(path: str, *, sync: str = "normal", timeout: float = 5.0) -> sqlite3.Connection:
    """An autocommit connection in WAL mode with the schema in place.

    Raises ``sqlite3.DatabaseError`` (corrupt), ``sqlite3.OperationalError``
    (read-only, full disk, locked) or ``SpoolUnusable`` (a newer schema).
    ``timeout`` is how long a write waits for another writer (busy timeout).
    """
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL").fetchone()
        conn.execute(f"PRAGMA synchronous={_SYNC[sync]}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SpoolUnusable(
                f"the spool was made by a newer version (schema {version}); not touching it"
            )
        if version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.rollback()
                raise
        conn.execute("SELECT count(*) FROM owners").fetchone()  # reads a page: finds garbage
    except BaseException:
        conn.close()
        raise
    return conn


def file_identity(path: str) -> Optional[tuple[int, int]]:
    """Which file is at ``path`` now (device, inode); None if none is."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def move_aside(path: str) -> str:
    """Rename a corrupt spool (and its WAL and shared-memory files) out of the way."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = f"{path}.corrupt-{stamp}-{os.getpid()}"
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(path + suffix, aside + suffix)
    os.replace(path, aside)
    return aside


# ---------------------------------------------------------------- owners


def process_started(pid: int) -> Optional[str]:
    """The process's start time since boot (Linux ``/proc``), to tell a reused pid apart;
    None where it cannot be read. Empty for a process that is a zombie (dead)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in (b"Z", b"X"):  # state: zombie or dead, waiting to be reaped
        return ""
    return fields[19].decode()  # field 22 of stat(5), counted after the ")"


def owner_alive(host: str, pid: int, started: Optional[str], heartbeat: float) -> bool:
    """Whether the process behind an ``owners`` row still answers for its events.

    On this host the process table decides (a wall clock stepped by NTP must not
    make live processes look dead); elsewhere, or where signals cannot probe a
    process (Windows: ``os.kill`` would end it), the heartbeat."""
    if host != HOST or os.name == "nt":
        return time.time() - heartbeat <= OWNER_TTL
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, someone else's
    now_started = process_started(pid)
    if now_started == "":
        return False  # a zombie: dead, not yet reaped
    return started is None or now_started is None or now_started == started


def new_owner_token() -> str:
    return f"{HOST}:{os.getpid()}:{os.urandom(4).hex()}"


def register_owner(conn: sqlite3.Connection, token: str) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO owners (token, host, pid, started, heartbeat) "
        "VALUES (?, ?, ?, ?, ?)",
        (token, HOST, os.getpid(), process_started(os.getpid()), time.time()),
    )


def adopt_orphans(conn: sqlite3.Connection, token: str) -> int:
    """Take over rows no live process answers for; call inside a write transaction.

    Rows of dead owners and rows without an owner become ``token``'s, ready at
    once (a deferred row's wait was its dead owner's). Returns how many."""
    adopted = 0
    unowned = conn.execute("SELECT value FROM meta WHERE key = 'unowned'").fetchone()
    owners = conn.execute("SELECT token, host, pid, started, heartbeat FROM owners").fetchall()
    for other, host, pid, started, heartbeat in owners:
        if other == token or owner_alive(host, pid, started, heartbeat):
            continue
        adopted += conn.execute(
            "UPDATE events SET owner = ?, state = 0, not_before = 0 WHERE owner = ?",
            (token, other),
        ).rowcount
        conn.execute("DELETE FROM owners WHERE token = ?", (other,))
    if unowned is not None:
        adopted += conn.execute(
            "UPDATE events SET owner = ?, state = 0, not_before = 0 WHERE owner IS NULL", (token,)
        ).rowcount
        conn.execute("DELETE FROM meta WHERE key = 'unowned'")
    return adopted


def copy_own_rows(source: sqlite3.Connection, target: sqlite3.Connection, token: str) -> int:
    """Copy ``token``'s rows from one spool into another (inside a write transaction on
    ``target``), in chunks; how many. Each keeps its id, so that batches in flight still
    name it, unless the id is taken there: then it gets a new one and is ready again."""
    copied, last = 0, 0
    while True:
        chunk = source.execute(
            "SELECT id, body, state, not_before, deferrals, queued_at FROM events "
            "WHERE owner = ? AND id > ? ORDER BY id LIMIT 500",
            (token, last),
        ).fetchall()
        if not chunk:
            return copied
        for row_id, body, state, not_before, deferrals, queued_at in chunk:
            try:
                target.execute(
                    "INSERT INTO events (id, body, owner, state, not_before, deferrals, "
                    "queued_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (row_id, body, token, state, not_before, deferrals, queued_at),
                )
            except sqlite3.IntegrityError:
                target.execute(
                    "INSERT INTO events (body, owner, queued_at) VALUES (?, ?, ?)",
                    (body, token, queued_at),
                )
        copied += len(chunk)
        last = chunk[-1][0]


def mark_unowned(conn: sqlite3.Connection) -> None:
    """Tell live clients that rows without an owner wait (inside the writing transaction)."""
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('unowned', 1)")


# ---------------------------------------------------------------- what the command line reads


def open_existing(path: str) -> sqlite3.Connection:
    """For the command line: the spool at ``path``, which must exist already; another
    SQLite file is refused untouched (``SpoolUnusable``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no spool file at {path!r}")
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if version != SCHEMA_VERSION or not {"events", "owners", "dead_letters"} <= tables:
            raise SpoolUnusable("not a spool file of this version")
    except BaseException:
        conn.close()
        raise
    return conn


def status(conn: sqlite3.Connection) -> dict[str, object]:
    """Counts by state, owners and dead letters, for ``spool status``."""
    states = dict(conn.execute("SELECT state, count(*) FROM events GROUP BY state").fetchall())
    owners = []
    for token, host, pid, started, heartbeat in conn.execute(
        "SELECT token, host, pid, started, heartbeat FROM owners ORDER BY token"
    ):
        events = conn.execute("SELECT count(*) FROM events WHERE owner = ?", (token,)).fetchone()
        owners.append(
            {
                "host": host,
                "pid": pid,
                "alive": owner_alive(host, pid, started, heartbeat),
                "events": events[0],
            }
        )
    unowned = conn.execute("SELECT count(*) FROM events WHERE owner IS NULL").fetchone()[0]
    oldest = conn.execute("SELECT min(queued_at) FROM events").fetchone()[0]
    page_size, pages, free = (
        conn.execute(f"PRAGMA {name}").fetchone()[0]
        for name in ("page_size", "page_count", "freelist_count")
    )
    return {
        "events": sum(states.values()),
        "ready": states.get(READY, 0),
        "in_flight": states.get(CLAIMED, 0),
        "deferred": states.get(DEFERRED, 0),
        "unowned": unowned,
        "oldest_age_s": None if oldest is None else round(time.time() - oldest, 3),
        "dead_letters": conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0],
        "bytes_used": (pages - free) * page_size,
        "owners": owners,
    }


DeadLetter = tuple[int, bytes, str, Optional[int], str, float]


def dead_letters(conn: sqlite3.Connection) -> list[DeadLetter]:
    """Every dead letter, oldest first: (id, body, batch_id, status, problem, failed_at)."""
    return conn.execute(
        "SELECT id, body, batch_id, status, problem, failed_at FROM dead_letters ORDER BY id"
    ).fetchall()


def requeue(conn: sqlite3.Connection, ids: Optional[list[int]] = None) -> int:
    """Move dead letters (all, or those with ``ids``) back into the queue, unowned, so the
    next client to look sends them. Returns how many moved."""
    where, params = (
        ("", ()) if ids is None else (f" WHERE id IN ({','.join('?' * len(ids))})", tuple(ids))
    )
    conn.execute("BEGIN IMMEDIATE")
    try:
        moved = conn.execute(
            "INSERT INTO events (body, owner, queued_at) "
            f"SELECT body, NULL, ? FROM dead_letters{where} ORDER BY id",
            (time.time(), *params),
        ).rowcount
        conn.execute(f"DELETE FROM dead_letters{where}", params)
        if moved:
            mark_unowned(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.rollback()
        raise
    return moved
