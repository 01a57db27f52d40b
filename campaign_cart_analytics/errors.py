"""The exceptions this package raises, and the ones it hands to ``on_error``.

Programming errors raise at once, from the call that made them: ``ConfigError``
when a client is built with a bad option, ``TypeError``/``ValueError`` from
``track()`` for a bad event name or a value JSON cannot carry.

Runtime trouble never raises out of ``track()``. It is logged, counted in
``stats()`` and passed to ``on_error(events, error)`` as one of the
``AnalyticsError`` subclasses below, which say what happened in plain words.
"""

from __future__ import annotations

from typing import Optional


class ConfigError(ValueError):
    """An option given to the client breaks its rule; the message names both."""


class AnalyticsError(Exception):
    """Base class of the errors handed to ``on_error`` when events are dropped."""


class DeliveryError(AnalyticsError):
    """A batch could not be delivered and its events were dropped.

    ``status`` is the last HTTP status (None when no response came back),
    ``attempts`` how many requests were made for the batch, ``batch_id`` the
    batch's id (also sent as its ``Idempotency-Key``).
    """

    def __init__(
        self,
        message: str,
        *,
        batch_id: str,
        attempts: int,
        status: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.batch_id = batch_id
        self.attempts = attempts
        self.status = status


class ShutdownDropError(DeliveryError):
    """Events were still undelivered when shutdown (or interpreter exit) ran out of time."""


class TransformError(AnalyticsError):
    """``transform_function`` raised, or returned something other than a dict or None.

    The original exception, if any, is the ``__cause__``.
    """


class QueueFullError(AnalyticsError):
    """The client's queue held ``max_queue_size`` events, so a new one was dropped."""
