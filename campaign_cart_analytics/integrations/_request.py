"""What a request contributes to its events, whatever the framework."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

#: ``utm_<name>`` query parameters copied into ``attribution.<name>``.
UTM_FIELDS = ("source", "medium", "campaign")


def request_properties(
    *, session_id: Optional[str], user_id: Optional[str], query: Mapping[str, Any]
) -> dict[str, Any]:
    """``user_properties`` and ``attribution`` for the context of one request."""
    values: dict[str, Any] = {}
    user_properties = {
        key: value for key, value in (("session_id", session_id), ("user_id", user_id)) if value
    }
    if user_properties:
        values["user_properties"] = user_properties
    attribution = {name: query.get(f"utm_{name}") for name in UTM_FIELDS}
    attribution = {name: value for name, value in attribution.items() if value}
    if attribution:
        values["attribution"] = attribution
    return values
