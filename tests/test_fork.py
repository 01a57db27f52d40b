"""Fork safety in real processes: os.fork, multiprocessing, gunicorn --preload (SPEC section 7)."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from helpers import wait_until
from receiver import Receiver, free_port
from test_process import run_script

APPS = Path(__file__).parent / "apps"


def test_a_forked_child_starts_empty_and_the_parent_sends_its_own(receiver: Receiver) -> None:
    run_script(
        f"""
        import os, sys
        import campaign_cart_analytics as cca
        analytics = cca.Analytics({receiver.url!r}, batch_interval_ms=60_000)
        shared = {{"user_properties": {{"session_id": "sess_shared"}}}}
        for _ in range(5):
            analytics.track("parent_before_fork", shared)
        pid = os.fork()
        if pid == 0:
            stats = analytics.stats()
            assert (stats.tracked, stats.queued) == (0, 0), stats
            for _ in range(300):
                analytics.track("child", shared)
            sys.exit(0)  # no flush: the child's exit hook delivers
        for _ in range(300):
            analytics.track("parent_after_fork", shared)
        _, status = os.waitpid(pid, 0)
        assert status == 0, status
        """
    )
    events = receiver.delivered_events()
    names = [e["event"] for e in events]
    assert names.count("parent_before_fork") == 5  # sent by the parent only, once
    assert names.count("child") == 300 and names.count("parent_after_fork") == 300
    ids = [e["event_id"] for e in events]
    assert len(set(ids)) == len(ids) == 605  # same session, same milliseconds, distinct ids


@pytest.mark.parametrize("use_pool", [False, True])
def test_multiprocessing_fork_children_deliver_at_exit(receiver: Receiver, use_pool: bool) -> None:
    run_script(
        f"""
        import multiprocessing as mp
        import campaign_cart_analytics as cca
        analytics = cca.Analytics({receiver.url!r}, batch_interval_ms=60_000)
        analytics.track("parent")

        def work(n):
            for i in range(10):
                analytics.track("child", {{"worker": n, "i": i}})
            return n

        if __name__ == "__main__":
            ctx = mp.get_context("fork")
            if {use_pool!r}:
                pool = ctx.Pool(2)
                assert sorted(pool.map(work, range(4))) == [0, 1, 2, 3]
                pool.close()
                pool.join()
            else:
                children = [ctx.Process(target=work, args=(n,)) for n in range(4)]
                for child in children:
                    child.start()
                for child in children:
                    child.join()
                assert [c.exitcode for c in children] == [0, 0, 0, 0]
        """
    )
    events = receiver.delivered_events()
    child_events = sorted((e["worker"], e["i"]) for e in events if e["event"] == "child")
    assert child_events == [(n, i) for n in range(4) for i in range(10)]
    assert [e["event"] for e in events].count("parent") == 1
    assert len({e["event_id"] for e in events}) == len(events) == 41


def test_gunicorn_preload_two_workers_lose_and_duplicate_nothing(receiver: Receiver) -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--preload", "--workers", "2", "--threads", "4",
         "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "10", "gunicorn_app:app"],
        cwd=APPS,
        env={**os.environ, "CCA_ENDPOINT": receiver.url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"{base}/buy?n=-1", timeout=1):
                    return True
            except OSError:
                return False

        assert wait_until(answers, timeout=20), "gunicorn did not start"

        def buy(n: int) -> int:
            with urllib.request.urlopen(f"{base}/buy?n={n}", timeout=10) as response:
                return int(response.read())

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            pids = set(pool.map(buy, range(60)))
        assert len(pids) == 2, pids  # both forked workers tracked
    finally:
        server.send_signal(signal.SIGTERM)  # graceful stop: workers exit, flushing
        _, stderr = server.communicate(timeout=30)
    assert server.returncode == 0, stderr
    events = receiver.delivered_events()
    requests = sorted(e["request"] for e in events if e["event"] == "dl_purchase")
    assert requests[requests.count(-1) :] == list(range(60))  # each request's event exactly once
    assert [e["event"] for e in events].count("app_booted") == 1  # the master's, sent once
    assert len({e["event_id"] for e in events}) == len(events)
    assert "Traceback" not in stderr
