"""When the endpoint says it is overloaded, the whole client slows down (SPEC section 10).

A 429 or 503 is not a failure of one batch but the endpoint asking everyone
to slow down. ``OverloadGate`` decides when the next request may start:

- **pause**: after an overload no request starts until its ``Retry-After``
  (capped at 60 s) has passed or, without one, until that batch's retry
  would be due;
- **probe**: then one request goes first; the others follow once it succeeded;
- **concurrency**: the limit halves at each overload and grows back by one
  after each success (additive increase, multiplicative decrease, as TCP
  and Netflix's concurrency-limits do), up to ``max_concurrent_requests``;
- **pace**: a rate limiter refuses a burst whatever the concurrency (nginx
  ``limit_req`` without ``burst``), so after an overload request starts are
  also spaced out: the rate halves at each overload, from the rate measured
  over the last second, and grows after each success (by one request a
  second, or 5% when faster), until it no longer binds.

A client starts with every slot open and no pacing; only an overload signal
narrows them. Other failures (500, 502, 504, network) change nothing here.
Only the worker thread calls it.
"""

from __future__ import annotations

import collections
import math
from typing import Optional

#: Past this many requests a second, pacing is dropped: the endpoint keeps up again.
UNPACED_RATE = 1000.0

#: The slowest pace, one request every ten seconds, as a guard: the pace halves only when
#: two requests started within the last second, so it stays at half a request a second or
#: faster (a property test checks it), and a success adds one a second.
SLOWEST_RATE = 0.1


class OverloadGate:
    def __init__(self, max_concurrent: int) -> None:
        self._max = max_concurrent
        self._limit = float(max_concurrent)
        self._paused_until = 0.0
        self._probing = False
        self._rate: Optional[float] = None  # request starts a second; None: not paced
        self._last_start = -math.inf
        self._overloaded_at = -math.inf  # answers to requests started before say nothing new
        self._starts: collections.deque[float] = collections.deque()  # the last second's

    @property
    def limit(self) -> int:
        """How many requests may be in flight now."""
        return 1 if self._probing else int(self._limit)

    @property
    def pace(self) -> Optional[float]:
        """Request starts a second allowed now; None when they are not paced."""
        return self._rate

    @property
    def paused_until(self) -> float:
        return self._paused_until

    def wide_open(self, now: float) -> bool:
        """No overload in force: every slot open, no pause, no pace, no probe."""
        return (
            not self._probing
            and self._limit >= self._max
            and self._rate is None
            and now >= self._paused_until
        )

    def opens_at(
        self, in_flight: int, now: float, *, pause: bool = True, pace: bool = True
    ) -> Optional[float]:
        """When the next request may start (``now`` or later), or None while every slot
        is taken. A shutdown running out of time passes ``pause=False``/``pace=False``."""
        if in_flight >= self.limit:
            return None
        opens = max(now, self._paused_until) if pause else now
        if pace and self._rate is not None:
            opens = max(opens, self._last_start + 1.0 / self._rate)
        return opens

    def started(self, now: float) -> None:
        self._last_start = now
        self._starts.append(now)
        while self._starts and self._starts[0] < now - 1.0:
            self._starts.popleft()

    def succeeded(self, started_at: float) -> None:
        """A request started at ``started_at`` was answered 2xx."""
        if started_at < self._overloaded_at:
            return  # it went out before the overload: it proves nothing about now
        self._probing = False
        self._limit = min(float(self._max), self._limit + 1.0)
        if self._rate is not None:
            # +1 a second at a slow pace, +5% at a fast one: an endpoint that has recovered
            # gets its full rate back within seconds, not minutes.
            self._rate += max(1.0, self._rate * 0.05)
            if self._rate >= UNPACED_RATE:
                self._rate = None

    def overloaded(self, now: float, pause: float, started_at: float) -> None:
        """An overload answer: pause for ``pause`` seconds, then probe, at half the pace.

        Answers to requests that were in flight together count as one overload.
        """
        self._paused_until = max(self._paused_until, now + pause)
        self._probing = True
        if started_at < self._overloaded_at:
            return
        self._overloaded_at = now
        self._limit = max(1.0, self._limit / 2)
        measured = self._measured_rate(now)
        if measured is None:  # a lone request: the pause and the probe are pace enough
            return
        current = measured if self._rate is None else min(self._rate, measured)
        self._rate = max(SLOWEST_RATE, current / 2)

    def _measured_rate(self, now: float) -> Optional[float]:
        """Request starts a second over the last second; None for fewer than two."""
        while self._starts and self._starts[0] < now - 1.0:
            self._starts.popleft()
        if len(self._starts) < 2:
            return None
        return len(self._starts) / max(now - self._starts[0], 1e-3)
