"""``transform_function``: the user's last word on each event, run in ``track()``'s thread.

It gets a copy of the event and returns the event to send (that copy, changed or not,
or a new dict), or None to drop it; a drop by None is counted as ``filtered`` and is
no loss. Anything else drops that one event as a loss: the function raising, returning
something other than a dict or None, returning an event a receiver would refuse the
whole batch for (no ``event`` name, say), or putting in a value JSON cannot carry. Such
a loss is counted as ``dropped_transform_error``, logged (at most once per interval,
the rest counted in the next message), and handed to ``on_error`` with a
``TransformError``. ``track()`` itself never raises for it: the caller's call was fine.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Optional

from ._logging import RateLimitedLog
from .config import Config
from .errors import TransformError
from .events import UnencodableValue, copy_tree, envelope_problem, find_unencodable
from .pending import PendingEvents
from .worker import report_error


class EventTransform:
    def __init__(self, config: Config, log: RateLimitedLog) -> None:
        self._config = config
        self._log = log

    def apply(self, envelope: dict[str, Any], pending: PendingEvents) -> Optional[dict[str, Any]]:
        """The event to queue, or None when it is dropped (and already counted and reported)."""
        transform = self._config.transform_function
        assert transform is not None
        event = copy_tree(envelope)  # outside the try: a failure here is not the transform's
        try:
            result: object = transform(event)
        except Exception as exc:
            error = TransformError(f"transform_function raised {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            self._failed(envelope, error, pending, exc_info=exc)
            return None
        if result is None:
            pending.refuse("filtered")
            return None
        if not isinstance(result, dict):
            error = TransformError(
                f"transform_function must return a dict or None; got {type(result).__name__}"
            )
            self._failed(envelope, error, pending)
            return None
        problem = envelope_problem(result)
        if problem is not None:  # a receiver would refuse the whole batch for it
            self._failed(envelope, TransformError(f"transform_function {problem}"), pending)
            return None
        return result

    def blame_unencodable(
        self,
        name: str,
        properties: Mapping[str, Any],
        problem: UnencodableValue,
        pending: PendingEvents,
        final: dict[str, Any],
    ) -> None:
        """Raise if the caller's own value is to blame; else the transform broke the event."""
        bad_name = find_unencodable(name, "event")
        if bad_name is not None:
            raise bad_name from None
        if self._config.transform_function is None:
            raise UnencodableValue("properties" + problem.path, problem.reason) from None
        callers = find_unencodable(properties, "properties")
        if callers is not None:
            raise callers from None
        error = TransformError(
            f"transform_function returned a value JSON cannot carry: event{problem.path}: "
            f"{problem.reason}"
        )
        self._failed(final, error, pending)

    def _failed(
        self,
        event: dict[str, Any],
        error: TransformError,
        pending: PendingEvents,
        exc_info: Optional[BaseException] = None,
    ) -> None:
        pending.refuse("dropped_transform_error")
        self._log.log(
            logging.ERROR, "Event %r dropped: %s", event.get("event"), error, exc_info=exc_info
        )
        report_error(self._config, [event], error)
