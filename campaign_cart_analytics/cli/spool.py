"""``spool``: look into a durable spool file, export its dead letters, put them back.

    campaign-cart-analytics spool status PATH          # JSON: depth, states, owners
    campaign-cart-analytics spool dead-letters PATH [--output FILE]   # JSON Lines
    campaign-cart-analytics spool requeue PATH [--id N ...]

``requeue`` moves dead letters (all, or those with the given ids) back into
the queue without an owner: the next client that looks at the file, in any
process sharing it, takes them over and sends them first. Safe while
clients run: every change is one SQLite transaction.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from typing import Any, Optional, TextIO

from .. import spool_file
from ._common import CommandError

NAME = "spool"
HELP = "inspect a durable spool (spool_path): status, dead-letters, requeue"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["status", "dead-letters", "requeue"])
    parser.add_argument("path", metavar="PATH", help="the spool file (the client's spool_path)")
    parser.add_argument(
        "--output", metavar="FILE", help="dead-letters: write JSON Lines here, not to stdout"
    )
    parser.add_argument(
        "--id",
        type=int,
        action="append",
        dest="ids",
        metavar="N",
        help="requeue: only the dead letter with this id (repeatable); default: all",
    )


def run(args: argparse.Namespace) -> int:
    if args.output is not None and args.action != "dead-letters":
        raise CommandError("--output goes with dead-letters only")
    if args.ids is not None and args.action != "requeue":
        raise CommandError("--id goes with requeue only")
    if args.output is not None:
        _check_output(args.output, args.path)  # before anything is opened for writing
    try:
        conn = spool_file.open_existing(args.path)
    except FileNotFoundError:
        raise CommandError(f"no spool file at {args.path!r}") from None
    except (sqlite3.Error, spool_file.SpoolUnusable, OSError) as exc:
        raise CommandError(f"cannot open the spool {args.path!r}: {exc}") from None
    try:
        if args.action == "status":
            print(json.dumps(spool_file.status(conn), indent=2))
        elif args.action == "dead-letters":
            _export(conn, args.output)
        else:
            moved = spool_file.requeue(conn, args.ids)
            print(f"{moved} dead letters put back in the queue of {args.path}")
    except sqlite3.Error as exc:
        print(f"campaign-cart-analytics spool: error: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    return 0


def _check_output(output: str, spool: str) -> None:
    """Refuse an output that would destroy the spool (the file or its WAL or shared
    memory, by any name) or cannot be a file."""
    if os.path.isdir(output):
        raise CommandError(f"--output {output!r} is a folder: give the path of a file")
    if not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        raise CommandError(f"--output {output!r}: its folder does not exist")
    for companion in (spool, spool + "-wal", spool + "-shm"):
        same = os.path.realpath(output) == os.path.realpath(companion)
        if not same and os.path.exists(output) and os.path.exists(companion):
            same = os.path.samefile(output, companion)
        if same:
            raise CommandError(
                f"--output {output!r} is the spool's own file ({companion!r}): writing "
                "there would destroy it; give another file"
            )


def _export(conn: sqlite3.Connection, output: Optional[str]) -> None:
    if output is None:
        _write_lines(conn, sys.stdout)
        return
    with open(output, "w", encoding="utf-8") as stream:
        _write_lines(conn, stream)


def _write_lines(conn: sqlite3.Connection, stream: TextIO) -> None:
    """One JSON object a line: the event as it was to be sent, and why it was not."""
    for row_id, body, batch_id, status, problem, failed_at in spool_file.dead_letters(conn):
        line: dict[str, Any] = {
            "id": row_id,
            "status": status,
            "problem": problem,
            "batch_id": batch_id,
            "failed_at": failed_at,
            "event": json.loads(body),
        }
        stream.write(json.dumps(line) + "\n")
