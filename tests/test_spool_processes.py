"""The durable spool across real processes (issue 10): SIGKILL, restarts, outages, four
processes on one file, fork, and file faults, against a local receiver.

The receiver may see an event twice (a process killed between the endpoint's
2xx and the delete): what counts is that every ``event_id`` whose ``track()``
returned arrives, so the checks dedupe by ``event_id`` as a receiver would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from receiver import Receiver, Reply
from test_spool import _read_only_folder

HEAD = """
import json, logging, os, sys, time
logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
import campaign_cart_analytics as cca
"""


def script(body: str) -> list[str]:
    return [sys.executable, "-c", HEAD + textwrap.dedent(body)]


def run(body: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(script(body), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result


def delivered_ids(receiver: Receiver) -> Counter[str]:
    return Counter(event["event_id"] for event in receiver.delivered_events())


def last_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    stats: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return stats


STATS = "import attrs; print(json.dumps(attrs.asdict(client.stats())), flush=True)"


def test_sigkill_mid_stream_then_a_restart_delivers_every_returned_id(
    receiver: Receiver, tmp_path: Path
) -> None:
    receiver.respond = lambda request: Reply(202, delay=0.02)  # slow: a backlog forms
    path = str(tmp_path / "spool.db")
    tracker = subprocess.Popen(
        script(
            f"""
            client = cca.Analytics({receiver.url!r}, spool_path={path!r}, batch_size=10,
                                   batch_interval_ms=20, max_concurrent_requests=2)
            i = 0
            while True:
                print(client.track("dl_view_item", {{"i": i}}), flush=True)
                i += 1
            """
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert tracker.stdout is not None
    returned = [tracker.stdout.readline().strip() for _ in range(400)]
    tracker.send_signal(signal.SIGKILL)
    tracker.wait(timeout=10)
    assert tracker.stderr is not None
    rest, stderr = tracker.stdout.read(), tracker.stderr.read()  # through the buffers read
    returned += rest.split("\n")[:-1]  # a cut-off last line was not returned
    assert tracker.returncode == -signal.SIGKILL and "Traceback" not in stderr
    assert "None" not in returned
    before_restart = delivered_ids(receiver)
    assert len(before_restart) < len(returned)  # the kill did leave events undelivered

    receiver.respond = lambda request: Reply(202)
    restarted = run(
        f"""
        client = cca.Analytics({receiver.url!r}, spool_path={path!r}, batch_size=50)
        assert client.flush(timeout=20), client.stats()
        {STATS}
        """
    )
    stats = last_json(restarted)
    assert stats["recovered"] >= len(returned) - len(before_restart)
    arrived = delivered_ids(receiver)
    assert set(returned) <= set(arrived)  # every id track() returned arrived
    duplicates = sum(arrived.values()) - len(arrived)
    assert duplicates <= 20  # at most the two batches that were in flight at the kill


def test_an_outage_outlasting_retries_and_a_restart_then_recovery_loses_nothing(
    receiver: Receiver, tmp_path: Path
) -> None:
    receiver.respond = lambda request: Reply(500)
    path = str(tmp_path / "spool.db")
    options = f"spool_path={path!r}, batch_size=10, max_retries=1, retry_delay_ms=20"
    first = run(
        f"""
        client = cca.Analytics({receiver.url!r}, {options}, shutdown_timeout_ms=300)
        ids = [client.track("dl_view_item", {{"i": i}}) for i in range(100)]
        print(json.dumps(ids), flush=True)
        """  # no flush, no shutdown: the exit hook keeps what it could not send
    )
    tracked = json.loads(first.stdout.splitlines()[0])
    assert "stay in the spool" in first.stderr and "dropped" not in first.stderr
    assert delivered_ids(receiver) == Counter()

    first_request: list[float] = []

    def down_for_a_second(request: Any) -> Reply:  # the restart's first tries fail too
        first_request.append(request.at)
        return Reply(500 if request.at - first_request[0] < 1.0 else 202)

    receiver.respond = down_for_a_second
    second = run(
        f"""
        client = cca.Analytics({receiver.url!r}, {options}, spool_max_pause_ms=200)
        ids = [client.track("dl_purchase", {{"i": i}}) for i in range(20)]
        deadline = time.monotonic() + 15
        while client.stats().delivered < 120 and time.monotonic() < deadline:
            time.sleep(0.02)
        print(json.dumps(ids), flush=True)
        {STATS}
        """
    )
    tracked += json.loads(second.stdout.splitlines()[0])
    stats = last_json(second)
    assert (stats["recovered"], stats["delivered"], stats["dropped_delivery"]) == (100, 120, 0)
    assert stats["retries"] > 0 and "kept in the spool" in second.stderr
    assert set(delivered_ids(receiver)) == set(tracked)


def test_four_processes_share_one_spool_and_each_event_is_sent_once(
    receiver: Receiver, tmp_path: Path
) -> None:
    path = str(tmp_path / "spool.db")
    workers = [
        subprocess.Popen(
            script(
                f"""
                client = cca.Analytics({receiver.url!r}, spool_path={path!r}, batch_size=20,
                                       batch_interval_ms=20, max_concurrent_requests=2)
                ids = [client.track("dl_add_to_cart", {{"worker": {n}, "i": i}})
                       for i in range(400)]
                assert client.shutdown(timeout=20)
                print(json.dumps(ids))
                {STATS}
                """
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    tracked = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=40)
        assert worker.returncode == 0, stderr
        assert "ERROR" not in stderr and "Traceback" not in stderr
        tracked += json.loads(stdout.splitlines()[0])
        assert json.loads(stdout.splitlines()[1])["spool_fallback"] == 0
    arrived = delivered_ids(receiver)
    assert len(tracked) == len(set(tracked)) == 1600
    assert set(arrived) == set(tracked) and max(arrived.values()) == 1  # no event twice
    keys = [request.headers["idempotency-key"] for request in receiver.requests]
    assert len(keys) == len(set(keys))
    for n in range(4):  # each worker's events in its own order
        mine = [e["i"] for e in receiver.delivered_in_tracking_order() if e["worker"] == n]
        assert sorted(mine) == list(range(400))


def test_a_forked_child_opens_its_own_connection_and_nothing_is_sent_twice(
    receiver: Receiver, tmp_path: Path
) -> None:
    path = str(tmp_path / "spool.db")
    result = run(
        f"""
        client = cca.Analytics({receiver.url!r}, spool_path={path!r}, batch_interval_ms=60_000)
        for _ in range(5):
            client.track("parent_before_fork")
        pid = os.fork()
        if pid == 0:
            for _ in range(50):
                client.track("child")
            sys.exit(0)  # the exit hook delivers the child's own
        for _ in range(50):
            client.track("parent_after_fork")
        _, status = os.waitpid(pid, 0)
        assert status == 0, status
        assert client.flush(timeout=10)
        {STATS}
        """
    )
    assert "ERROR" not in result.stderr and "Traceback" not in result.stderr
    names = Counter(event["event"] for event in receiver.delivered_events())
    assert names == {"parent_before_fork": 5, "child": 50, "parent_after_fork": 50}
    assert max(delivered_ids(receiver).values()) == 1
    assert last_json(result)["recovered"] == 0  # the child's were its own, sent by it


@pytest.mark.parametrize("fault", ["corrupt", "read-only"])
def test_a_damaged_or_unwritable_spool_still_delivers_in_a_fresh_process(
    receiver: Receiver, tmp_path: Path, fault: str
) -> None:
    if fault == "corrupt":
        path = tmp_path / "spool.db"
        path.write_bytes(os.urandom(8192))
    else:
        path = _read_only_folder(tmp_path) / "spool.db"
    result = run(
        f"""
        client = cca.Analytics({receiver.url!r}, spool_path={str(path)!r})
        ids = [client.track("e") for _ in range(3)]
        assert client.flush(timeout=5)
        print(json.dumps(ids))
        {STATS}
        """
    )
    tracked = json.loads(result.stdout.splitlines()[0])
    assert set(delivered_ids(receiver)) == set(tracked)
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, result.stderr
    stats = last_json(result)
    if fault == "corrupt":
        assert "moved aside" in errors[0] and stats["spool_fallback"] == 0
        assert list(tmp_path.glob("spool.db.corrupt-*"))
    else:
        assert "kept in memory only" in errors[0] and stats["spool_fallback"] == 3


def test_a_live_process_takes_over_the_events_of_a_sibling_killed_beside_it(
    receiver: Receiver, tmp_path: Path
) -> None:
    path = str(tmp_path / "spool.db")
    doomed = subprocess.Popen(
        script(
            f"""
            from receiver import refused_url
            client = cca.Analytics(refused_url(), spool_path={path!r}, batch_size=10,
                                   max_retries=100, retry_delay_ms=50)
            print(json.dumps([client.track("orphan", {{"i": i}}) for i in range(30)]), flush=True)
            time.sleep(60)
            """
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
    )
    assert doomed.stdout is not None
    orphans = json.loads(doomed.stdout.readline())
    survivor = subprocess.Popen(
        script(
            f"""
            client = cca.Analytics({receiver.url!r}, spool_path={path!r}, batch_size=10,
                                   batch_interval_ms=50)
            print(client.track("survivor"), flush=True)
            deadline = time.monotonic() + 15
            while client.stats().delivered < 31 and time.monotonic() < deadline:
                time.sleep(0.02)
            {STATS}
            """
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert survivor.stdout is not None
    own = survivor.stdout.readline().strip()
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=10)
    stdout, stderr = survivor.communicate(timeout=30)
    assert survivor.returncode == 0, stderr
    stats = json.loads(stdout.splitlines()[-1])
    assert (stats["recovered"], stats["delivered"]) == (30, 31), stats
    assert set(delivered_ids(receiver)) == {own, *orphans}
