"""The reference receiver as a WSGI application: what an endpoint for this SDK should do.

- ``POST /analytics`` takes a batch in the wire format (SPEC section 5). It
  checks the bearer token when one is configured (401), wants a plain
  ``Content-Length`` (411 without one, 400 for one that is not a whole number)
  and caps the body size (413). It validates the batch (400 with a JSON error
  that names the problem: not UTF-8, not JSON, ``events`` not a list, more than
  100 events, ``batch_info.size`` not matching, an event without
  ``event``/``event_id``/``event_time``, a string that is not valid Unicode),
  then stores it idempotently and answers 202 with the source document's body
  (``success``, ``message``, ``batch_id``, ``events_processed``) plus
  ``duplicates``: how many of the batch's events were already stored.
- ``OPTIONS /analytics`` answers CORS preflights, and every ``/analytics``
  answer carries CORS headers, so browser SDKs can post here too.
- ``GET /events`` shows what arrived: the latest ``limit`` events, or with
  ``after=CURSOR`` those received after it, in the order received, filtered by
  ``event`` and by ``since``/``until`` (time received); the answer's ``next`` is
  the cursor for what comes after (see ``query``). ``GET /stats`` counts it all.
- ``GET /healthz`` answers 200 while the database answers, else 503: for load
  balancers, so it needs no token.

Whatever arrives, the answer is a 2xx or a 4xx with a JSON error: input never
causes a 5xx. A database that is down or too slow is a 503 with ``Retry-After``
(never a 500): the SDK pauses, retries, and loses nothing. Run it under any WSGI server
(``gunicorn 'campaign_cart_analytics.receiver:create_app()'``) or with
``campaign-cart-analytics receive``.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import math
import re
import socket
import uuid
import zlib
from collections.abc import Iterable
from typing import Any, Callable, Optional

from ..events import parse_iso8601
from . import live
from .query import QueryError, parse_event_query
from .store import Store, StoreUnavailable, UnstorableEvent

MAX_EVENTS = 100
DEFAULT_MAX_BODY_BYTES = 5 * 2**20
DEFAULT_READ_TIMEOUT = 10.0
MAX_DEPTH = 100  # nested arrays and objects, counted from the body's top level
#: Longest ``event`` and ``event_id``: both are indexed, and PostgreSQL's index entries
#: hold at most 2,704 bytes (512 characters of up to 4 bytes each fit, with room to spare).
MAX_KEY_CHARS = 512
MAX_INT_DIGITS = 1000  # longer integers take quadratic time to convert, and no event needs them
DEFAULT_RETRY_AFTER = 1  # seconds a client waits after a 503 (the SDK caps it at 60)
READ_TIMEOUT_KEY = "campaign_cart_analytics.read_timeout"  # set by the local server's handler

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
Reply = tuple[int, dict[str, Any], list[tuple[str, str]]]

CORS_HEADERS = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "POST, OPTIONS"),
    (
        "Access-Control-Allow-Headers",
        "Content-Type, Content-Encoding, Authorization, Idempotency-Key",
    ),
    ("Access-Control-Max-Age", "600"),
]
_REASONS = {
    200: "OK", 202: "Accepted", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    411: "Length Required", 413: "Payload Too Large", 415: "Unsupported Media Type",
    503: "Service Unavailable",
}  # fmt: skip
_DIGITS = re.compile("[0-9]{1,18}")  # ASCII only: int() would also take '+1', '1_0', '٣'
_SURROGATE = re.compile("[\ud800-\udfff]")

#: The only way a lone surrogate gets into a parsed body: a ``\uD800``-``\uDFFF`` escape
#: (UTF-8 text cannot carry one). A body without such an escape has no string to check.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_IDENTIFIER = re.compile("[A-Za-z_][A-Za-z0-9_]*")


class BatchError(ValueError):
    """A batch that breaks the wire format; the message says where."""


class _Refusal(Exception):
    """A request answered with a 4xx other than 400, before its batch is looked at."""

    def __init__(
        self, status: int, message: str, headers: Optional[list[tuple[str, str]]] = None
    ) -> None:
        super().__init__(message)
        self.reply = _error(status, message, headers)


# ---------------------------------------------------------------- the body as JSON


def parse_body(raw: bytes) -> Any:
    """The JSON value in ``raw``, else ``BatchError``.

    Stricter than ``json.loads`` on purpose: RFC 8259 wants UTF-8 between
    systems (``json.loads`` would guess UTF-16 or UTF-32), and has no NaN or
    Infinity (``json.loads`` takes them, and ``1e999`` becomes infinity), which
    this receiver would otherwise store and serve back as invalid JSON.
    """
    try:
        text = raw.decode("utf-8-sig")  # a BOM is tolerated, as RFC 8259 allows
    except UnicodeDecodeError as exc:
        raise BatchError(f"the body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        return json.loads(
            text, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_short_int
        )
    except RecursionError:
        raise BatchError(f"the body is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except ValueError as exc:
        raise BatchError(f"the body is not JSON: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (RFC 8259)")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{_quote(text)} overflows to infinity, which JSON cannot carry")
    return value


def _short_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer has more than {MAX_INT_DIGITS} digits")
    return int(text)


# ---------------------------------------------------------------- the batch


def validate_batch(batch: Any, raw: Optional[bytes] = None) -> list[dict[str, Any]]:
    """The batch's events if it is a valid batch, else ``BatchError``. ``raw``, the body
    it was parsed from, spares checking every string where it holds no escape that could
    make a lone surrogate (most bodies: a third of the receiver's time per event)."""
    _check_values(batch, strings=raw is None or _SURROGATE_ESCAPE.search(raw) is not None)
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
    size = info.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size != len(events):
        raise BatchError(f"batch_info.size is {_quote(size)} but 'events' holds {len(events)}")
    for index, event in enumerate(events):
        _check_event(index, event)
    return events


def _check_event(index: int, event: Any) -> None:
    if not isinstance(event, dict):
        raise BatchError(f"events[{index}] must be an object")
    for field in ("event", "event_id", "event_time"):
        if not isinstance(event.get(field), str) or not event[field]:
            raise BatchError(f"events[{index}].{field} is missing or not a non-empty string")
    for field in ("event", "event_id"):
        if len(event[field]) > MAX_KEY_CHARS:
            raise BatchError(
                f"events[{index}].{field} is {len(event[field])} characters long; "
                f"at most {MAX_KEY_CHARS}"
            )
    try:
        parse_iso8601(event["event_time"])
    except ValueError:
        raise BatchError(
            f"events[{index}].event_time {_quote(event['event_time'])} is not ISO 8601"
        ) from None


_Path = Optional[tuple[Any, Any]]  # (parent path, key or index): rendered only for an error


def _check_values(document: Any, *, strings: bool = True) -> None:
    """``BatchError`` for nesting deeper than ``MAX_DEPTH`` or (with ``strings``) a string
    that is not Unicode.

    A JSON escape such as ``"\\ud800"`` is valid JSON but a lone surrogate, which
    no UTF-8 text (SQLite's, or a reader's) can hold. Checked here, before
    anything is stored, so the error names where it is. A loop, not recursion,
    and paths are built only for an error: a 5 MB body of small values is
    millions of them.
    """
    if strings and isinstance(document, str):
        _check_text(document, None)
    containers: list[tuple[Any, _Path, int]] = []
    if isinstance(document, (dict, list)):
        containers.append((document, None, 1))
    while containers:
        container, path, depth = containers.pop()
        if depth > MAX_DEPTH:
            raise BatchError(f"{_render(path)} is nested deeper than {MAX_DEPTH} levels")
        items: Iterable[tuple[Any, Any]] = enumerate(container)
        if isinstance(container, dict):
            if strings and any(_SURROGATE.search(key) for key in container):
                raise BatchError(f"{_render(path)} has a key with a lone surrogate: not Unicode")
            items = container.items()
        for key, item in items:
            if isinstance(item, (dict, list)):
                containers.append((item, (path, key), depth + 1))
            elif strings and isinstance(item, str):
                _check_text(item, (path, key))


def _check_text(text: str, path: _Path) -> None:
    if _SURROGATE.search(text):
        raise BatchError(f"{_render(path)} holds a lone surrogate: not Unicode")


def _render(path: _Path) -> str:
    """``events[0].note`` for the path ``(((None, 'events'), 0), 'note')``."""
    parts: list[str] = []
    while path is not None:
        path, step = path
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif _IDENTIFIER.fullmatch(step):
            parts.append(f".{step}")
        else:
            parts.append(f"[{json.dumps(step[:40])}]")
    return "".join(reversed(parts)).lstrip(".") or "the body"


# ---------------------------------------------------------------- the app


class ReceiverApp:
    """The WSGI callable; ``create_app`` builds one."""

    def __init__(
        self,
        store: Store,
        *,
        token: Optional[str] = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        log: Optional[Callable[[str], None]] = None,
        retry_after: int = DEFAULT_RETRY_AFTER,
    ) -> None:
        if not read_timeout > 0:
            raise ValueError(f"read_timeout must be a positive number of seconds: {read_timeout}")
        if not 0 <= retry_after <= 3600:
            raise ValueError(f"retry_after must be from 0 to 3600 seconds: {retry_after}")
        self.store = store
        self.retry_after = retry_after
        self.read_timeout = read_timeout
        self._token = token
        self._max_body_bytes = max_body_bytes
        self._log = log

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
        if path in live.PATHS:  # GET /: the live view, a page and its files (not JSON)
            return live.serve(environ, start_response)
        try:
            status, body, headers = self._route(method, path, environ)
        except StoreUnavailable as exc:
            status, body, headers = self._unavailable(exc)
        except UnstorableEvent as exc:  # input the database refuses: the client's to fix
            status, body, headers = _error(400, str(exc))
        if 400 <= status < 500 and path == "/analytics":
            self._count_rejected(status)
        # Successful reads are not logged: an open live view polls twice a second.
        if self._log is not None and (status >= 400 or method not in ("GET", "HEAD")):
            detail = body.get("error") or (
                f"{body['events_processed']} events, {body['duplicates']} duplicates"
                if "events_processed" in body
                else ""
            )
            line = f"{method} {path} {status} {detail}".rstrip()
            self._log(_printable(line))  # a request path must not write escapes or lines
        payload = b"" if status == 204 else json.dumps(body).encode()
        headers = [*headers, ("Content-Length", str(len(payload)))]
        if payload:
            headers.append(("Content-Type", "application/json"))
        start_response(f"{status} {_REASONS.get(status, '')}".rstrip(), headers)
        return [b""] if method == "HEAD" else [payload]

    def _route(self, method: str, path: str, environ: dict[str, Any]) -> Reply:
        if path == "/analytics":
            if method == "OPTIONS":
                return 204, {}, CORS_HEADERS
            if method == "POST":
                status, body, headers = self._receive(environ)
                return status, body, [*headers, *CORS_HEADERS]
            return _error(405, f"{method} is not allowed here", [("Allow", "POST, OPTIONS")])
        if path == "/healthz":
            if method not in ("GET", "HEAD"):
                return _error(405, f"{method} is not allowed here", [("Allow", "GET, HEAD")])
            self.store.check()
            return 200, {"status": "ok"}, [("Cache-Control", "no-store")]
        if path in ("/events", "/stats"):
            if method != "GET":
                return _error(405, f"{method} is not allowed here", [("Allow", "GET")])
            try:
                self._check_token(environ)  # what was stored is as private as what is sent
            except _Refusal as refusal:
                return refusal.reply
            if path == "/stats":
                return 200, self.store.stats(), []
            return self._list_events(environ.get("QUERY_STRING", ""))
        return _error(404, f"no such path: {path[:100]}; batches go to POST /analytics")

    def _receive(self, environ: dict[str, Any]) -> Reply:
        try:
            self._check_token(environ)
            raw = self._read_body(environ, self._content_length(environ))
            raw = self._decoded(raw, environ.get("HTTP_CONTENT_ENCODING", ""))
            batch = parse_body(raw)
            events = validate_batch(batch, raw)
        except _Refusal as refusal:
            return refusal.reply
        except BatchError as exc:
            return _error(400, str(exc))
        batch_id = batch["batch_info"].get("batch_id")
        if not isinstance(batch_id, str) or not batch_id:
            batch_id = f"batch_{uuid.uuid4().hex}"
        try:
            duplicates = self.store.add_batch(batch_id, events)
        except UnstorableEvent as exc:
            return _error(400, str(exc))
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

    def _check_token(self, environ: dict[str, Any]) -> None:
        if self._token is None:
            return
        given = environ.get("HTTP_AUTHORIZATION", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
            raise _Refusal(401, "missing or wrong bearer token", [("WWW-Authenticate", "Bearer")])

    def _decoded(self, raw: bytes, encoding: str) -> bytes:
        """The body, gunzipped when sent with ``Content-Encoding: gzip`` (the SDK's
        ``compression="gzip"``); what it unpacks to is capped like a plain body."""
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            return raw
        if encoding != "gzip":
            raise _Refusal(415, f"Content-Encoding {encoding[:20]!r} is not supported; use gzip")
        unpacker = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            body = unpacker.decompress(raw, self._max_body_bytes + 1)
        except zlib.error:
            raise _Refusal(400, "the body is not valid gzip") from None
        if len(body) > self._max_body_bytes or unpacker.unconsumed_tail:
            raise _Refusal(413, f"the body unpacks to more than {self._max_body_bytes} bytes")
        if not unpacker.eof:
            raise _Refusal(400, "the gzip body is cut short")
        return body

    def _content_length(self, environ: dict[str, Any]) -> int:
        """The body's declared size, refused unless plain digits and within the cap.

        A chunked body is refused rather than decoded: the local server would
        read it as if it were the body, and a length of -1 would make it read
        until the client goes away.
        """
        if environ.get("HTTP_TRANSFER_ENCODING"):
            raise _Refusal(
                411, "a Content-Length header is required; Transfer-Encoding is not accepted"
            )
        given = environ.get("CONTENT_LENGTH") or ""
        if not given:
            raise _Refusal(411, "a Content-Length header is required")
        if not given.isascii() or not given.isdigit():
            raise BatchError(f"Content-Length must be a whole number of bytes; got {_quote(given)}")
        if not _DIGITS.fullmatch(given) or int(given) > self._max_body_bytes:
            raise _Refusal(
                413, f"the body is {given[:20]} bytes; this receiver takes at most "
                f"{self._max_body_bytes}",
            )  # fmt: skip
        return int(given)

    def _read_body(self, environ: dict[str, Any], length: int) -> bytes:
        """All ``length`` bytes of the body; a client that stops sending gets 408 or 400."""
        try:
            raw: bytes = environ["wsgi.input"].read(length)
        except (socket.timeout, TimeoutError):
            waited = environ.get(READ_TIMEOUT_KEY, self.read_timeout)
            raise _Refusal(408, f"the body did not arrive: nothing came for {waited:g} s") from None
        except OSError as exc:
            raise BatchError(f"the body could not be read: {exc.strerror or exc}") from None
        if len(raw) < length:
            raise BatchError(f"the body ended after {len(raw)} of {length} bytes")
        return raw

    def _list_events(self, query_string: str) -> Reply:
        try:
            query = parse_event_query(query_string)
        except QueryError as exc:
            return _error(400, str(exc))
        page = self.store.page(query)
        return 200, {"events": page.events, "next": str(page.next)}, []

    def _unavailable(self, exc: StoreUnavailable) -> Reply:
        """A 503 the SDK waits out: the cause goes to the log, not to the client."""
        if self._log is not None:
            self._log(_printable(f"database unavailable: {exc}"))
        return _error(
            503,
            f"the database is unavailable; retry after {self.retry_after} s",
            [("Retry-After", str(self.retry_after))],
        )

    def _count_rejected(self, status: int) -> None:
        with contextlib.suppress(StoreUnavailable):  # the 4xx matters more than its count
            self.store.count_rejected(status)


def _printable(text: str) -> str:
    """``text`` with control characters (escapes, line breaks) shown as ``\\xNN``."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _error(status: int, message: str, headers: Optional[list[tuple[str, str]]] = None) -> Reply:
    return status, {"success": False, "error": message}, headers or []


def _quote(value: Any, width: int = 40) -> str:
    """``repr(value)``, cut to ``width`` characters: an error names the input, not all of it."""
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= width else text[: width - 3] + "..."
