"""What one event looks like on the wire: envelope, id, time and JSON encoding.

``EventFactory.envelope`` turns ``track(name, properties)`` into the event
object of the wire format: ``event``, ``event_id`` and ``event_time`` first,
then the caller's top-level properties. ``encode`` turns that object into UTF-8 JSON
exactly once, in ``track()``'s thread; the text is the event's snapshot,
so the caller may change its objects afterwards, and a batch body is made by
joining these texts (``batch_body``).

Beyond what ``json`` carries, values may be ``datetime``/``date``/``time``
(ISO 8601 strings; aware datetimes in UTC with ``Z``), ``Decimal`` (an exact
JSON number), ``UUID`` (a string), ``Enum`` members (their value), tuples and
sets (lists). Anything else,
NaN and infinities included, is a ``TypeError`` naming the path to the value.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import itertools
import json
import math
import os
import re
import secrets
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Set
from typing import Any, Callable, Optional

try:
    import orjson
except ImportError:  # pragma: no cover - an interpreter orjson has no wheel for
    orjson = None  # type: ignore[assignment]

SOURCE = "next-campaign-cart"

_UTC = dt.timezone.utc

# The stdlib encoder cannot write a raw number from ``default``: a Decimal is
# written as a string carrying this per-process marker, then unquoted.
_DECIMAL_MARK = f"cca-decimal-{secrets.token_hex(8)}:"
_DECIMAL_STRING = re.compile('"' + re.escape(_DECIMAL_MARK) + '([^"]*)"')


class UnencodableValue(TypeError):
    """A value JSON cannot carry; ``path`` is where it sits (``['ecommerce']['value']``)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


# ---------------------------------------------------------------- time


_second_cache: tuple[int, str] = (-1, "")


def format_epoch_ms(epoch_ms: int) -> str:
    """``2025-01-12T10:30:00.000Z`` for a Unix time in milliseconds."""
    global _second_cache
    seconds, millis = divmod(epoch_ms, 1000)
    cached_second, prefix = _second_cache
    if cached_second != seconds:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_cache = (seconds, prefix)
    return f"{prefix}.{millis:03d}Z"


def format_datetime(value: dt.datetime) -> str:
    """A datetime as ISO 8601 UTC with milliseconds and ``Z``; naive ones are taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=_UTC)
    value = value.astimezone(_UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


_ISO_8601 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?$"
)


def parse_iso8601(text: str) -> dt.datetime:
    """Parse the ISO 8601 forms people send (``Z`` or offsets, any fraction length)."""
    match = _ISO_8601.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not an ISO 8601 date-time")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    tz: dt.tzinfo = _UTC
    if zone and zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset = dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
        tz = dt.timezone(sign * offset)
    return dt.datetime(
        int(year), int(month), int(day),
        int(hour or 0), int(minute or 0), int(second or 0), micros, tzinfo=tz,
    )  # fmt: skip


def normalize_event_time(value: object) -> str:
    """A caller's ``event_time`` (datetime or ISO 8601 str) as ISO 8601 UTC with ``Z``."""
    if isinstance(value, dt.datetime):
        return format_datetime(value)
    if isinstance(value, str):
        try:
            return format_datetime(parse_iso8601(value))
        except ValueError as exc:
            raise ValueError(f"properties['event_time']: {exc}") from None
    raise TypeError(
        "properties['event_time'] must be a datetime or an ISO 8601 string; "
        f"got {type(value).__name__}"
    )


# ---------------------------------------------------------------- envelope


class EventFactory:
    """Builds event envelopes and their ids for one client in one process.

    ``event_id`` keeps the browser SDK's shape ``<session_id>_<n>_<epoch ms>``.
    ``n`` is this process's event counter followed by the process id in seven
    digits (``n = counter * 10**7 + pid``), so two forked workers tracking for
    the same session in the same millisecond still get distinct ids.
    """

    def __init__(self) -> None:
        self.reset_for_process()

    def reset_for_process(self) -> None:
        """New process, new session id and counter (called at creation and after fork)."""
        self._pid_part = os.getpid() % 10**7
        self._counter: Iterator[int] = itertools.count(1)
        self.process_session_id = f"py_{uuid.uuid4().hex[:16]}"

    def envelope(self, name: str, properties: Mapping[str, Any]) -> dict[str, Any]:
        """The event object for ``track(name, properties)``, ids and time filled in."""
        event: dict[str, Any] = {"event": name, "event_id": None, "event_time": None}
        event.update(properties)
        if event["event"] != name:
            raise ValueError(
                f"properties['event'] is {event['event']!r} but the event name is {name!r}"
            )
        epoch_ms = time.time_ns() // 1_000_000
        given_time = event["event_time"]
        event["event_time"] = (
            format_epoch_ms(epoch_ms) if given_time is None else normalize_event_time(given_time)
        )
        given_id = event["event_id"]
        if given_id is None:
            n = next(self._counter) * 10**7 + self._pid_part
            event["event_id"] = f"{self._session_id(event)}_{n}_{epoch_ms}"
        elif not isinstance(given_id, str) or not given_id:
            raise TypeError(f"properties['event_id'] must be a non-empty str; got {given_id!r}")
        return event

    def _session_id(self, event: Mapping[str, Any]) -> str:
        user_properties = event.get("user_properties")
        if type(user_properties) is dict or isinstance(user_properties, Mapping):
            session_id = user_properties.get("session_id")
            if session_id is not None and session_id != "":
                return str(session_id)
        return self.process_session_id


def envelope_problem(event: Mapping[str, Any]) -> Optional[str]:
    """What makes ``event`` (a transform's result) unfit for the wire format, or None."""
    for field in ("event", "event_id", "event_time"):
        value = event.get(field)
        if not isinstance(value, str) or not value:
            return f"returned an event whose {field!r} is not a non-empty str ({value!r:.40})"
    try:
        parse_iso8601(event["event_time"])
    except ValueError:
        return f"returned an event whose 'event_time' is not ISO 8601 ({event['event_time']!r:.40})"
    return None


def copy_tree(value: Any) -> Any:
    """A copy of the dicts, lists, tuples and sets in ``value``; leaves are shared.

    Hands the transform an event it may mutate without touching the caller's
    objects. Much cheaper than ``copy.deepcopy`` for JSON-shaped data. Tuples
    and sets become lists, as they will be sent (a set sorted): a set's tuples
    copied as lists could not stay in a set.
    """
    kind = type(value)
    if kind is dict or isinstance(value, Mapping):
        return {key: copy_tree(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [copy_tree(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return [copy_tree(item) for item in _as_sent(value)]
    return value


# ---------------------------------------------------------------- JSON


#: The largest finite double: a JSON number beyond it reads as infinity almost everywhere.
_LARGEST_DOUBLE = decimal.Decimal(sys.float_info.max)


def _decimal_problem(value: decimal.Decimal) -> Optional[str]:
    """Why a Decimal cannot be sent: NaN and infinities are not JSON, and one beyond a
    double's range reads as infinity almost everywhere (the reference receiver refuses it)."""
    if not value.is_finite():
        return f"Decimal {decimal.Decimal.__str__(value)} is not JSON"
    if abs(value) > _LARGEST_DOUBLE:
        return f"Decimal {value:.3E} overflows a double: JSON readers take it for infinity"
    return None


def _int_fits(value: int) -> bool:
    """Python refuses to write an int of more than 4300 digits (sys.int_info)."""
    return value.bit_length() <= 14_000


def _encode_extra(value: Any) -> Any:
    """``json``'s ``default`` hook: the types we carry beyond plain JSON."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            return value.astimezone(_UTC).isoformat().replace("+00:00", "Z")
        return value.isoformat()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        if _decimal_problem(value):
            raise ValueError("Decimal out of range")
        # Decimal's own text, not a subclass's __str__: it must stay a JSON number.
        return _DECIMAL_MARK + decimal.Decimal.__str__(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        return _as_sent(value)
    raise TypeError(type(value).__name__)


def _as_sent(items: Set[Any]) -> list[Any]:
    """A set as a JSON array: sorted, so the same set is the same text in every process."""
    try:
        return sorted(items)
    except (TypeError, ArithmeticError):  # mixed types; a Decimal NaN refuses to compare
        return list(items)


_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_encode_extra
)


def _fast_encoder() -> Callable[[Any], str]:
    """The C encoder ``json`` builds on every call, built once; else the plain encoder.

    No circular-reference markers: a cycle ends in ``RecursionError`` instead,
    which ``encode`` turns into the same error as any other bad value.
    """
    make: Any = getattr(json.encoder, "c_make_encoder", None)
    try:
        iterencode = make(
            None, _encode_extra, json.encoder.encode_basestring, None, ":", ",",
            False, False, False,
        )  # fmt: skip
        sample = {"a": [1, 2.5, "é\n", None, True, {"b": decimal.Decimal("1.10")}]}
        if "".join(iterencode(sample, 0)) == _ENCODER.encode(sample):
            return lambda value: "".join(iterencode(value, 0))
    except Exception:  # another Python, another signature: the plain encoder is correct too
        pass
    return _ENCODER.encode


_encode_json = _fast_encoder()

# orjson is given plain data only. Subclasses (Flask's MultiDict, Django's QueryDict, a
# dict that redacts in items()), dataclasses and any type of its own go to the hook, which
# refuses them, and take the stdlib's path: one set of rules, whichever encoder wrote it.
_ORJSON_OPTIONS = (
    0
    if orjson is None
    else orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
use_orjson: bool = orjson is not None


def _encode_extra_for_orjson(value: Any) -> Any:
    """orjson's ``default`` hook: exact datetimes, Decimals and sets; anything else raises."""
    kind = type(value)
    if kind is decimal.Decimal:
        if _decimal_problem(value):
            raise ValueError("Decimal out of range")
        return orjson.Fragment(str(value))
    if kind in (dt.datetime, dt.date, dt.time, set, frozenset):
        return _encode_extra(value)
    raise TypeError(kind.__name__)


def _encode_quickly(event: Mapping[str, Any]) -> Optional[bytes]:
    """``event`` as UTF-8 JSON by orjson (a fifth of the stdlib's time), or None.

    None sends the event to the stdlib encoder, whose errors name the bad
    path: whatever orjson refuses (ints beyond 64 bits, lone surrogates,
    non-str keys, nesting deeper than 254, what the hook refuses) and any
    output holding ``null``, because orjson writes NaN and infinities as
    ``null`` where JSON has no such numbers and the stdlib refuses them.
    """
    if not use_orjson:
        return None
    try:
        data = orjson.dumps(event, default=_encode_extra_for_orjson, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError
        return None
    if b"null" in data:
        return None
    # A copy of exactly its size: orjson's own bytes object keeps the room it grew into,
    # and an event kept queued would hold a fresh page of memory, one page fault each
    # (measured: 1.5 us of system time per event at 444 bytes, 19 us at 5 kB).
    return bytes(memoryview(data))


def encode(event: Mapping[str, Any]) -> bytes:
    """The event as compact UTF-8 JSON; ``UnencodableValue`` names the first bad path.

    Encoding to bytes here, once, in ``track()``'s thread, is what keeps a bad
    string from costing its batch-mates: a str with a lone surrogate (valid
    JSON can produce one: ``json.loads('"\\ud800"')``) has no UTF-8 form, and
    it is refused now instead of failing the whole batch in the worker.
    """
    data = _encode_quickly(event)
    if data is not None:
        return data
    try:
        text = _encode_json(event)
        if _DECIMAL_MARK in text:
            text = _DECIMAL_STRING.sub(r"\1", text)
        return text.encode("utf-8")
    except Exception as exc:  # a user's tzinfo or __str__ may raise anything
        problem = find_unencodable(event)
        if problem is None:
            problem = UnencodableValue("", f"could not be encoded: {type(exc).__name__}: {exc}")
        raise problem from None


def find_unencodable(value: Any, path: str = "") -> Optional[UnencodableValue]:
    """The first value under ``value`` that ``encode`` cannot carry, with its path."""
    try:
        return _walk(value, path, set())
    except RecursionError:
        return UnencodableValue(path, "nested too deeply to encode")


def _walk(value: Any, path: str, open_containers: set[int]) -> Optional[UnencodableValue]:
    if isinstance(value, str):
        return None if _is_utf8_safe(value) else UnencodableValue(path, _SURROGATE_REASON)
    if isinstance(value, int) and not _int_fits(value):
        return UnencodableValue(path, f"an int of {value.bit_length()} bits is too large to send")
    if value is None or isinstance(value, (bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else UnencodableValue(path, f"{value} is not JSON")
    if isinstance(value, decimal.Decimal):
        problem = _decimal_problem(value)
        return None if problem is None else UnencodableValue(path, problem)
    if isinstance(value, (dt.date, dt.time, uuid.UUID)):
        try:
            _encode_extra(value)
        except Exception as exc:  # a datetime out of range in UTC, a tzinfo that raises
            return UnencodableValue(path, f"{type(value).__name__} could not be written: {exc}")
        return None
    if isinstance(value, enum.Enum):
        return _walk(value.value, path, open_containers)
    if not isinstance(value, (Mapping, list, tuple, set, frozenset)):
        return UnencodableValue(
            path,
            f"{type(value).__name__} is not JSON serializable "
            "(use str, int, float, bool, None, dict, list, datetime, Decimal, UUID or Enum)",
        )
    if id(value) in open_containers:
        return UnencodableValue(path, "circular reference")
    open_containers.add(id(value))
    try:
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not (key is None or isinstance(key, (str, int, float, bool))):
                    return UnencodableValue(path, f"dict key {key!r} is not a str")
                if isinstance(key, float) and not math.isfinite(key):
                    return UnencodableValue(path, f"dict key {key!r} is not JSON")
                if isinstance(key, int) and not _int_fits(key):
                    return UnencodableValue(
                        path, f"dict key of {key.bit_length()} bits is too large to send"
                    )
                if isinstance(key, str) and not _is_utf8_safe(key):
                    return UnencodableValue(path, f"dict key {key!r}: {_SURROGATE_REASON}")
                found = _walk(item, f"{path}[{key!r}]", open_containers)
                if found:
                    return found
        else:
            for index, item in enumerate(value):
                found = _walk(item, f"{path}[{index}]", open_containers)
                if found:
                    return found
        return None
    finally:
        open_containers.discard(id(value))


_SURROGATE_REASON = (
    "str holds a lone surrogate (such as '\\ud800'), which has no UTF-8 form; "
    "decode your input with errors='replace' or fix its source"
)


def _is_utf8_safe(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def decode_for_report(texts: list[bytes]) -> list[Any]:
    """The events of ``texts`` as objects, for ``on_error``. A text that does not parse
    (``encode`` makes none, but a report must never fail) is handed over as a str."""
    events: list[Any] = []
    for text in texts:
        try:
            events.append(json.loads(text))
        except ValueError:
            events.append(text.decode("utf-8", "replace"))
    return events


def new_batch_id() -> str:
    """A fresh batch id: ``b_`` and 32 hex digits."""
    return f"b_{uuid.uuid4().hex}"


def batch_body(encoded_events: list[bytes], batch_id: str, sent_at_ms: int) -> bytes:
    """The POST body for a batch, joining events that were each encoded once in ``track()``."""
    batch_info = {
        "size": len(encoded_events),
        "timestamp": format_epoch_ms(sent_at_ms),
        "source": SOURCE,
        "batch_id": batch_id,
    }
    return b"".join(
        (
            b'{"events":[',
            b",".join(encoded_events),
            b'],"batch_info":',
            json.dumps(batch_info, separators=(",", ":")).encode(),
            b"}",
        )
    )
