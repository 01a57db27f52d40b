"""``ShutdownClock``: the deadlines a shutdown imposes on delivery.

None until ``begin`` is called. ``waits_until``: a retry (or an overload
pause) ending later than this is not waited for; the batch gets one last
attempt at once (at interpreter exit it is "now": the seed's page unload
does not back off). ``gives_up_at``: no attempt may run past this; it
bounds request timeouts.
"""

from __future__ import annotations

import threading
import time
from typing import Optional


class ShutdownClock:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.waits_until: Optional[float] = None
        self._gives_up_at: Optional[float] = None

    def begin(self, *, waits_until: float, gives_up_at: Optional[float]) -> None:
        with self._lock:
            if self.waits_until is None or waits_until < self.waits_until:
                self.waits_until = waits_until
            if gives_up_at is not None and (
                self._gives_up_at is None or gives_up_at < self._gives_up_at
            ):
                self._gives_up_at = gives_up_at

    def cuts_short(self, due: float) -> bool:
        """True when a wait ending at ``due`` would end after the shutdown's deadline."""
        waits_until = self.waits_until
        return waits_until is not None and due > waits_until

    def gave_up(self) -> bool:
        """True once the shutdown's give-up time has passed."""
        gives_up_at = self._gives_up_at
        return gives_up_at is not None and time.monotonic() >= gives_up_at

    def attempt_timeout(self, timeout: float) -> float:
        """``timeout``, shortened so that an attempt ends by the shutdown's give-up time."""
        if self._gives_up_at is None:
            return timeout
        return max(0.0, min(timeout, self._gives_up_at - time.monotonic()))
