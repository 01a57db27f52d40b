"""The reference receiver as a WSGI application: what an endpoint for this SDK should do.

- ``POST /analytics`` takes a batch in the wire format (SPEC section 5). It
  checks the bearer token when one is configured (401), caps the body size
  (413), validates the batch (400 with a JSON error that names the problem:
  not JSON, ``events`` not a list, more than 100 events, ``batch_info.size``
  not matching, an event without ``event``/``event_id``/``event_time``), then
  stores it idempotently and answers 202 with the source document's body
  (``success``, ``message``, ``batch_id``, ``events_processed``) plus
  ``duplicates``: how many of the batch's events were already stored.
- ``OPTIONS /analytics`` answers CORS preflights, and every ``/analytics``
  answer carries CORS headers, so browser SDKs can post here too.
- ``GET /events`` (``?limit=N&event=NAME``) and ``GET /stats`` show what arrived.

Run it under any WSGI server (``gunicorn 'campaign_cart_analytics.receiver:create_app()'``)
or with ``campaign-cart-analytics receive``.
"""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Iterable
from typing import Any, Callable, Optional

from ..events import parse_iso8601
from .store import Store

MAX_EVENTS = 100
DEFAULT_MAX_BODY_BYTES = 5 * 2**20

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
Reply = tuple[int, dict[str, Any], list[tuple[str, str]]]

CORS_HEADERS = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "POST, OPTIONS"),
    ("Access-Control-Allow-Headers", "Content-Type, Authorization, Idempotency-Key"),
    ("Access-Control-Max-Age", "600"),
]
_REASONS = {
    200: "OK", 202: "Accepted", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
    404: "Not Found", 405: "Method Not Allowed", 411: "Length Required",
    413: "Payload Too Large",
}  # fmt: skip


class BatchError(ValueError):
    """A batch that breaks the wire format; the message says where."""


def validate_batch(batch: Any) -> list[dict[str, Any]]:
    """The batch's events if it is a valid batch, else ``BatchError``."""
    if not isinstance(batch, dict):
        raise BatchError("the body must be a JSON object with 'events' and 'batch_info'")
    events = batch.get("events")
    if not isinstance(events, list):
        raise BatchError("'events' must be a list")
    if len(events) > MAX_EVENTS:
        raise BatchError(f"'events' holds {len(events)} events; a batch holds at most {MAX_EVENTS}")
    info = batch.get("batch_info")
    if not isinstance(info, dict):
        raise BatchError("'batch_info' must be an object")
    if info.get("size") != len(events) or isinstance(info.get("size"), bool):
        raise BatchError(
            f"batch_info.size is {info.get('size')!r} but 'events' holds {len(events)}"
        )
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            raise BatchError(f"events[{index}] must be an object")
        for field in ("event", "event_id", "event_time"):
            if not isinstance(event.get(field), str) or not event[field]:
                raise BatchError(f"events[{index}].{field} is missing or not a non-empty string")
        try:
            parse_iso8601(event["event_time"])
        except ValueError:
            raise BatchError(
                f"events[{index}].event_time {event['event_time']!r} is not ISO 8601"
            ) from None
    return events


class ReceiverApp:
    """The WSGI callable; ``create_app`` builds one."""

    def __init__(
        self,
        store: Store,
        *,
        token: Optional[str] = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        log: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.store = store
        self._token = token
        self._max_body_bytes = max_body_bytes
        self._log = log

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
        status, body, headers = self._route(method, path, environ)
        if status >= 400 and path == "/analytics":
            self.store.count_rejected()
        if self._log is not None:
            detail = body.get("error") or (
                f"{body['events_processed']} events, {body['duplicates']} duplicates"
                if "events_processed" in body
                else ""
            )
            self._log(f"{method} {path} {status} {detail}".rstrip())
        payload = b"" if status == 204 else json.dumps(body).encode()
        headers = [*headers, ("Content-Length", str(len(payload)))]
        if payload:
            headers.append(("Content-Type", "application/json"))
        start_response(f"{status} {_REASONS.get(status, '')}".rstrip(), headers)
        return [payload]

    def _route(self, method: str, path: str, environ: dict[str, Any]) -> Reply:
        if path == "/analytics":
            if method == "OPTIONS":
                return 204, {}, CORS_HEADERS
            if method == "POST":
                status, body, headers = self._receive(environ)
                return status, body, [*headers, *CORS_HEADERS]
            return _error(405, f"{method} is not allowed here", [("Allow", "POST, OPTIONS")])
        if path in ("/events", "/stats"):
            if method != "GET":
                return _error(405, f"{method} is not allowed here", [("Allow", "GET")])
            if path == "/stats":
                return 200, self.store.stats(), []
            return self._list_events(environ.get("QUERY_STRING", ""))
        return _error(404, f"no such path: {path}; batches go to POST /analytics")

    def _receive(self, environ: dict[str, Any]) -> Reply:
        if self._token is not None:
            given = environ.get("HTTP_AUTHORIZATION", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
                return _error(
                    401, "missing or wrong bearer token", [("WWW-Authenticate", "Bearer")]
                )
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            return _error(411, "a Content-Length header is required")
        if length > self._max_body_bytes:
            return _error(
                413, f"the body is {length} bytes; this receiver takes at most "
                f"{self._max_body_bytes}",
            )  # fmt: skip
        raw = environ["wsgi.input"].read(length)
        try:
            batch = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, f"the body is not JSON: {exc}")
        try:
            events = validate_batch(batch)
        except BatchError as exc:
            return _error(400, str(exc))
        batch_id = batch["batch_info"].get("batch_id")
        if not isinstance(batch_id, str) or not batch_id:
            batch_id = f"batch_{uuid.uuid4().hex}"
        duplicates = self.store.add_batch(batch_id, events)
        return (
            202,
            {
                "success": True,
                "message": "Analytics events received",
                "batch_id": batch_id,
                "events_processed": len(events),
                "duplicates": duplicates,
            },
            [],
        )

    def _list_events(self, query_string: str) -> Reply:
        from urllib.parse import parse_qs

        query = parse_qs(query_string)
        try:
            limit = int(query.get("limit", ["100"])[0])
        except ValueError:
            return _error(400, "limit must be a whole number")
        event = query.get("event", [None])[0]
        return 200, {"events": self.store.events(limit=max(0, limit), event=event)}, []


def _error(status: int, message: str, headers: Optional[list[tuple[str, str]]] = None) -> Reply:
    return status, {"success": False, "error": message}, headers or []
