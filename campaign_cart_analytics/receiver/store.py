"""Where the reference receiver keeps what arrived: one small interface, two databases.

The WSGI app talks only to ``Store``. ``open_store`` picks the implementation
from a database URL:

- ``sqlite:///PATH`` (or a plain path, or ``:memory:``): ``SQLiteStore``, one
  file, for a single machine and the demo;
- ``postgresql://USER@HOST:PORT/DB``: ``PostgresStore`` (the ``postgres``
  extra), shared by any number of worker processes and machines.

Both store idempotently (an ``event_id`` already stored is a duplicate, not a
second row), store a batch in one transaction (whole or not at all), and hand
out events in the order received with a ``Position`` as the paging cursor.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from typing import Any, Optional
from urllib.parse import parse_qsl, urlencode, urlsplit

import attrs

SQLITE_SCHEMES = ("sqlite",)
POSTGRES_SCHEMES = ("postgresql", "postgres")
_CURSOR = re.compile("(0|[1-9][0-9]{0,18})(?:\\.(0|[1-9][0-9]{0,9}))?")
_MAX_MAJOR = 2**63 - 1  # SQLite's largest row id; PostgreSQL's transaction ids stay far below
_MAX_MINOR = 2**31 - 1  # a place in a batch (an integer column)


class StoreUnavailable(Exception):
    """The database is down, unreachable or too slow: try again later (503).

    The message is safe to show and log: it never holds a password.
    """


class UnstorableEvent(ValueError):
    """An event the database cannot hold (PostgreSQL's ``jsonb`` takes no ``\\u0000``): 400."""


@attrs.frozen(order=True)
class Position:
    """Where an event is in the order received; printed, it is the ``/events`` cursor.

    ``major.minor``: SQLite uses the row id as ``major``; PostgreSQL the writing
    transaction's id and the event's place in its batch (see ``postgres_store``).
    ``Position()`` (printed ``0``) is before every event.
    """

    major: int = 0
    minor: int = 0

    def __str__(self) -> str:
        return str(self.major) if self.minor == 0 else f"{self.major}.{self.minor}"

    @classmethod
    def parse(cls, text: str) -> Position:
        """The position a cursor string names, else ``ValueError``."""
        match = _CURSOR.fullmatch(text)
        if match is None or int(match[1]) > _MAX_MAJOR or int(match[2] or 0) > _MAX_MINOR:
            raise ValueError(f"not a cursor: {text[:40]!r}")
        return cls(int(match[1]), int(match[2] or 0))


BEGINNING = Position()


@attrs.frozen
class EventQuery:
    """What ``GET /events`` asks for.

    With ``after`` unset: the latest ``limit`` events, oldest first. With
    ``after``: up to ``limit`` events received after it, in the order received.
    ``since`` (inclusive) and ``until`` (exclusive) bound the time received, in
    seconds since the epoch.
    """

    limit: int = 100
    after: Optional[Position] = None
    event: Optional[str] = None
    since: Optional[float] = None
    until: Optional[float] = None


@attrs.frozen
class Page:
    """Events (oldest first) and the cursor to ask for what comes after them."""

    events: list[dict[str, Any]]
    next: Position


class Store(abc.ABC):
    """Received events, shared by the threads of one process (and, for PostgreSQL, by all)."""

    #: Where the data lives, safe to print: never a password.
    description: str
    #: True for a database that lives and dies with this process: no other process sees it.
    in_memory: bool = False

    @abc.abstractmethod
    def add_batch(self, batch_id: Optional[str], events: Sequence[dict[str, Any]]) -> int:
        """Store a batch's events in one transaction; return how many were already stored.

        ``StoreUnavailable`` when the database cannot take it now; ``UnstorableEvent``
        for an event it can never take.
        """

    @abc.abstractmethod
    def count_rejected(self, status: int) -> None:
        """Count a request to ``/analytics`` answered ``status`` (a 4xx), for ``/stats``."""

    @abc.abstractmethod
    def page(self, query: EventQuery) -> Page:
        """The events ``query`` asks for; see ``EventQuery``."""

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counts over everything stored: the same answer from every process sharing it."""

    @abc.abstractmethod
    def check(self) -> None:
        """Return if the database answers now, else ``StoreUnavailable`` (for ``/healthz``)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the database; the store is unusable afterwards."""

    def events(self, *, limit: int = 100, event: Optional[str] = None) -> list[dict[str, Any]]:
        """The latest ``limit`` events (optionally of one name), oldest first."""
        return self.page(EventQuery(limit=limit, event=event)).events


def passwords_in(url: str) -> tuple[str, ...]:
    """The passwords a database URL carries: in its user info, or as ``?password=``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ()
    found = [parts.password or ""]
    found += [value for key, value in parse_qsl(parts.query) if key.lower() == "password"]
    return tuple(secret for secret in found if secret)


def redact(url: str) -> str:
    """``url`` with any password (user info or ``?password=``) replaced by ``***``, for
    banners, logs and errors; a URL too broken to parse is hidden before its last ``@``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_loosely(url)
    if not passwords_in(url):
        return url  # as given: geturl() would rewrite sqlite:///PATH as sqlite:/PATH
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    hidden = [(key, "***" if key.lower() == "password" else value) for key, value in query]
    return parts._replace(query=urlencode(hidden, safe="*")).geturl()


def redact_loosely(url: str) -> str:
    """For a URL too broken to parse: everything before the last ``@`` is hidden."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}" if "@" in rest else url


def open_store(
    database: str,
    *,
    pool_size: int = 4,
    statement_timeout: float = 5.0,
    connect_timeout: float = 5.0,
) -> Store:
    """The store for ``database``: a ``sqlite:///`` or ``postgresql://`` URL, or a SQLite path.

    ``pool_size`` (connections per process), ``statement_timeout`` and
    ``connect_timeout`` (seconds) apply to PostgreSQL; SQLite waits up to
    ``statement_timeout`` for another process's write lock. ``ValueError`` for a
    URL of another kind; the message never shows a password.
    """
    scheme, colon, _ = database.partition(":")
    if not colon or len(scheme) < 2 or not scheme.isalpha():  # C:\... is a path too
        from .sqlite_store import SQLiteStore

        return SQLiteStore(database, busy_timeout=statement_timeout)
    if scheme.lower() in SQLITE_SCHEMES:
        from .sqlite_store import SQLiteStore

        return SQLiteStore(sqlite_path(database), busy_timeout=statement_timeout)
    if scheme.lower() in POSTGRES_SCHEMES:
        from .postgres_store import PostgresStore

        return PostgresStore(
            database,
            pool_size=pool_size,
            statement_timeout=statement_timeout,
            connect_timeout=connect_timeout,
        )
    raise ValueError(
        f"the database must be sqlite:///PATH or postgresql://USER@HOST:PORT/DB; "
        f"got a {scheme[:20]!r} URL"
    )


def sqlite_path(url: str) -> str:
    """The file a ``sqlite:`` URL names: ``sqlite:///rel.db``, ``sqlite:////abs.db``,
    ``sqlite:///:memory:`` (or ``sqlite://``) for a database in memory."""
    rest = url.partition(":")[2]
    if rest in ("", "//", "///:memory:"):
        return ":memory:"
    if not rest.startswith("///") or rest == "///":
        raise ValueError(f"a SQLite URL is sqlite:///PATH (three slashes); got {url[:60]!r}")
    return rest[3:]
