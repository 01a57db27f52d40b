"""The receiver's schema, as numbered migrations for each database.

A database records the migrations applied to it in ``schema_migrations``; a
store applies the missing ones when it first reaches its database, so a later
release adds a migration at the end of a list and existing databases catch
up. A database migrated by a newer release than this one is refused: this
code cannot know what that schema means.

Never edit a migration that has shipped; add one.
"""

from __future__ import annotations

from collections.abc import Sequence

from .store import StoreUnavailable

TABLE = "schema_migrations"

# Version 1 also adopts a file written before migrations existed: same tables.
SQLITE: Sequence[str] = (
    """
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
    CREATE INDEX IF NOT EXISTS events_by_name ON events (event);
    CREATE INDEX IF NOT EXISTS events_by_received_at ON events (received_at);
    CREATE TABLE IF NOT EXISTS rejections (
        status INTEGER PRIMARY KEY,
        requests INTEGER NOT NULL
    );
    """,
)

# An event's place in the order received is (txid, n): the id of the transaction
# that stored it and its index in its batch. See postgres_store for why not a
# serial id.
POSTGRES: Sequence[str] = (
    """
    CREATE TABLE events (
        event_id text PRIMARY KEY,
        txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
        n integer NOT NULL,
        name text NOT NULL,
        batch_id text,
        received_at timestamptz NOT NULL DEFAULT now(),
        event jsonb NOT NULL
    );
    CREATE UNIQUE INDEX events_by_position ON events (txid, n);
    CREATE INDEX events_by_name ON events (name, txid, n);
    CREATE INDEX events_by_received_at ON events (received_at);
    CREATE TABLE batches (
        batch_id text,
        received_at timestamptz NOT NULL DEFAULT now(),
        size integer NOT NULL,
        duplicates integer NOT NULL
    );
    CREATE TABLE rejections (
        status integer PRIMARY KEY,
        requests bigint NOT NULL
    );
    """,
)


class SchemaTooNew(StoreUnavailable):
    """The database was migrated by a newer release than this one: 503 until upgraded."""


def pending(applied: int, migrations: Sequence[str]) -> list[tuple[int, str]]:
    """The migrations (version, SQL) a database at version ``applied`` still needs."""
    if applied > len(migrations):
        raise SchemaTooNew(
            f"the database's schema is version {applied}, newer than this release "
            f"knows (version {len(migrations)}); upgrade campaign-cart-analytics"
        )
    return [(version, sql) for version, sql in enumerate(migrations, 1) if version > applied]
