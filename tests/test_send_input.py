"""``send`` on input that is not clean UTF-8 JSON Lines, in subprocesses against a local receiver.

Bytes that are not UTF-8, a lone surrogate escaped in JSON, a line nested too
deeply: each is a malformed line (``FILE:LINE: problem``, skipped, or the end of
the run with ``--strict``), never a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from receiver import Receiver

COMMAND = [sys.executable, "-m", "campaign_cart_analytics", "send"]
BOM = b"\xef\xbb\xbf"


def send(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    """Run ``send``; its output decoded leniently, so that the test sees whatever it printed."""
    done = subprocess.run([*COMMAND, *args], input=stdin, capture_output=True, timeout=60)
    return subprocess.CompletedProcess(
        done.args,
        done.returncode,
        done.stdout.decode("utf-8", "backslashreplace"),
        done.stderr.decode("utf-8", "backslashreplace"),
    )


def line(name: str, **properties: object) -> bytes:
    return json.dumps({"event": name, **properties}).encode() + b"\n"


def names(receiver: Receiver) -> list[str]:
    return [e["event"] for e in receiver.delivered_events()]


def test_lines_that_are_not_utf8_are_reported_and_skipped(
    receiver: Receiver, tmp_path: Path
) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        line("ok_1")
        + '{"event": "café"}\n'.encode("latin-1")
        + line("ok_2")
        + b"\xff\xfe{\x00}\x00\n"
    )
    result = send(str(path), "--endpoint", receiver.url)
    assert result.returncode == 1
    assert f"{path}:2: not valid UTF-8 (byte 0xe9 at column 15" in result.stderr
    assert f"{path}:4: not valid UTF-8 (byte 0xff at column 1" in result.stderr
    assert "Traceback" not in result.stderr
    assert "2 delivered" in result.stdout and "2 invalid lines" in result.stdout
    assert names(receiver) == ["ok_1", "ok_2"]

    strict = send(str(path), "--endpoint", receiver.url, "--strict")
    assert strict.returncode == 1
    assert f"{path}:2: not valid UTF-8" in strict.stderr and f"{path}:4:" not in strict.stderr
    assert "stopped at the first malformed line" in strict.stderr
    assert "1 delivered" in strict.stdout


def test_standard_input_that_is_not_utf8_is_reported_the_same_way(receiver: Receiver) -> None:
    result = send("-", "--endpoint", receiver.url, stdin=line("ok") + b'{"event": "\x80"}\n')
    assert result.returncode == 1
    assert "<stdin>:2: not valid UTF-8 (byte 0x80 at column 12" in result.stderr
    assert "Traceback" not in result.stderr
    assert names(receiver) == ["ok"]


def test_a_utf8_bom_at_the_start_is_accepted(receiver: Receiver, tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(BOM + line("café") + line("ok"))
    result = send(str(path), "--endpoint", receiver.url)
    assert result.returncode == 0, result.stderr
    piped = send("--endpoint", receiver.url, stdin=BOM + line("piped"))
    assert piped.returncode == 0, piped.stderr
    assert names(receiver) == ["café", "ok", "piped"]


def test_a_bom_after_the_start_is_a_malformed_line(receiver: Receiver, tmp_path: Path) -> None:
    path = tmp_path / "joined.jsonl"
    path.write_bytes(line("ok") + BOM + line("second"))  # two files concatenated
    result = send(str(path), "--endpoint", receiver.url)
    assert result.returncode == 1 and f"{path}:2: not JSON" in result.stderr
    assert names(receiver) == ["ok"]


def test_windows_line_endings_are_fine(receiver: Receiver, tmp_path: Path) -> None:
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(
        line("a").replace(b"\n", b"\r\n") + b"\r\n" + line("b").replace(b"\n", b"\r\n")
    )
    result = send(str(path), "--endpoint", receiver.url)
    assert result.returncode == 0, result.stderr
    assert names(receiver) == ["a", "b"]


def test_a_lone_surrogate_is_a_malformed_line_not_a_traceback(
    receiver: Receiver, tmp_path: Path
) -> None:
    path = tmp_path / "surrogates.jsonl"
    path.write_bytes(
        b'{"event":"x","note":"\\ud800"}\n'
        + b'{"event":"\\udfff"}\n'
        + b'{"event":"y","items":[{"\\udbff": 1}]}\n'
        + b'{"event":"pair","note":"\\ud83d\\ude00"}\n'  # a valid pair: one emoji
    )
    result = send(str(path), "--endpoint", receiver.url)
    assert result.returncode == 1
    for number, escape in ((1, "\\ud800"), (2, "\\udfff"), (3, "\\udbff")):
        assert f"{path}:{number}: not valid Unicode: a lone surrogate {escape}" in result.stderr
    assert "Traceback" not in result.stderr
    assert "1 delivered" in result.stdout and "3 invalid lines" in result.stdout
    assert receiver.delivered_events()[0]["note"] == "\U0001f600"


def test_lines_nested_too_deeply_or_with_nan_are_malformed(
    receiver: Receiver, tmp_path: Path
) -> None:
    path = tmp_path / "deep.jsonl"
    deep = 100_000
    path.write_bytes(
        b'{"event":"deep","a":' + b"[" * deep + b"]" * deep + b"}\n"
        + b'{"event":"rather_deep","a":' + b"[" * 990 + b"]" * 990 + b"}\n"
        + b'{"event":"nan","value":NaN}\n'
        + line("ok")
    )  # fmt: skip
    result = send(str(path), "--endpoint", receiver.url)
    assert result.returncode == 1
    assert f"{path}:1: not JSON: nested too deeply" in result.stderr
    assert f"{path}:2: " in result.stderr and f"{path}:3: " in result.stderr
    assert "Traceback" not in result.stderr
    assert names(receiver) == ["ok"]
