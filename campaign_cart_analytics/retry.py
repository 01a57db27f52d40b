"""The retry schedule: ``DeliveryRetry``, a ``urllib3.Retry`` with the seed's waits.

The worker keeps one ``DeliveryRetry`` per batch and asks it, after each
failed attempt, whether to try again and when (``next_attempt``): urllib3's
``Retry.increment`` counts the attempt and says when the budget
(``max_retries``) is spent, ``get_backoff_time`` gives the wait. The schedule
is the seed's (SPEC section 6): attempt 1 at once; retry k starts
``retry_delay * 2**(k-1)`` after attempt k failed (urllib3's own
``backoff_factor`` would give 0, 2f, 4f); no wait exceeds 60 s.

What is worth retrying is decided by what the endpoint said: 5xx and 408,
and network errors and timeouts (POST included: the receiver drops a
duplicate by its ``Idempotency-Key``). 429 and 503 are not failures of a
batch but the endpoint asking everyone to slow down: the worker pauses the
client (``overload``) and the batch keeps its budget.
"""

from __future__ import annotations

from typing import Any, Optional

from urllib3.util.retry import Retry

#: No single wait between attempts is longer than this, whatever the schedule or Retry-After say.
MAX_WAIT_SECONDS = 60.0

#: The endpoint is overloaded: pause everything (SPEC section 10).
OVERLOAD_STATUSES = frozenset({429, 503})

#: Worth another attempt of the same batch (429 and 503 go through the pause instead).
RETRYABLE_STATUSES = frozenset({408, *range(500, 600)}) - OVERLOAD_STATUSES


class DeliveryRetry(Retry):
    """``urllib3.Retry`` with the seed's schedule, counting only ``max_retries``."""

    retry_delay: float = 1.0

    @classmethod
    def first(cls, max_retries: int, retry_delay: float) -> DeliveryRetry:
        """The state of a batch before its first attempt."""
        retry = cls(
            total=max_retries,
            connect=None,
            read=None,
            status=None,
            other=None,
            redirect=False,
            allowed_methods=frozenset({"POST"}),
            raise_on_status=False,
        )
        retry.retry_delay = retry_delay
        return retry

    def new(self, **kw: Any) -> DeliveryRetry:
        retry = super().new(**kw)
        retry.retry_delay = self.retry_delay
        return retry

    def get_backoff_time(self) -> float:
        return self._wait_after(len(self.history))

    def next_attempt(
        self, url: str, *, response: Any = None, error: Optional[Exception] = None
    ) -> Optional[tuple[DeliveryRetry, float]]:
        """After a failed attempt: the new state and the wait before the next, or None if spent.

        ``response`` is the urllib3 response of a failed status, ``error`` the
        exception of a request that got none.
        """
        if error is not None:
            error.__traceback__ = None  # a parked batch must not keep the failed stack alive
        try:
            retry = self.increment("POST", url, response=response, error=error)
        except Exception:  # MaxRetryError: spent; or an error urllib3 would not retry
            return None
        assert isinstance(retry, DeliveryRetry)
        return retry, retry.get_backoff_time()

    def wait_if_counted(self) -> float:
        """The wait this batch's next retry would have: how long an overload pause lasts
        when the endpoint gave no ``Retry-After``."""
        return self._wait_after(len(self.history) + 1)

    def _wait_after(self, failed_attempts: int) -> float:
        """The seed's wait after ``failed_attempts`` failures: d, 2d, 4d ..., at most 60 s."""
        if failed_attempts == 0:
            return 0.0
        return float(min(MAX_WAIT_SECONDS, self.retry_delay * 2 ** (failed_attempts - 1)))

    @property
    def attempts(self) -> int:
        """How many attempts failed so far."""
        return len(self.history)


def retry_after_seconds(value: Optional[str]) -> Optional[float]:
    """A ``Retry-After`` header in seconds, capped at 60; None if absent or unparsable."""
    if value is None:
        return None
    try:
        seconds = float(Retry.parse_retry_after(Retry(), value))
    except Exception:  # an unparsable header falls back to the schedule
        return None
    return min(MAX_WAIT_SECONDS, max(0.0, seconds))
