"""The durable spool in one process (issue 10): options, fates of batches, bounds and faults.

Process-level behaviour (SIGKILL, restarts, several processes, fork) is in
``test_spool_processes.py``.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import Errors, assert_balanced, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from receiver import Receiver, Reply, refused_url

import campaign_cart_analytics as cca
from campaign_cart_analytics.errors import QueueFullError


def rows(path: Path, where: str = "1") -> list[tuple[Any, ...]]:
    """Rows of the spool's events table, read over a connection of the test's own."""
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT id, body, owner, state FROM events WHERE {where}").fetchall()


def ids_of(received: list[dict[str, Any]]) -> list[str]:
    return [event["event_id"] for event in received]


# ---------------------------------------------------------------- options


def test_spool_options_are_checked_naming_the_option_and_the_rule(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/analytics"
    cases = [
        ({"spool_path": str(tmp_path / "missing" / "s.db")}, "its folder does not exist"),
        ({"spool_path": str(tmp_path)}, "a folder"),
        ({"spool_path": 42}, "spool_path (spoolPath) must be None or the path of a file"),
        ({"spool_path": ""}, "spool_path (spoolPath) must be"),
        ({"spool_sync": "always"}, "spool_sync (spoolSync) must be 'normal' or 'full'"),
        ({"spool_max_bytes": 1000}, "spool_max_bytes (spoolMaxBytes) must be an int from 65536"),
        ({"spool_max_pause_ms": 0}, "spool_max_pause_ms (spoolMaxPauseMs) must be an int"),
    ]
    for options, message in cases:
        with pytest.raises(cca.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            cca.Analytics(url, **options)  # type: ignore[arg-type]
    client = cca.Analytics.from_settings(
        {"endpoint": url, "spoolPath": tmp_path / "s.db", "spoolSync": "full", "enabled": False}
    )
    assert client.config.spool_path == str(tmp_path / "s.db")  # a Path works; kept absolute
    assert client.config.spool_sync == "full"
    assert not (tmp_path / "s.db").exists()  # disabled: no file


# ---------------------------------------------------------------- delivery


def test_an_event_is_on_disk_before_track_returns_and_deleted_once_delivered(
    make_client: Any, receiver: Receiver, tmp_path: Path
) -> None:
    path = tmp_path / "spool.db"
    client = make_client(spool_path=str(path), batch_size=10, batch_interval_ms=60_000)
    event_id = client.track("dl_add_to_cart", {"ecommerce": {"value": 1}})
    [(_, body, owner, state)] = rows(path)  # another connection sees it committed
    assert json.loads(body)["event_id"] == event_id and owner and state == 0
    for i in range(24):
        client.track("dl_view_item", {"i": i})
    assert client.flush(timeout=5) is True
    events = receiver.delivered_in_tracking_order()
    assert ids_of(events)[0] == event_id and [e.get("i") for e in events[1:]] == list(range(24))
    assert len(receiver.requests) == 3  # batches of 10, 10, 5
    stats = client.stats()
    assert (stats.delivered, stats.queued, stats.spool_depth, stats.spool_fallback) == (25, 0, 0, 0)
    assert rows(path) == []
    assert_balanced(stats)


def test_a_rejected_batch_goes_to_the_dead_letters_with_status_and_body(
    make_client: Any, receiver: Receiver, tmp_path: Path
) -> None:
    path = tmp_path / "spool.db"
    receiver.respond = lambda request: Reply(422, body=b'{"error": "item_id missing"}')
    errors = Errors()
    client = make_client(spool_path=str(path), batch_size=3, on_error=errors)
    tracked = [client.track("dl_purchase", {"n": n}) for n in range(3)]
    assert client.flush(timeout=5) is False  # a loss, reported
    stats = client.stats()
    assert (stats.dropped_delivery, stats.spool_dead_letters, stats.spool_depth) == (3, 3, 0)
    assert ids_of(errors.events) == tracked
    with sqlite3.connect(path) as conn:
        letters = conn.execute("SELECT body, status, problem FROM dead_letters").fetchall()
    assert [json.loads(body)["event_id"] for body, _, _ in letters] == tracked
    assert {status for _, status, _ in letters} == {422}
    assert "item_id missing" in letters[0][2]
    assert_balanced(stats)


def test_an_outage_longer_than_the_retries_loses_nothing(
    make_client: Any, receiver: Receiver, tmp_path: Path, sdk_logs: Any
) -> None:
    down_until = time.monotonic() + 1.0
    receiver.respond = lambda request: Reply(500 if time.monotonic() < down_until else 202)
    errors = Errors()
    client = make_client(
        spool_path=str(tmp_path / "spool.db"), batch_size=10, max_retries=1,
        retry_delay_ms=20, spool_max_pause_ms=200, on_error=errors,
    )  # fmt: skip
    tracked = [client.track("dl_view_item", {"i": i}) for i in range(50)]
    # Retries run out in ~60 ms: the batches are kept, the flush settles and says False.
    assert client.flush(timeout=5) is False
    stats = client.stats()
    assert stats.queued == 50 and stats.dropped == 0 and stats.spool_depth == 50
    assert "kept in the spool" in sdk_logs.text
    assert wait_until(lambda: client.stats().delivered == 50, timeout=8)
    assert sorted(ids_of(receiver.delivered_events())) == sorted(tracked)
    assert errors.calls == []  # nothing was dropped
    assert client.flush(timeout=5) is True
    assert_balanced(client.stats())


def test_shutdown_leaves_undelivered_events_on_disk_and_the_next_client_sends_them_first(
    receiver: Receiver, tmp_path: Path, sdk_logs: Any
) -> None:
    path = str(tmp_path / "spool.db")
    first = cca.Analytics(refused_url(), spool_path=path, batch_size=5, retry_delay_ms=10)
    old = [first.track("old", {"i": i}) for i in range(12)]
    assert first.shutdown(timeout=0.5) is False
    stats = first.stats()
    assert (stats.spooled_at_exit, stats.dropped_shutdown, stats.queued) == (12, 0, 0)
    assert_balanced(stats)
    assert "stay in the spool" in sdk_logs.text
    assert [owner for _, _, owner, _ in rows(Path(path))] == [None] * 12  # handed over

    second = cca.Analytics(receiver.url, spool_path=path, batch_size=5, max_concurrent_requests=1)
    assert second.stats().recovered == 12  # taken over at construction
    new = [second.track("new", {"i": i}) for i in range(3)]
    assert second.flush(timeout=5) is True
    assert ids_of(receiver.delivered_events()) == old + new  # in order, the old ones first
    stats = second.stats()
    assert (stats.recovered, stats.tracked, stats.delivered) == (12, 3, 15)
    assert_balanced(stats)
    second.shutdown(timeout=1)


def test_requeued_dead_letters_are_taken_over_by_a_running_client(
    make_client: Any, receiver: Receiver, tmp_path: Path
) -> None:
    path = tmp_path / "spool.db"
    receiver.script(Reply(400, body=b"bad"))
    client = make_client(spool_path=str(path), batch_size=2)
    tracked = [client.track("e", {"i": i}) for i in range(2)]
    assert client.flush(timeout=5) is False
    command = [sys.executable, "-m", "campaign_cart_analytics", "spool"]
    exported = subprocess.run(
        [*command, "dead-letters", str(path)], capture_output=True, text=True, timeout=30
    )
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [line["event"]["event_id"] for line in lines] == tracked
    assert {line["status"] for line in lines} == {400} and lines[0]["problem"].startswith(
        "HTTP 400"
    )
    requeued = subprocess.run(
        [*command, "requeue", str(path)], capture_output=True, text=True, timeout=30
    )
    assert requeued.returncode == 0 and requeued.stdout.startswith("2 dead letters")
    assert wait_until(lambda: client.stats().delivered == 2, timeout=5)  # its next upkeep
    assert sorted(ids_of(receiver.delivered_events())) == sorted(tracked)
    status = subprocess.run([*command, "status", str(path)], capture_output=True, text=True)
    report = json.loads(status.stdout)
    assert (report["events"], report["dead_letters"], report["owners"][0]["alive"]) == (0, 0, True)
    missing = subprocess.run(
        [*command, "status", str(tmp_path / "none.db")], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "no spool file" in missing.stderr


# ---------------------------------------------------------------- bounds and faults


def test_a_full_spool_refuses_the_newest_events_and_counts_them(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    errors = Errors()
    client = cca.Analytics(
        refused_url(), spool_path=str(path), spool_max_bytes=128 * 1024, batch_size=100,
        batch_interval_ms=60_000, on_error=errors,
    )  # fmt: skip
    results = [client.track("e", {"pad": "x" * 400, "i": i}) for i in range(1000)]
    stats = client.stats()
    accepted = [r for r in results if r is not None]
    # The WAL counts too (a page per commit until a checkpoint empties it): in one tight
    # loop the cap is reached after a few dozen events.
    assert 10 < len(accepted) < 400 and stats.dropped_spool_full == 1000 - len(accepted)
    assert results[0] is not None and results[-1] is None
    assert isinstance(errors.calls[0][1], QueueFullError) and "spool_max_bytes" in str(
        errors.calls[0][1]
    )
    assert stats.spool_depth == len(accepted)  # what was accepted is kept
    companions = [Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm")]
    assert sum(file.stat().st_size for file in companions if file.exists()) <= 160 * 1024
    assert_balanced(stats)
    client.shutdown(timeout=0.2)
    assert_balanced(client.stats())


def test_a_corrupt_file_is_moved_aside_and_a_fresh_spool_started(
    make_client: Any, receiver: Receiver, tmp_path: Path, sdk_logs: Any
) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"this is not a database" * 300)
    client = make_client(spool_path=str(path))
    event_id = client.track("e")
    assert client.flush(timeout=5) is True
    assert ids_of(receiver.delivered_events()) == [event_id]
    [aside] = glob.glob(f"{path}.corrupt-*")
    assert Path(aside).read_bytes().startswith(b"this is not a database")
    errors = [r for r in sdk_logs.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "moved aside" in errors[0].getMessage()
    assert client.stats().spool_fallback == 0  # the fresh file took it


def _read_only_folder(tmp_path: Path) -> Path:
    if os.geteuid() == 0:  # root writes through file modes: use a read-only file system
        return Path("/proc/self")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def test_a_read_only_folder_falls_back_to_memory_with_an_error(
    make_client: Any, receiver: Receiver, tmp_path: Path, sdk_logs: Any
) -> None:
    path = _read_only_folder(tmp_path) / "spool.db"
    client = make_client(spool_path=str(path))
    tracked = [client.track("e", {"i": i}) for i in range(5)]
    assert None not in tracked
    assert client.flush(timeout=5) is True
    assert ids_of(receiver.delivered_in_tracking_order()) == tracked
    stats = client.stats()
    assert (stats.spool_fallback, stats.spool_depth) == (5, None)
    errors = [r for r in sdk_logs.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "kept in memory only" in errors[0].getMessage()
    assert_balanced(stats)


def test_a_file_locked_by_another_writer_never_holds_track_for_long(
    make_client: Any, receiver: Receiver, tmp_path: Path
) -> None:
    path = tmp_path / "spool.db"
    client = make_client(spool_path=str(path), batch_interval_ms=50)
    client.track("before")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process's writer, stuck for 1 s
    release = threading.Timer(1.0, lambda: holder.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    locked_id = client.track("while_locked")
    took = time.monotonic() - started
    release.join()
    holder.close()
    # Waited PUT_WAIT (0.1 s), behind at most an upkeep and a claim of the delivery
    # thread that wait as long: well under the second the file stays locked.
    assert locked_id is not None and took < 0.6, took
    assert client.flush(timeout=5) is True
    assert "while_locked" in {e["event"] for e in receiver.delivered_events()}
    stats = client.stats()
    assert stats.spool_fallback == 1 and stats.delivered == 2
    assert_balanced(stats)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    counts=st.lists(st.integers(0, 30), min_size=1, max_size=4),
    batch_size=st.integers(1, 12),
    concurrency=st.integers(1, 4),
)
def test_generated_runs_deliver_each_event_once_in_order(
    tmp_path_factory: pytest.TempPathFactory, counts: list[int], batch_size: int, concurrency: int
) -> None:
    """Several clients, one after another on one file, each tracking and flushing: every
    event arrives once, each client's in order, and the books balance."""
    receiver = Receiver()
    path = str(tmp_path_factory.mktemp("spool") / "spool.db")
    try:
        tracked: list[str] = []
        for count in counts:
            client = cca.Analytics(
                receiver.url, spool_path=path, batch_size=batch_size,
                max_concurrent_requests=concurrency, batch_interval_ms=20,
            )  # fmt: skip
            tracked += [client.track("e", {"n": n}) for n in range(count)]
            assert client.shutdown(timeout=5) is True
            assert_balanced(client.stats())
        assert sorted(ids_of(receiver.delivered_events())) == sorted(tracked)
        assert rows(Path(path)) == []
    finally:
        receiver.close()


def test_the_spool_waits_out_an_overload_pause_with_concurrent_senders(
    make_client: Any, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.script(*[Reply(429, headers={"Retry-After": "0.2"})] * 2)
    client = make_client(
        spool_path=str(tmp_path / "spool.db"), batch_size=10, max_concurrent_requests=4,
        max_retries=0,
    )  # fmt: skip
    tracked = [client.track("e", {"i": i}) for i in range(80)]
    started = time.monotonic()
    assert client.flush(timeout=5) is True  # a pause costs no retry: nothing was kept
    assert time.monotonic() - started >= 0.19
    assert sorted(ids_of(receiver.delivered_events())) == sorted(tracked)
    stats = client.stats()
    assert (stats.delivered, stats.retries, stats.spool_depth) == (80, 0, 0)
    assert_balanced(stats)


def test_the_spool_command_refuses_files_that_are_not_spools_and_changes_nothing(
    tmp_path: Path,
) -> None:
    other = tmp_path / "app.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER)")
    before = other.read_bytes()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x00not sqlite" * 100)
    command = [sys.executable, "-m", "campaign_cart_analytics", "spool"]
    for path, message in ((other, "not a spool file"), (garbage, "not a database")):
        result = subprocess.run(
            [*command, "requeue", str(path)], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert other.read_bytes() == before
    wrong = subprocess.run(
        [*command, "status", str(other), "--id", "3"], capture_output=True, text=True, timeout=30
    )
    assert wrong.returncode == 2 and "--id goes with requeue only" in wrong.stderr


def test_a_deep_spool_in_an_outage_holds_at_most_max_queue_size_events_in_memory(
    make_client: Any, receiver: Receiver, tmp_path: Path
) -> None:
    path = tmp_path / "spool.db"
    receiver.respond = lambda request: Reply(500)
    client = make_client(
        spool_path=str(path), batch_size=10, max_queue_size=30, max_retries=50,
        retry_delay_ms=50, batch_interval_ms=10,
    )  # fmt: skip
    tracked = [client.track("e", {"i": i}) for i in range(300)]
    assert None not in tracked  # the memory bound does not refuse spooled events
    assert wait_until(lambda: len(receiver.requests) >= 10, timeout=5)
    time.sleep(0.2)
    claimed = len(rows(path, "state = 1"))
    assert 10 <= claimed <= 30, claimed  # parked for retries: never more than 30
    receiver.respond = lambda request: Reply(202)
    assert client.flush(timeout=10) is True
    assert sorted(ids_of(receiver.delivered_events())) == sorted(tracked)
    assert_balanced(client.stats())


def test_a_full_disk_under_way_keeps_events_in_memory_and_delivers_them(
    make_client: Any, receiver: Receiver, tmp_path: Path, sdk_logs: Any
) -> None:
    client = make_client(spool_path=str(tmp_path / "spool.db"), batch_interval_ms=20)
    before = client.track("before")
    # SQLite answers SQLITE_FULL ("database or disk is full") past max_page_count, the very
    # error a full disk gives: cap the file at the pages it has now.
    connection = client._state.pending._rows._db
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count={pages}")
    tracked = [client.track("while_full", {"pad": "x" * 2000, "i": i}) for i in range(20)]
    assert None not in tracked
    assert client.flush(timeout=5) is True
    assert sorted(ids_of(receiver.delivered_events())) == sorted([before, *tracked])
    stats = client.stats()
    assert stats.spool_fallback > 0 and stats.delivered == 21
    full = [r for r in sdk_logs.records if "full" in r.getMessage() and r.levelno == logging.ERROR]
    assert len(full) == 1  # logged once, not per event
    assert_balanced(stats)


def test_an_owner_is_alive_while_its_process_runs_whatever_the_clock_says() -> None:
    from campaign_cart_analytics.spool_file import HOST, owner_alive, process_started

    me, started = os.getpid(), process_started(os.getpid())
    stale = time.time() - 3600
    assert owner_alive(HOST, me, started, stale)  # this host: the process table decides
    assert not owner_alive(HOST, me, "1", time.time())  # the pid now runs another program
    assert not owner_alive("elsewhere", me, started, stale)  # another host: the heartbeat
    assert owner_alive("elsewhere", me, started, time.time())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    assert wait_until(lambda: process_started(child.pid) == "", timeout=10)  # exited, unreaped
    assert not owner_alive(HOST, child.pid, None, time.time())  # a zombie is dead
    child.wait()
    assert not owner_alive(HOST, child.pid, None, time.time())  # reaped: no such process
