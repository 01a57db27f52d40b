"""Celery tasks for the prefork test: a filesystem broker in CELERY_DIR, no services needed."""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery

import campaign_cart_analytics as cca

work_dir = Path(os.environ["CELERY_DIR"])
app = Celery("celery_tasks")
app.conf.update(
    broker_url="filesystem://",
    broker_transport_options={
        "data_folder_in": str(work_dir / "broker"),
        "data_folder_out": str(work_dir / "broker"),
        "control_folder": str(work_dir / "control"),  # not beside the test files
        "polling_interval": 0.1,
    },
    task_ignore_result=True,
    worker_hijack_root_logger=False,
)
analytics = cca.Analytics(os.environ["CCA_ENDPOINT"], batch_interval_ms=60_000)


def _done(name: str, n: int) -> None:
    with open(work_dir / "done.txt", "a") as done:
        done.write(f"{name} {n}\n")


@app.task
def plain(n: int) -> None:
    """Tracks and returns: its event waits in the child's queue until the child exits."""
    analytics.track("plain_task", {"n": n, "pid": os.getpid()})
    _done("plain", n)


@app.task
@analytics.flushing(timeout=2)
def flushed(n: int) -> None:
    """The documented pattern: delivered before the task returns."""
    analytics.track("flushed_task", {"n": n, "pid": os.getpid()})
    _done("flushed", n)
