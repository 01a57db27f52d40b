"""``send``: events from JSON Lines files (or standard input) through the SDK.

Each line is one event: an object with an ``event`` key and the rest of the
event (``ecommerce``, ``user_properties``, and ``event_id``/``event_time``
to keep, for backfills). Input is UTF-8; a BOM opening a file is dropped. A
malformed line (not UTF-8, not JSON, a lone surrogate escaped in a string, no
``event`` name, a value ``track()`` refuses) is reported with its file and line
number and skipped, or stops the run with ``--strict``. Exit code 0 only when
every event was delivered and every line was valid.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import IO, Any, Optional

from ..client import Analytics
from ..config import normalize_settings
from ._common import CommandError, add_header_argument, parse_headers

#: Seconds between looks at the queue while a backfill waits for the endpoint.
BACKPRESSURE_POLL = 0.005

NAME = "send"
HELP = "send events from JSON Lines files or standard input"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", metavar="FILE", help="JSON Lines; '-' or none: stdin")
    parser.add_argument("--endpoint", help="where to POST the batches")
    add_header_argument(parser)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-retries", type=int)
    parser.add_argument("--retry-delay-ms", type=int)
    parser.add_argument(
        "--max-concurrent-requests", type=int, help="requests in flight at once (default 4)"
    )
    parser.add_argument("--compression", choices=["gzip"], help="gzip each batch's body")
    parser.add_argument("--config", help="settings.json with client options, in either spelling")
    parser.add_argument("--strict", action="store_true", help="stop at the first malformed line")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as file:
                loaded = json.load(file)
        except OSError as exc:
            raise CommandError(f"cannot read {args.config}: {exc.strerror}") from None
        except ValueError as exc:
            raise CommandError(f"{args.config} is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise CommandError(f"{args.config} must hold a JSON object of options")
        settings = normalize_settings({"endpoint": None, **loaded})
    flags = {
        "endpoint": args.endpoint,
        "batch_size": args.batch_size,
        "max_retries": args.max_retries,
        "retry_delay_ms": args.retry_delay_ms,
        "max_concurrent_requests": args.max_concurrent_requests,
        "compression": args.compression,
    }
    settings.update({name: value for name, value in flags.items() if value is not None})
    if args.header:
        settings["headers"] = {**settings.get("headers", {}), **parse_headers(args.header)}
    if not settings.get("endpoint"):
        raise CommandError("an endpoint is required: --endpoint URL, or 'endpoint' in --config")
    return settings


_Input = tuple[str, IO[bytes], bool]  # name, stream, whether run() closes it


def _open_all(names: list[str]) -> list[_Input]:
    """Open every input first, so that an unreadable file stops the run before anything is sent.

    Inputs are read as bytes and decoded line by line: a line that is not
    UTF-8 is then a malformed line like any other, not the end of the run.
    """
    opened: list[_Input] = []
    for name in names or ["-"]:
        if name == "-":
            opened.append(("<stdin>", _stdin_bytes(), False))
            continue
        try:
            opened.append((name, open(name, "rb"), True))  # noqa: SIM115 - closed in run()
        except OSError as exc:
            _close_all(opened)
            raise CommandError(f"cannot read {name}: {exc.strerror}") from None
    return opened


def _stdin_bytes() -> IO[bytes]:
    stream: Optional[IO[bytes]] = getattr(sys.stdin, "buffer", None)
    if stream is None:
        raise CommandError("standard input is closed or not a byte stream")
    return stream


def _close_all(inputs: list[_Input]) -> None:
    for _, file, owned in inputs:
        if owned:
            file.close()


def _lines(inputs: list[_Input]) -> Iterator[tuple[str, int, bytes]]:
    """Each input's non-blank lines, numbered; a UTF-8 BOM opening an input is dropped."""
    for name, file, _ in inputs:
        try:
            for number, line in enumerate(file, 1):
                if number == 1 and line.startswith(codecs.BOM_UTF8):
                    line = line[len(codecs.BOM_UTF8) :]
                if line.strip():
                    yield name, number, line
        except OSError as exc:  # a device, a file removed under us: one line, not a traceback
            raise CommandError(f"cannot read {name}: {exc.strerror or exc}") from None


def _parse(line: bytes) -> tuple[str, dict[str, Any]]:
    value = _load(_decode(line))
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    _check_unicode(value)
    name = value.pop("event", None)
    if not isinstance(name, str) or not name:
        raise ValueError("the object has no 'event' name")
    return name, value


def _decode(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"not valid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1}: "
            f"{exc.reason})"
        ) from None


def _load(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("not JSON: nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None


def _check_unicode(value: dict[str, Any]) -> None:
    """A lone surrogate is a malformed line: JSON can escape one (``"\\ud800"``), UTF-8 cannot.

    Checked here, whatever ``track()`` does with one, so that the line is
    reported rather than sent to an endpoint that would refuse its whole batch.
    """
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        surrogate = ord(exc.object[exc.start])
        raise ValueError(f"not valid Unicode: a lone surrogate \\u{surrogate:04x}") from None


def _problem(exc: Exception) -> str:
    """What is wrong with a line, in words: ``track()`` may hit Python's recursion limit too."""
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc)


def run(args: argparse.Namespace) -> int:
    client = Analytics.from_settings(_settings(args))
    inputs = _open_all(args.files)
    invalid = 0
    stopped = False
    progress = _progress()
    backpressure_at = max(client.config.max_queue_size // 2, client.config.batch_size)
    try:
        for name, number, line in _lines(inputs):
            try:
                event, properties = _parse(line)
                client.track(event, properties)
            except (TypeError, ValueError, RecursionError) as exc:
                invalid += 1
                progress.write(f"{name}:{number}: {_problem(exc)}", file=sys.stderr)
                if args.strict:
                    stopped = True
                    break
                continue
            progress.update(1)
            # A backfill waits for the endpoint rather than overflow the queue, keeping
            # the senders busy: down to half, not to empty.
            while client.stats().queued >= backpressure_at:
                time.sleep(BACKPRESSURE_POLL)
        client.flush()
    finally:
        progress.close()
        _close_all(inputs)
        client.shutdown(timeout=client.config.shutdown_timeout_ms / 1000)
    stats = client.stats()
    print(
        f"sent: {stats.delivered} delivered, {stats.filtered} filtered, "
        f"{invalid} invalid lines, dropped: {stats.dropped_delivery} by the endpoint, "
        f"{stats.dropped_queue_full} queue full, {stats.dropped_shutdown} at shutdown"
    )
    if stats.last_error and stats.dropped:
        print(f"last problem: {stats.last_error}", file=sys.stderr)
    if stopped:
        print("stopped at the first malformed line (--strict)", file=sys.stderr)
    return 0 if invalid == 0 and stats.dropped == 0 and stats.queued == 0 else 1


class _NoProgress:
    def update(self, count: int) -> None:
        pass

    def write(self, text: str, file: IO[str]) -> None:
        print(text, file=file)

    def close(self) -> None:
        pass


def _progress() -> Any:
    """A tqdm progress bar on a terminal; silent otherwise."""
    if not sys.stderr.isatty():
        return _NoProgress()
    from tqdm import tqdm

    # A terminal that reports no size (0 x 0) would hide the bar: fall back to 80 x 24.
    size = os.get_terminal_size(sys.stderr.fileno())
    return tqdm(unit=" events", file=sys.stderr, ncols=size.columns or 80, nrows=size.lines or 24)
