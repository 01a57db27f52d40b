"""The PostgreSQL store: one database shared by every worker process and machine.

Needs the ``postgres`` extra (psycopg 3 and psycopg-pool). Each process keeps
its own pool of connections, opened lazily: a receiver started before its
database answers 503 until the database is reachable, then migrates it.

**Idempotent everywhere.** ``event_id`` is the primary key and a batch is one
``INSERT ... ON CONFLICT DO NOTHING``: two replicas storing the same batch at
once serialize on the key, and the second counts the events as duplicates.
Rows are inserted in ``event_id`` order (of an id repeated in a batch, the
first is kept), so two transactions with overlapping batches take their row
locks in the same order and cannot deadlock.

**Paging sees every event exactly once.** A serial id is assigned when a row
is inserted but becomes visible when its transaction commits, and transactions
commit out of id order: a reader that has handed out id 7 would never see an
id 6 committed a moment later. So an event's position is ``(txid, n)``: the id
of the transaction that stored it (``pg_current_xact_id()``, assigned at its
first write and never reused) and its index in its batch; and a reader hands
out only rows whose ``txid`` is below the oldest transaction still running
(``pg_snapshot_xmin`` of its snapshot). Every transaction below that line has
ended, so no row can appear there later, and every transaction that ends
later has a ``txid`` at or above it, so sorts after what was handed out. The
price: an event shows in ``/events`` only once every write transaction older
than its own (anywhere on the PostgreSQL server) has ended, normally
milliseconds; a transaction left open holds paging back, not storing.
"""

from __future__ import annotations

import collections
import json
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional
from urllib.parse import urlsplit

from . import migrations
from .store import (
    EventQuery,
    Page,
    Position,
    Store,
    StoreUnavailable,
    UnstorableEvent,
    passwords_in,
    redact,
    redact_loosely,
)

try:
    import orjson
except ImportError:  # pragma: no cover - PyPy, where the SDK does without it
    orjson = None  # type: ignore[assignment]

try:
    import psycopg
    import psycopg_pool
except ImportError:  # pragma: no cover - the extra is not installed
    psycopg = None  # type: ignore[assignment]

_MIGRATION_LOCK = 0x63636172  # pg_advisory_xact_lock key: one process migrates at a time

# A batch is one statement, so one transaction and one round trip: the events, then
# the batch's row with how many of them were already stored. The events go as one JSON
# array that PostgreSQL takes apart: far less work in Python than a parameter per column.
_INSERT = """
    WITH inserted AS (
        INSERT INTO events (event_id, n, name, batch_id, event)
        SELECT e.event ->> 'event_id', e.n, e.event ->> 'event', %(batch_id)s, e.event
        FROM jsonb_array_elements(%(events)s::jsonb) WITH ORDINALITY AS e(event, n)
        ORDER BY e.event ->> 'event_id', e.n
        ON CONFLICT (event_id) DO NOTHING
        RETURNING 1
    )
    INSERT INTO batches (batch_id, size, duplicates)
    SELECT %(batch_id)s, %(size)s, %(size)s - count(*) FROM inserted
    RETURNING duplicates
"""
_VISIBLE = "txid < pg_snapshot_xmin(pg_current_snapshot())"
_STATS = """
    SELECT (SELECT count(*) FROM events),
           (SELECT count(*) FROM batches),
           (SELECT COALESCE(sum(duplicates), 0) FROM batches),
           (SELECT COALESCE(sum(requests), 0) FROM rejections)
"""


class PostgresStore(Store):
    """Events in the PostgreSQL database at ``url`` (``postgresql://USER@HOST:PORT/DB``)."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 4,
        statement_timeout: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        if psycopg is None:
            raise ValueError(
                "PostgreSQL needs the postgres extra: "
                "pip install 'campaign-cart-analytics[postgres]'"
            )
        self._secrets = _check_url(url)
        self.description = f"PostgreSQL at {redact(url)}"
        self._statement_timeout = statement_timeout
        self._connect_timeout = connect_timeout
        self._reachable = True  # until a request finds no connection
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._unsaved_rejections: collections.Counter[int] = collections.Counter()
        self._counter_lock = threading.Lock()
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=connect_timeout,
            reconnect_timeout=connect_timeout,  # then given up, and regrown on demand
            check=psycopg_pool.ConnectionPool.check_connection,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(2, math.ceil(connect_timeout)),
                "options": f"-c statement_timeout={round(statement_timeout * 1000)}",
                "application_name": "campaign-cart-analytics receive",
            },
            name="receiver",
        )
        self._pool.open(wait=False)

    # ------------------------------------------------------------ connections

    @contextmanager
    def _connection(self, timeout: Optional[float] = None) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection to a migrated database; failures as ``StoreUnavailable``.

        After a request found no connection, the next ones wait a quarter of a
        second for one, not ``connect_timeout``, until one succeeds: an outage
        must not hold every worker thread (and the load balancer's health checks)
        that long, and under overload quick 503s tell clients to back off. The
        pool keeps trying to connect meanwhile.
        """
        if timeout is None:
            timeout = self._connect_timeout if self._reachable else min(0.25, self._connect_timeout)
        try:
            with self._pool.connection(timeout=timeout) as conn:
                if not self._schema_ready:
                    self._migrate(conn)
                yield conn
            self._reachable = True
        except (psycopg.errors.DataError, psycopg.errors.ProgramLimitExceeded) as exc:
            raise UnstorableEvent(f"PostgreSQL cannot store an event: {self._scrub(exc)}") from None
        except psycopg.errors.QueryCanceled:
            raise StoreUnavailable(
                f"PostgreSQL did not answer within the statement timeout "
                f"({self._statement_timeout:g} s)"
            ) from None
        except psycopg_pool.PoolTimeout:
            self._reachable = False
            raise StoreUnavailable(
                f"no PostgreSQL connection within {timeout:g} s: the database is unreachable, "
                "or every connection of this process is busy"
            ) from None
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError):  # most likely, the connection broke
                self._reachable = False
            raise StoreUnavailable(
                f"PostgreSQL: {type(exc).__name__}: {self._scrub(exc)}"
            ) from None

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        with self._schema_lock:
            if self._schema_ready:
                return
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {migrations.TABLE} (version integer "
                    "PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                row = conn.execute(f"SELECT COALESCE(max(version), 0) FROM {migrations.TABLE}")
                (applied,) = row.fetchone() or (0,)
                for version, sql in migrations.pending(applied, migrations.POSTGRES):
                    conn.execute(sql)
                    conn.execute(
                        f"INSERT INTO {migrations.TABLE} (version) VALUES (%s)", (version,)
                    )
            self._schema_ready = True

    def _scrub(self, error: BaseException) -> str:
        """An error's first line, without the password (libpq may quote the conninfo)."""
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:300]

    # ------------------------------------------------------------ the interface

    def add_batch(self, batch_id: Optional[str], events: Sequence[dict[str, Any]]) -> int:
        parameters = {"batch_id": batch_id, "size": len(events), "events": _as_json(events)}
        with self._connection() as conn:
            row = conn.execute(_INSERT, parameters).fetchone()
        return int(row[0]) if row else 0

    def count_rejected(self, status: int) -> None:
        """Counted in the database; kept here and added later while it is unreachable,
        so that a 4xx is never held up by the database."""
        with self._counter_lock:
            self._unsaved_rejections[status] += 1
            counts, self._unsaved_rejections = self._unsaved_rejections, collections.Counter()
        try:
            with self._connection(timeout=0.5) as conn:
                conn.cursor().executemany(
                    "INSERT INTO rejections VALUES (%s, %s) ON CONFLICT (status) "
                    "DO UPDATE SET requests = rejections.requests + EXCLUDED.requests",
                    sorted(counts.items()),
                )
        except StoreUnavailable:
            with self._counter_lock:
                self._unsaved_rejections.update(counts)

    def page(self, query: EventQuery) -> Page:
        clauses = [_VISIBLE]
        parameters: list[object] = []
        if query.after is not None:
            clauses.append("(txid, n) > (%s::xid8, %s)")
            parameters += [str(query.after.major), query.after.minor]
        for clause, value in (
            ("name = %s", query.event),
            ("received_at >= to_timestamp(%s)", query.since),
            ("received_at < to_timestamp(%s)", query.until),
        ):
            if value is not None:
                clauses.append(clause)
                parameters.append(value)
        order = "ASC" if query.after is not None else "DESC"
        # events.txid, not the text selected: as text, 999 would sort after 1000
        sql = (
            f"SELECT txid::text AS position, n, event FROM events WHERE {' AND '.join(clauses)} "
            f"ORDER BY events.txid {order}, events.n {order} LIMIT %s"
        )
        with self._connection() as conn:
            rows = conn.execute(sql, (*parameters, query.limit)).fetchall()
        if query.after is None:
            rows.reverse()
        start = query.after if query.after is not None else Position()
        return Page(
            events=[event for _, _, event in rows],
            next=Position(int(rows[-1][0]), rows[-1][1]) if rows else start,
        )

    def stats(self) -> dict[str, Any]:
        with self._connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot
            row = conn.execute(_STATS).fetchone()
            by_event = conn.execute("SELECT name, count(*) FROM events GROUP BY name ORDER BY name")
            by_name = {name: count for name, count in by_event.fetchall()}
        events, batches, duplicates, rejected = row or (0, 0, 0, 0)
        return {
            "events": events,
            "batches": batches,
            "duplicates": int(duplicates),
            "rejected_requests": int(rejected),
            "by_event": by_name,
        }

    def check(self) -> None:
        with self._connection() as conn:
            conn.execute("SELECT 1")

    def close(self) -> None:
        self._pool.close(timeout=1.0)


def _as_json(events: Sequence[dict[str, Any]]) -> str:
    """The events as one JSON array, by orjson where it can (a tenth of the stdlib's time:
    a tenth of this store's Python work per event), else by the stdlib (an integer
    beyond 64 bits)."""
    if orjson is not None:
        try:
            return orjson.dumps(events).decode()  # a str: bytes would go as bytea
        except TypeError:  # orjson.JSONEncodeError
            pass
    return json.dumps(events)


def _check_url(url: str) -> tuple[str, ...]:
    """The URL's passwords (to scrub from errors), or ``ValueError`` naming what is wrong."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        raise ValueError(
            f"the PostgreSQL URL {redact_loosely(url)!r} is not postgresql://USER@HOST:PORT/DB"
        ) from None
    if not parts.path.strip("/"):
        raise ValueError(f"the PostgreSQL URL {redact(url)!r} names no database (…/DB)")
    try:  # libpq's own parse, here, where its message (which may quote the password) stays
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:
        detail = "" if passwords_in(url) else f": {str(exc).strip()[:100]}"
        raise ValueError(f"libpq cannot read the PostgreSQL URL {redact(url)!r}{detail}") from None
    return passwords_in(url)
