"""The durable spool under faults found in review: a file locked while it is opened,
events the file could not take, the WAL's size, the file deleted under a running
client, honest flush()/shutdown() answers in an outage, and the command line's output.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_balanced, wait_until
from receiver import Receiver, Reply
from test_spool import ids_of, rows
from test_spool_processes import script

import campaign_cart_analytics as cca
from campaign_cart_analytics import spool_upkeep


def hold_write_lock(path: Path, seconds: float) -> threading.Timer:
    """Another writer holding the spool's write lock for ``seconds`` (already started)."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")

    def release() -> None:
        holder.execute("COMMIT")
        holder.close()

    timer = threading.Timer(seconds, release)
    timer.start()
    return timer


def make_spool(path: Path) -> None:
    cca.Analytics("http://127.0.0.1:9/a", spool_path=str(path)).shutdown(timeout=1)


def count_rows(path: Path) -> int:
    """The spool's events, or -1 while there is no spool at the path (yet)."""
    try:
        return len(rows(path)) if path.exists() else -1
    except sqlite3.OperationalError:  # being made right now: no table yet
        return -1


def errors_logged(sdk_logs: Any) -> list[str]:
    return [r.getMessage() for r in sdk_logs.records if r.levelno >= logging.ERROR]


# ---------------------------------------------------------------- 1: locked at open


def test_a_spool_locked_while_the_client_opens_it_is_used_once_free(
    make_client: Any, receiver: Receiver, tmp_path: Path, sdk_logs: Any, monkeypatch: Any
) -> None:
    path = tmp_path / "spool.db"
    make_spool(path)
    hold_write_lock(path, 0.3).join(0)  # shorter than OPEN_WAIT: the open waits it out
    client = make_client(spool_path=str(path))
    assert client.stats().spool_depth == 0  # on disk, not memory-only

    # Longer than OPEN_WAIT: the client starts in memory and opens the file in the
    # background; what waited in memory is moved into the file once it opens.
    monkeypatch.setattr(spool_upkeep, "OPEN_WAIT", 0.1)
    receiver.respond = lambda request: Reply(500)
    timer = hold_write_lock(path, 0.8)
    late = make_client(spool_path=str(path), max_retries=0, batch_interval_ms=10)
    tracked = [late.track("e", {"i": i}) for i in range(5)]
    assert None not in tracked and late.stats().spool_fallback == 5
    timer.join()
    assert wait_until(lambda: len(rows(path)) == 5, timeout=5), late.stats()
    assert late.stats().dropped == 0 and late.stats().spool_depth == 5
    receiver.respond = lambda request: Reply(202)
    assert wait_until(lambda: late.stats().delivered == 5, timeout=8), late.stats()
    assert sorted(ids_of(receiver.delivered_events())) == sorted(tracked)
    assert errors_logged(sdk_logs) == []  # a passing lock is no ERROR
    assert_balanced(late.stats())


# ---------------------------------------------------------------- 2: events not yet on disk


def test_events_the_file_could_not_take_are_never_dropped_after_retries(
    make_client: Any, receiver: Receiver, tmp_path: Path
) -> None:
    path = tmp_path / "spool.db"
    receiver.respond = lambda request: Reply(500)
    client = make_client(
        spool_path=str(path), max_retries=0, retry_delay_ms=20, spool_max_pause_ms=100,
        batch_interval_ms=10, max_queue_size=20,
    )  # fmt: skip
    on_disk = [client.track("disk", {"i": i}) for i in range(30)]  # more than max_queue_size
    timer = hold_write_lock(path, 0.6)
    fallback = [client.track("mem", {"i": i}) for i in range(3)]
    assert None not in fallback  # the 30 on disk do not count against max_queue_size
    assert wait_until(lambda: len(receiver.requests) >= 2, timeout=5)  # memory batch failed
    timer.join()
    assert wait_until(
        lambda: len(rows(path, "CAST(body AS TEXT) LIKE '%\"mem\"%'")) == 3, timeout=5
    )
    stats = client.stats()
    assert stats.dropped == 0 and stats.spool_fallback >= 1, stats
    receiver.respond = lambda request: Reply(202)
    assert wait_until(lambda: client.stats().delivered == 33, timeout=8), client.stats()
    assert sorted(ids_of(receiver.delivered_events())) == sorted(on_disk + fallback)
    assert_balanced(client.stats())


def test_fallback_events_reach_the_file_and_survive_a_kill(
    receiver: Receiver, tmp_path: Path
) -> None:
    path = tmp_path / "spool.db"
    make_spool(path)
    receiver.respond = lambda request: Reply(500)
    timer = hold_write_lock(path, 0.8)
    child = subprocess.Popen(
        script(f"""
            client = cca.Analytics({receiver.url!r}, spool_path={str(path)!r},
                                   max_retries=0, retry_delay_ms=10_000)
            for i in range(5):
                print(client.track("e", {{"i": i}}), flush=True)
            time.sleep(60)
        """),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdout is not None
    tracked = [child.stdout.readline().strip() for _ in range(5)]
    timer.join()
    try:
        assert wait_until(lambda: len(rows(path)) == 5, timeout=6)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    receiver.respond = lambda request: Reply(202)
    after = cca.Analytics(receiver.url, spool_path=str(path))
    assert after.flush(timeout=5) is True
    after.shutdown(timeout=1)
    assert sorted(set(ids_of(receiver.delivered_events()))) == sorted(tracked)


def test_a_file_that_refuses_writes_costs_no_busy_loop_and_nothing_is_lost(
    make_client: Any, receiver: Receiver, tmp_path: Path
) -> None:
    client = make_client(spool_path=str(tmp_path / "spool.db"), batch_interval_ms=100)
    connection = client._state.pending._rows._db
    tracked = [client.track("e", {"i": i}) for i in range(5)]  # on disk, due in 0.1 s
    connection.execute("PRAGMA query_only=1")  # every write fails at once, as on a full disk
    tracked += [client.track("e", {"i": i}) for i in range(5, 10)]  # kept in memory
    time.sleep(0.1)
    started, cpu = time.monotonic(), time.process_time()
    time.sleep(0.6)
    used = (time.process_time() - cpu) / (time.monotonic() - started)
    assert used < 0.15, f"{used:.0%} of a core while the file refuses writes"
    connection.execute("PRAGMA query_only=0")
    assert client.flush(timeout=8) is True
    assert sorted(ids_of(receiver.delivered_events())) == sorted(tracked)
    assert_balanced(client.stats())


def test_a_client_left_in_memory_waits_quietly_for_its_batch_interval(
    make_client: Any, tmp_path: Path
) -> None:
    from test_spool import _read_only_folder

    client = make_client(
        spool_path=str(_read_only_folder(tmp_path) / "spool.db"), batch_interval_ms=3_000
    )
    client.track("e")  # in memory for good, due in 3 s: nothing to move, nothing to do
    started, cpu = time.monotonic(), time.process_time()
    time.sleep(0.5)
    used = (time.process_time() - cpu) / (time.monotonic() - started)
    assert used < 0.15, f"{used:.0%} of a core while waiting"


# ---------------------------------------------------------------- 3: the WAL counts


def spool_bytes(path: Path) -> int:
    files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
    return sum(file.stat().st_size for file in files if file.exists())


def test_spool_max_bytes_counts_the_wal_and_checkpoints_keep_it_small(
    make_client: Any, receiver: Receiver, tmp_path: Path
) -> None:
    path = tmp_path / "spool.db"
    receiver.respond = lambda request: Reply(500)
    cap = 2**20
    client = make_client(
        spool_path=str(path), spool_max_bytes=cap, max_retries=0, retry_delay_ms=60_000,
        batch_size=100,
    )  # fmt: skip
    largest = 0
    accepted = 0
    for i in range(8000):
        accepted += client.track("e", {"i": i}) is not None
        if i % 50 == 0:  # a busy web app, not one loop: the delivery thread gets a turn
            largest = max(largest, spool_bytes(path))
            time.sleep(0.001)
    largest = max(largest, spool_bytes(path))
    assert largest <= cap * 1.1, (largest, accepted)
    assert accepted >= 2000, accepted  # the cap is the file's, not a guess far below it
    time.sleep(1.2)  # an upkeep: a checkpoint empties the WAL
    assert spool_bytes(path) <= cap * 1.1
    assert client.stats().spool_depth == accepted
    assert_balanced(client.stats())


# ---------------------------------------------------------------- 4: the file deleted


@pytest.mark.parametrize("fault", ["deleted", "replaced"])
def test_a_spool_deleted_or_replaced_under_a_running_client_is_made_again_with_its_events(
    make_client: Any, receiver: Receiver, tmp_path: Path, sdk_logs: Any, fault: str
) -> None:
    path = tmp_path / "spool.db"
    receiver.respond = lambda request: Reply(500)
    client = make_client(
        spool_path=str(path), max_retries=0, retry_delay_ms=60_000, batch_interval_ms=10
    )
    tracked = [client.track("before", {"i": i}) for i in range(20)]
    assert wait_until(lambda: len(rows(path, "state = 2")) == 20)  # kept: deferred
    for suffix in ("", "-wal", "-shm"):
        os.remove(f"{path}{suffix}")
    if fault == "replaced":
        make_spool(tmp_path / "other.db")
        os.replace(tmp_path / "other.db", path)
    assert wait_until(lambda: count_rows(path) == 20, timeout=4)
    tracked += [client.track("after", {"i": i}) for i in range(20)]
    assert len(rows(path)) == 40 and client.stats().spool_depth == 40
    assert any("deleted or replaced" in message for message in errors_logged(sdk_logs))
    receiver.respond = lambda request: Reply(202)
    other = cca.Analytics(receiver.url, spool_path=str(path))  # as after a kill: the file
    assert other.flush(timeout=5) is True  # holds them, owned by a live process
    other.shutdown(timeout=1)
    client.shutdown(timeout=0.5)  # leaves them for the next client
    last = cca.Analytics(receiver.url, spool_path=str(path))
    assert last.flush(timeout=5) is True
    last.shutdown(timeout=1)
    assert sorted(ids_of(receiver.delivered_events())) == sorted(tracked)


# ---------------------------------------------------------------- 5: honest answers


@pytest.mark.parametrize("flush_first", [True, False])
def test_flush_and_shutdown_answer_false_while_events_stay_undelivered(
    make_client: Any, receiver: Receiver, tmp_path: Path, flush_first: bool
) -> None:
    receiver.respond = lambda request: Reply(500)
    client = make_client(
        spool_path=str(tmp_path / "spool.db"), max_retries=0, retry_delay_ms=5_000,
        batch_size=10,
    )  # fmt: skip
    for i in range(5):
        client.track("e", {"i": i})
    if flush_first:
        assert client.flush(timeout=3) is False
        assert client.flush(timeout=3) is False  # every time, not once
        assert client.stats().queued == 5 and client.stats().delivered == 0
    assert client.shutdown(timeout=1) is False
    stats = client.stats()
    assert stats.spooled_at_exit == 5
    assert stats.last_error is not None and "HTTP 500" in stats.last_error
    assert_balanced(stats)


def test_flush_answers_true_again_once_the_kept_events_are_delivered(
    make_client: Any, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.respond = lambda request: Reply(500)
    client = make_client(
        spool_path=str(tmp_path / "spool.db"), max_retries=0, retry_delay_ms=50,
        spool_max_pause_ms=100,
    )  # fmt: skip
    client.track("e")
    assert client.flush(timeout=3) is False
    receiver.respond = lambda request: Reply(202)
    assert wait_until(lambda: client.stats().delivered == 1, timeout=5)
    assert client.flush(timeout=3) is True


# ---------------------------------------------------------------- 6: the command line


def test_dead_letters_output_refuses_the_spool_itself_and_folders(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    make_spool(path)
    with sqlite3.connect(path) as conn:  # a dead letter, and a WAL and shared memory
        conn.execute(
            "INSERT INTO dead_letters (body, batch_id, status, problem, failed_at) "
            "VALUES ('{}', 'b', 400, 'bad', 0)"
        )
        holder = sqlite3.connect(path)
        holder.execute("SELECT count(*) FROM events").fetchone()
    (tmp_path / "link.db").symlink_to(path)
    before = {name: Path(f"{path}{name}").read_bytes() for name in ("", "-wal", "-shm")}
    command = [sys.executable, "-m", "campaign_cart_analytics", "spool", "dead-letters"]
    outputs = [path, f"{path}-wal", f"{path}-shm", tmp_path / "link.db", tmp_path]
    for output in outputs:
        result = subprocess.run(
            [*command, str(path), "--output", str(output)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 2, (output, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "--output" in result.stderr
        assert "Traceback" not in result.stderr
    holder.close()
    for name, content in before.items():
        if name != "-shm":  # the last reader going may rewrite it
            assert Path(f"{path}{name}").read_bytes() == content, name
    fine = subprocess.run(
        [*command, str(path), "--output", str(tmp_path / "out.jsonl")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert fine.returncode == 0 and '"problem": "bad"' in (tmp_path / "out.jsonl").read_text()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
