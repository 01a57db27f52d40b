"""What the commands share: bad-input errors and ``--header`` parsing."""

from __future__ import annotations

import argparse


class CommandError(Exception):
    """Bad input to a command: reported as one line, exit code 2."""


def add_header_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header, e.g. 'Authorization: Bearer TOKEN' (repeatable; never printed)",
    )


def parse_headers(given: list[str]) -> dict[str, str]:
    """``['Name: value', ...]`` as a dict; the error names the header, never its value."""
    headers = {}
    for item in given:
        name, colon, value = item.partition(":")
        if not colon or not name.strip():
            raise CommandError(
                f"--header must look like 'NAME: VALUE'; got one starting {name.strip()[:20]!r}"
            )
        headers[name.strip()] = value.strip()
    return headers
