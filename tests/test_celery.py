"""A real Celery prefork worker: pool children deliver what they tracked (issue: jobs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("celery")

from helpers import wait_until
from receiver import Receiver

APPS = Path(__file__).parent / "apps"


def test_prefork_children_deliver_at_warm_shutdown(receiver: Receiver, tmp_path: Path) -> None:
    (tmp_path / "broker").mkdir()
    env = {
        **os.environ,
        "CELERY_DIR": str(tmp_path),
        "CCA_ENDPOINT": receiver.url,
        "PYTHONPATH": str(APPS),
        "C_FORCE_ROOT": "1",
    }
    enqueue = "import celery_tasks as t\nfor n in range(8): t.plain.delay(n); t.flushed.delay(n)"
    subprocess.run([sys.executable, "-c", enqueue], env=env, check=True, timeout=30, cwd=APPS)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_tasks", "worker", "--pool", "prefork",
         "--concurrency", "2", "--loglevel", "WARNING", "--without-heartbeat",
         "--without-mingle", "--without-gossip"],
        env=env, cwd=APPS, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        done = tmp_path / "done.txt"
        assert wait_until(
            lambda: done.exists() and len(done.read_text().splitlines()) == 16, timeout=60
        ), "tasks did not run"
        # flushing(): each task's event is delivered before the task returns.
        assert wait_until(
            lambda: sum(e["event"] == "flushed_task" for e in receiver.delivered_events()) == 8
        )
    finally:
        worker.send_signal(signal.SIGTERM)  # warm shutdown
        _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0, stderr
    events = receiver.delivered_events()
    assert sorted(e["n"] for e in events if e["event"] == "plain_task") == list(range(8))
    assert sorted(e["n"] for e in events if e["event"] == "flushed_task") == list(range(8))
    assert len({e["event_id"] for e in events}) == len(events) == 16
    # Pool children tracked, not the main process (under load one child may take every task).
    pids = {e["pid"] for e in events}
    assert 1 <= len(pids) <= 2 and worker.pid not in pids
