"""The receiver on a real PostgreSQL server: replicas, workers, paging under load, faults.

``receive`` runs in subprocesses (under gunicorn with ``--workers``), the SDK
sends to it, and PostgreSQL is Debian's, started by ``postgres.py``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from helpers import http_json, wait_until
from postgres import (  # noqa: F401 - fixtures
    PostgresServer,
    database_url_fixture,
    postgres_server_fixture,
)

import campaign_cart_analytics as cca
from campaign_cart_analytics.cli import main
from campaign_cart_analytics.receiver import create_app, open_store, serve

SECRET = "pw-never-shown-4711"


class Receive:
    """``campaign-cart-analytics receive`` in a subprocess; its standard error kept."""

    def __init__(self, database: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "campaign_cart_analytics", "receive", "--port", "0",
             "--database", database, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None and self.process.stderr is not None
        self.first_line = self.process.stdout.readline().strip()
        self.url = self.first_line.removeprefix("Listening on ")
        self.base = self.url.rsplit("/", 1)[0]
        self.lines: list[str] = []
        self._drain = threading.Thread(target=self._read, args=(self.process.stderr,))
        self._drain.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def call(self, path: str, body: Optional[bytes] = None) -> tuple[int, dict[str, str], Any]:
        return http_json(self.base + path, body)

    def stop(self) -> str:
        """Stop it as a process manager would (SIGTERM); everything it printed."""
        self.process.terminate()
        stdout, _ = self.process.communicate(timeout=20)
        self._drain.join(timeout=5)
        return self.first_line + "\n" + stdout + self.log


@pytest.fixture
def receivers() -> Iterator[Any]:
    started: list[Receive] = []

    def start(database: str, *args: str) -> Receive:
        started.append(Receive(database, *args))
        return started[-1]

    yield start
    for receiver in started:
        if receiver.process.poll() is None:
            receiver.process.send_signal(signal.SIGINT)  # quicker than a graceful SIGTERM
            receiver.process.communicate(timeout=20)


def batch(*ids: str) -> bytes:
    events = [{"event": "dl_view_item", "event_id": i, "event_time": "2025-01-12T10:30:00Z"}
              for i in ids]  # fmt: skip
    return json.dumps({"events": events, "batch_info": {"size": len(ids)}}).encode()


def page_everything(receiver: Receive, expect: int, cursor: str = "0") -> list[str]:
    """Event ids from ``cursor`` on, 1,000 a page, until ``expect`` came (10 s at most)."""
    ids: list[str] = []
    deadline = time.monotonic() + 10
    while len(ids) < expect and time.monotonic() < deadline:
        status, _, page = receiver.call(f"/events?after={cursor}&limit=1000")
        assert status == 200, page
        ids += [event["event_id"] for event in page["events"]]
        if not page["events"]:
            time.sleep(0.02)
        cursor = page["next"]
    return ids


def send(url: str, names: list[str], **options: Any) -> cca.Stats:
    """Track ``names`` as events through one client and flush; the client's stats."""
    with cca.Analytics(url, **options) as client:
        for name in names:
            client.track("dl_view_item", {"event_id": name})
        assert client.flush(timeout=30)
        return client.stats()


def test_two_replicas_given_the_same_batch_at_once_store_it_once(
    receivers: Any, database_url: str
) -> None:
    """Two processes (which also migrate the new database at the same time)."""
    one, two = receivers(database_url), receivers(database_url)  # both migrate at once
    for round in range(6):
        body = batch(*(f"r{round}-{n}" for n in range(100)))
        start = threading.Barrier(2)
        answers: list[Any] = []
        threads = [
            threading.Thread(target=_deliver, args=(replica, body, start, answers))
            for replica in (one, two)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [status for status, _, _ in answers] == [202, 202]
        assert sorted(answer["duplicates"] for _, _, answer in answers) == [0, 100]
    stats = one.call("/stats")[2]
    assert stats == two.call("/stats")[2]
    assert (stats["events"], stats["batches"], stats["duplicates"]) == (600, 12, 600)


def _deliver(replica: Receive, body: bytes, start: threading.Barrier, answers: list[Any]) -> None:
    start.wait()
    answers.append(replica.call("/analytics", body))


def test_eight_sdk_threads_through_four_workers_store_every_event_once(
    receivers: Any, database_url: str
) -> None:
    receiver = receivers(database_url, "--workers", "4")
    sent = [[f"t{thread}-{n}" for n in range(1000)] for thread in range(8)]
    results: list[cca.Stats] = []
    threads = [
        threading.Thread(target=lambda names=names: results.append(send(receiver.url, names)))
        for names in sent
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=40)
    assert [(s.delivered, s.dropped) for s in results] == [(1000, 0)] * 8
    paged = page_everything(receiver, expect=8000)
    assert len(paged) == 8000 and set(paged) == {name for names in sent for name in names}
    assert receiver.call("/stats")[2]["events"] == 8000
    children = Path(f"/proc/{receiver.process.pid}/task/{receiver.process.pid}/children")
    assert len(children.read_text().split()) == 4  # gunicorn's master and its 4 workers


def test_a_loader_paging_while_four_workers_write_sees_every_event_exactly_once(
    receivers: Any, database_url: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """Commits are made to come out of order: one batch's transaction in five waits 50 ms
    after its events are written. A loader paging by a serial id would skip the events
    of a transaction that commits after a later one was handed out (without the store's
    horizon, this test fails in most runs). The writers are 4 ``send`` processes."""
    receiver = receivers(database_url, "--workers", "4")
    assert receiver.call("/healthz")[0] == 200  # migrated: the trigger has a table
    postgres_server.execute(
        "CREATE FUNCTION jitter() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN IF random() < 0.2 THEN PERFORM pg_sleep(0.05); END IF; RETURN NEW; END $$;"
        "CREATE TRIGGER jitter AFTER INSERT ON batches FOR EACH ROW EXECUTE FUNCTION jitter()",
        database_url.rsplit("/", 1)[1],
    )
    sent = [[f"w{writer}-{n}" for n in range(500)] for writer in range(4)]
    writers = []
    for number, names in enumerate(sent):
        lines = (json.dumps({"event": "dl_view_item", "event_id": name}) for name in names)
        (tmp_path / f"{number}.jsonl").write_text("\n".join(lines) + "\n")
        writer = subprocess.Popen(
            [sys.executable, "-m", "campaign_cart_analytics", "send", f"{number}.jsonl",
             "--endpoint", receiver.url, "--batch-size", "10"],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        writers.append(writer)
    loaded: list[str] = []
    cursor, pages, pages_while_writing = "0", 0, 0
    deadline = time.monotonic() + 30
    while len(loaded) < 2000 and time.monotonic() < deadline:
        writing = any(writer.poll() is None for writer in writers)
        if not writing:
            deadline = min(deadline, time.monotonic() + 3)  # the rest is visible by then
        status, _, page = receiver.call(f"/events?after={cursor}&limit=37")
        assert status == 200
        loaded += [event["event_id"] for event in page["events"]]
        cursor, pages = page["next"], pages + 1
        pages_while_writing += writing
    assert [writer.wait(timeout=10) for writer in writers] == [0] * 4  # all delivered
    assert pages_while_writing > 10  # the loader did page while the writers wrote
    assert sorted(loaded) == sorted(name for names in sent for name in names)


def test_the_database_down_at_start_and_stopped_mid_stream_costs_503s_not_events(
    receivers: Any, postgres_server: PostgresServer
) -> None:
    """The session's server, stopped and started (and started again in any case)."""
    database = postgres_server
    url = database.url(database.create_database(), password=SECRET)
    try:
        database.stop()
        receiver = receivers(url, "--connect-timeout", "1", "--retry-after", "1")
        status, headers, answer = receiver.call("/healthz")
        assert status == 503 and headers["Retry-After"] == "1"
        assert "database is unavailable" in answer["error"]
        assert receiver.call("/analytics", batch("early"))[0] == 503
        database.start()
        assert wait_until(lambda: receiver.call("/healthz")[0] == 200, timeout=15)
        names = [f"e{n}" for n in range(200)]
        stopped_and_started = threading.Thread(target=_restart, args=(database, receiver))
        with cca.Analytics(receiver.url, batch_size=25, batch_interval_ms=50) as client:
            for n, name in enumerate(names):
                client.track("dl_view_item", {"n": n, "event_id": name})
                if n == 50:
                    stopped_and_started.start()
                time.sleep(0.003)
            assert client.flush(timeout=30)
            stats = client.stats()
        stopped_and_started.join()
        assert (stats.delivered, stats.dropped) == (200, 0)
        assert sorted(page_everything(receiver, expect=200)) == sorted(names)
        printed = receiver.stop()
    finally:
        if database.pid() is None:
            database.start()
    assert " 503 " in printed and "Retry-After" not in printed
    assert "Traceback" not in printed and " 500 " not in printed
    assert SECRET not in printed and "postgres:***@127.0.0.1" in printed


def _restart(database: PostgresServer, receiver: Receive) -> None:
    database.stop("fast")  # connections in use are cut, transactions in flight abort
    wait_until(lambda: receiver.call("/analytics", batch("probe"))[0] == 503, timeout=5)
    time.sleep(0.3)
    database.start()


def post_to(server: Any, body: bytes) -> tuple[int, dict[str, str], Any]:
    return http_json(server.url, body)


def test_a_statement_over_the_timeout_is_a_503_and_stores_nothing_of_the_batch(
    database_url: str,
) -> None:
    import psycopg

    server = serve(create_app(database_url, statement_timeout=0.3, retry_after=2))
    try:
        assert post_to(server, batch("first"))[0] == 202  # migrated
        with psycopg.connect(database_url) as blocker:  # holds the lock until it rolls back
            blocker.execute("LOCK TABLE batches IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            status, headers, answer = post_to(server, batch("a", "b"))
            waited = time.monotonic() - started
            blocker.rollback()
        assert (status, headers["Retry-After"]) == (503, "2") and 0.25 < waited < 3
        assert answer == {"success": False, "error": "the database is unavailable; retry after 2 s"}
        assert server.app.store.stats()["events"] == 1  # a and b, written first, rolled back
        assert post_to(server, batch("a", "b"))[2]["duplicates"] == 0  # the retry stores them
    finally:
        server.stop()


def test_an_event_jsonb_cannot_hold_is_a_400_and_its_batch_is_not_stored(
    database_url: str,
) -> None:
    server = serve(create_app(database_url))
    try:
        events = [
            {"event": "ok", "event_id": "fine", "event_time": "2025-01-12T10:30:00Z"},
            {"event": "nul", "event_id": "nul", "event_time": "2025-01-12T10:30:00Z",
             "note": "a\u0000b"},
        ]  # fmt: skip
        body = json.dumps({"events": events, "batch_info": {"size": 2}}).encode()
        status, _, answer = post_to(server, body)
        assert status == 400 and "PostgreSQL cannot store an event" in answer["error"]
        assert server.app.store.stats()["events"] == 0
    finally:
        server.stop()


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_an_event_id_or_name_too_long_to_index_is_a_400_naming_it(
    store: str, database_url: str
) -> None:
    server = serve(create_app(database_url if store == "postgresql" else ":memory:"))
    try:
        longest = "\U0001d11e" * 512  # 2,048 bytes of UTF-8: PostgreSQL's index takes it
        for too_long, field in (("i" * 513, "event_id"), ("n" * 3000, "event")):
            events = [
                {"event": "ok", "event_id": longest, "event_time": "2025-01-12T10:30:00Z"},
                {"event": "ok", "event_id": "fine", "event_time": "2025-01-12T10:30:00Z"},
            ]
            events[1][field] = too_long
            body = json.dumps({"events": events, "batch_info": {"size": 2}}).encode()
            status, _, answer = post_to(server, body)
            assert (status, answer["error"]) == (
                400,
                f"events[1].{field} is {len(too_long)} characters long; at most 512",
            )
        body = json.dumps({"events": events[:1], "batch_info": {"size": 1}}).encode()
        assert post_to(server, body)[0] == 202
        assert [e["event_id"] for e in server.app.store.events()] == [longest]
    finally:
        server.stop()


def test_a_password_given_as_a_query_parameter_is_never_printed(database_url: str) -> None:
    receiver = Receive(f"{database_url}?password={SECRET}")
    try:
        assert receiver.call("/healthz")[0] == 200
    finally:
        printed = receiver.stop()
    assert "?password=***" in printed and SECRET not in printed


def test_the_schema_is_versioned_and_one_newer_than_this_release_is_refused(
    database_url: str, postgres_server: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    name = database_url.rsplit("/", 1)[1]
    for _ in range(2):  # the second start applies nothing again
        store = open_store(database_url)
        store.check()
        store.close()
    assert postgres_server.execute("SELECT version FROM schema_migrations", name) == [(1,)]
    columns = postgres_server.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = 'events' ORDER BY column_name",
        name,
    )
    assert ("event", "jsonb") in columns and ("received_at", "timestamp with time zone") in columns
    postgres_server.execute("INSERT INTO schema_migrations (version) VALUES (2)", name)
    assert main(["receive", "--port", "0", "--database", database_url]) == 2
    assert "the database's schema is version 2, newer than this release" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "words"),
    [
        (f"postgresql://shop:{SECRET}@127.0.0.1:port/db", "is not postgresql://USER@HOST:PORT/DB"),
        (f"postgres://shop:{SECRET}@[::1/db", "is not postgresql://USER@HOST:PORT/DB"),
        (f"postgresql://shop:{SECRET}@127.0.0.1:5432", "names no database"),
        (f"postgresql://shop:%zz{SECRET}@127.0.0.1/db", "libpq cannot read the PostgreSQL URL"),
        ("postgresql://shop@127.0.0.1/db?bogus=1", 'invalid URI query parameter: "bogus"'),
        (f"mysql://shop:{SECRET}@127.0.0.1/db", "must be sqlite:///PATH or postgresql://"),
        ("sqlite://relative.db", "sqlite:///PATH (three slashes)"),
    ],
)
def test_a_bad_database_url_is_a_one_line_error_without_the_password(
    url: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["receive", "--port", "0", "--database", url]) == 2
    printed = capsys.readouterr()
    assert words in printed.err and len(printed.err.strip().splitlines()) == 1
    assert SECRET not in printed.out + printed.err
