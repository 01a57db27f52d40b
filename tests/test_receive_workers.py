"""``receive --workers`` and ``--database`` on SQLite; a locked SQLite file is a 503."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import http_json

from campaign_cart_analytics.cli import main
from campaign_cart_analytics.receiver import create_app, serve

COMMAND = [sys.executable, "-m", "campaign_cart_analytics", "receive", "--port", "0"]


def call(url: str, body: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    return http_json(url, body)


def batch(*ids: str) -> bytes:
    events = [{"event": "x", "event_id": i, "event_time": "2025-01-12T10:30:00Z"} for i in ids]
    return json.dumps({"events": events, "batch_info": {"size": len(ids)}}).encode()


def test_workers_on_a_sqlite_file_serve_and_stop_cleanly(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'events.sqlite3'}"
    process = subprocess.Popen(
        [*COMMAND, "--database", database, "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip().removeprefix("Listening on ")
        base = url.rsplit("/", 1)[0]
        answers = [call(url, batch(f"e{n}", "shared"))[2]["duplicates"] for n in range(6)]
        assert answers == [0, 1, 1, 1, 1, 1]
        assert call(base + "/stats")[2]["events"] == 7
        assert call(base + "/healthz")[0] == 200
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0
    assert "serving from 2 worker processes (gunicorn)" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--workers", "2", "--db", ":memory:"], "--workers needs a database they share"),
        (["--workers", "2", "--database", "sqlite://"], "--workers needs a database they share"),
        (["--workers", "0"], "--workers must be from 1 to 256"),
        (["--threads", "0"], "--threads must be from 1 to 256"),
        (["--statement-timeout", "0"], "--statement-timeout must be more than 0"),
        (["--retry-after", "-1"], "--retry-after must be from 0 to 3600"),
    ],
)
def test_bad_worker_and_timeout_options_are_one_line_errors(
    args: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["receive", "--port", "0", *args]) == 2
    assert words in capsys.readouterr().err


def test_a_sqlite_file_locked_by_another_writer_is_a_503_with_retry_after(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.sqlite3"
    server = serve(create_app(f"sqlite:///{path}", statement_timeout=0.2, retry_after=3))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holding the write lock
        status, headers, answer = call(server.url, batch("a"))
        assert (status, headers["Retry-After"]) == (503, "3")
        assert answer["error"] == "the database is unavailable; retry after 3 s"
        other.execute("ROLLBACK")
        assert call(server.url, batch("a"))[0] == 202
    finally:
        other.close()
        server.stop()
