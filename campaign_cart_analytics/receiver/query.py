"""``GET /events``'s query string, read into an ``EventQuery``.

    /events?limit=N&event=NAME                  the latest N events, oldest first
    /events?after=CURSOR&limit=N                N events received after CURSOR, in order
    /events?since=2025-01-12T00:00:00Z&until=…  either, bounded by the time received

``after=0`` is the very beginning; any other cursor is the ``next`` of an
earlier answer. ``since`` is inclusive and ``until`` exclusive, ISO 8601 with
``Z`` or an offset (a time without one is UTC). A parameter given twice counts
once, as first given; unknown parameters are ignored.
"""

from __future__ import annotations

import re
from typing import Optional
from urllib.parse import parse_qs

from ..events import parse_iso8601
from .store import EventQuery, Position

MAX_LIST_LIMIT = 10_000
DEFAULT_LIST_LIMIT = 100
_DIGITS = re.compile("[0-9]{1,18}")  # ASCII only: int() would also take '+1', '1_0', '٣'


class QueryError(ValueError):
    """A query string parameter out of its rules; the message names it and the rule."""


def parse_event_query(query_string: str) -> EventQuery:
    """The ``EventQuery`` a ``/events`` query string asks for, else ``QueryError``."""
    given = {name: values[0] for name, values in parse_qs(query_string).items()}
    limit = given.get("limit", str(DEFAULT_LIST_LIMIT))
    if not _DIGITS.fullmatch(limit) or int(limit) > MAX_LIST_LIMIT:
        raise QueryError(f"limit must be a whole number from 0 to {MAX_LIST_LIMIT}")
    event = given.get("event")
    if event is not None and "\x00" in event:  # no event name holds one, and PostgreSQL refuses it
        raise QueryError("event must not contain a NUL character (%00)")
    return EventQuery(
        limit=int(limit),
        after=_cursor(given.get("after")),
        event=event,
        since=_time("since", given.get("since")),
        until=_time("until", given.get("until")),
    )


def _cursor(text: Optional[str]) -> Optional[Position]:
    if text is None:
        return None
    try:
        return Position.parse(text)
    except ValueError:
        raise QueryError(
            f"after must be 0 or the 'next' of an earlier answer; got {text[:40]!r}"
        ) from None


def _time(name: str, text: Optional[str]) -> Optional[float]:
    if text is None:
        return None
    try:
        return parse_iso8601(text).timestamp()
    except (ValueError, OverflowError):
        raise QueryError(
            f"{name} must be an ISO 8601 date-time such as 2025-01-12T10:30:00Z; got {text[:40]!r}"
        ) from None
