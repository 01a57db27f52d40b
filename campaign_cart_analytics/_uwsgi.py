"""uWSGI without threads never runs the delivery thread: say so, once, at startup."""

from __future__ import annotations

import sys
from typing import Any

from ._logging import logger


def warn_if_threads_cannot_run() -> None:
    """Under uWSGI without ``enable-threads`` the delivery thread never runs: say so, once."""
    global _warned_about_uwsgi
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is None or _warned_about_uwsgi:
        return
    options = getattr(uwsgi, "opt", {})

    def option(name: str) -> Any:
        return options.get(name, options.get(name.encode()))

    threads = option("threads")
    enabled = option("enable-threads") or (threads is not None and int(threads) > 1)
    if not enabled:
        _warned_about_uwsgi = True
        logger.warning(
            "uWSGI is running without threads: campaign_cart_analytics cannot deliver "
            "events in the background. Start uWSGI with --enable-threads (or --threads N)."
        )


_warned_about_uwsgi = False
