"""``Stats``: an immutable snapshot of what became of every tracked event.

Every event that ``track()`` accepted is counted in ``tracked`` and, at any
moment, in exactly one of: ``queued`` (waiting or in flight), ``delivered``,
``filtered`` (the transform returned None) or one of the ``dropped_*``
counters, so ``tracked == queued + delivered + filtered + dropped``.

With a spool (``spool_path``) two more buckets take part: events taken over
from the spool file (left by an earlier run, a process that died, or put
back by ``spool requeue``) come in as ``recovered``, and events still on disk
when the client shut down go out as ``spooled_at_exit`` (kept for the next
run, not lost), so ``tracked + recovered == queued + delivered + filtered +
dropped + spooled_at_exit``. ``spool_depth`` and ``spool_dead_letters`` are
gauges of the whole file (every process sharing it), not buckets.
"""

from __future__ import annotations

from typing import Optional

import attrs


@attrs.frozen
class Stats:
    """Counters of one client, as returned by ``Analytics.stats()``."""

    tracked: int = 0
    queued: int = 0
    delivered: int = 0
    batches_sent: int = 0
    retries: int = 0
    filtered: int = 0
    dropped_queue_full: int = 0
    dropped_transform_error: int = 0
    dropped_delivery: int = 0
    dropped_shutdown: int = 0
    #: Spool: events refused because the spool file had reached ``spool_max_bytes``.
    dropped_spool_full: int = 0
    #: Spool: events taken over from the file (an earlier run, a dead process, a requeue).
    recovered: int = 0
    #: Spool: events left on disk at shutdown for the next run (not lost).
    spooled_at_exit: int = 0
    #: Spool: events kept in memory only because the file could not take them (also queued).
    spool_fallback: int = 0
    #: Spool: events in the file now, from every process sharing it; None without a spool.
    spool_depth: Optional[int] = None
    #: Spool: rejected events in the file's dead-letter table; None without a spool.
    spool_dead_letters: Optional[int] = None
    #: The last delivery problem in plain words (no header values), or None.
    last_error: Optional[str] = None

    @property
    def dropped(self) -> int:
        """All events dropped for any reason (filtered events are not drops)."""
        return (
            self.dropped_queue_full
            + self.dropped_transform_error
            + self.dropped_delivery
            + self.dropped_shutdown
            + self.dropped_spool_full
        )


#: Fields of ``Stats`` that are not counters.
_NOT_COUNTERS = frozenset({"last_error", "spool_depth", "spool_dead_letters"})

#: The counter names, in the order ``Stats`` declares them.
COUNTERS: tuple[str, ...] = tuple(
    field.name for field in attrs.fields(Stats) if field.name not in _NOT_COUNTERS
)
