"""``Stats``: an immutable snapshot of what became of every tracked event.

Every event that ``track()`` accepted is counted in ``tracked`` and, at any
moment, in exactly one of: ``queued`` (waiting or in flight), ``delivered``,
``filtered`` (the transform returned None) or one of the ``dropped_*``
counters, so ``tracked == queued + delivered + filtered + dropped``.
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
        )


#: The counter names, in the order ``Stats`` declares them.
COUNTERS: tuple[str, ...] = tuple(
    field.name for field in attrs.fields(Stats) if field.name != "last_error"
)
