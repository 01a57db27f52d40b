"""The ``campaign-cart-analytics`` command (also ``python -m campaign_cart_analytics``).

    campaign-cart-analytics receive [--port P] [--database URL] [--workers N] [--token T] ...
    campaign-cart-analytics demo
    campaign-cart-analytics send [FILE ...] --endpoint URL [--header 'NAME: VALUE' ...] ...
    campaign-cart-analytics check --endpoint URL [--header 'NAME: VALUE' ...]
    campaign-cart-analytics spool status|dead-letters|requeue PATH

Exit codes: 0 success; 1 the command ran and failed (events undelivered, an
endpoint that does not accept batches); 2 bad input (an unknown option, an
unreadable file, an invalid URL, a port in use). Errors are one line on
standard error, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn, Optional

from .._version import __version__
from ..errors import ConfigError
from . import check, demo, receive, send, spool
from ._common import CommandError

PROG = "campaign-cart-analytics"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Campaign Cart analytics: send, receive, check.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    for module in (receive, demo, send, check, spool):
        sub = commands.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
        return code
    except (CommandError, ConfigError) as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
