"""Property-based tests (Hypothesis): generated events and generated options.

- ``track()`` with generated properties: each event is either refused at once
  with a ``TypeError``/``ValueError`` whose message names a path that leads to
  a value JSON cannot carry, or delivered to a real receiver as exactly the
  value that was tracked. A refused event never costs another one.
- Generated option values: each is accepted, or refused with a ``ConfigError``;
  no other exception, and no secret in the message or in the client's repr.
"""

from __future__ import annotations

import ast
import datetime as dt
import decimal
import enum
import json
import math
import re
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from helpers import assert_balanced
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from receiver import Receiver

import campaign_cart_analytics as cca
from campaign_cart_analytics import events
from campaign_cart_analytics.config import SEED_NAMES

pytestmark = pytest.mark.timeout(120)

RESERVED = {"event", "event_id", "event_time"}  # keys with rules of their own


# ---------------------------------------------------------------- generated values


class Opaque:
    """A value no JSON encoder knows."""


class Size(enum.Enum):
    SMALL = "s"
    LARGE = 2
    ODD = 0.5


def _with_surrogate(text: str, at: int, surrogate: str) -> str:
    at = min(at, len(text))
    return text[:at] + surrogate + text[at:]


surrogates = st.integers(0xD800, 0xDFFF).map(chr)
bad_strings = st.builds(_with_surrogate, st.text(max_size=5), st.integers(0, 5), surrogates)

good_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=6),
    st.decimals(allow_nan=False, allow_infinity=False, places=None),
    st.datetimes(),
    st.datetimes(
        timezones=st.just(dt.timezone(dt.timedelta(hours=-5))),
        max_value=dt.datetime(9999, 12, 31, 18),  # later ones are past year 9999 in UTC
    ),
    st.dates(),
    st.uuids(),
    st.sampled_from(Size),
)
bad_leaves = st.one_of(
    st.just(dt.datetime.max.replace(tzinfo=dt.timezone(dt.timedelta(hours=-5)))),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.sampled_from([decimal.Decimal("NaN"), decimal.Decimal("Infinity"), decimal.Decimal("sNaN")]),
    st.binary(max_size=4),
    st.builds(Opaque),
    st.builds(complex, st.floats(-1, 1), st.floats(-1, 1)),
    bad_strings,
)
keys = st.text(max_size=6)


def trees(leaves: st.SearchStrategy[Any], key: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.tuples(children, children),
            st.dictionaries(key, children, max_size=4),
        ),
        max_leaves=12,
    )


good_properties = st.dictionaries(
    keys.filter(lambda k: k not in RESERVED), trees(good_leaves, keys), max_size=5
)
any_properties = st.dictionaries(
    st.one_of(keys, bad_strings).filter(lambda k: k not in RESERVED),
    trees(st.one_of(good_leaves, bad_leaves), st.one_of(keys, bad_strings)),
    max_size=5,
)


# ---------------------------------------------------------------- an oracle of our own


def is_bad(value: Any) -> bool:
    """True if ``value`` or anything in it has no JSON (and UTF-8) form."""
    if isinstance(value, str):
        return any(0xD800 <= ord(char) <= 0xDFFF for char in value)
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, decimal.Decimal):
        return not value.is_finite()
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        try:
            value.astimezone(dt.timezone.utc)
        except OverflowError:  # datetime.max at -05:00 is past year 9999 in UTC
            return True
        return False
    if value is None or isinstance(value, (bool, int, dt.date, dt.time, uuid.UUID)):
        return False
    if isinstance(value, enum.Enum):
        return is_bad(value.value)
    if isinstance(value, Mapping):
        return any(is_bad(key) or is_bad(item) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return any(is_bad(item) for item in value)
    return True


def expected_json(value: Any) -> Any:
    """What the receiver must parse back (numbers as ``Decimal``), by the README's rules."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return decimal.Decimal(repr(value))
    if isinstance(value, decimal.Decimal):
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            return value.isoformat()
        return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, (dt.date, uuid.UUID)):
        return str(value) if isinstance(value, uuid.UUID) else value.isoformat()
    if isinstance(value, enum.Enum):
        return expected_json(value.value)
    if isinstance(value, Mapping):
        return {key: expected_json(item) for key, item in value.items()}
    return [expected_json(item) for item in value]


_SUBSCRIPT = re.compile(r"\[('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|-?\d+)\]")


def resolve(properties: Mapping[str, Any], path: str) -> Any:
    """The value at ``properties['a'][0]...``, as the error message names it."""
    assert path.startswith("properties"), path
    value: Any = properties
    for subscript in _SUBSCRIPT.findall(path[len("properties") :]):
        value = value[ast.literal_eval(subscript)]
    return value


# ---------------------------------------------------------------- encode()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(properties=any_properties)
def test_both_encoders_refuse_the_same_values_and_write_the_same_numbers(
    encoder: str, properties: dict[str, Any]
) -> None:
    try:
        data = events.encode(properties)
    except events.UnencodableValue as error:
        assert is_bad(properties), f"{encoder} refused a good value: {error}"
        assert is_bad(resolve(properties, "properties" + error.path)), str(error)
        return
    assert not is_bad(properties), f"{encoder} accepted a value JSON cannot carry"
    assert json.loads(data, parse_float=decimal.Decimal) == expected_json(properties)


# ---------------------------------------------------------------- track()


@pytest.fixture(scope="module")
def shared_receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def client(shared_receiver: Receiver) -> Iterator[cca.Analytics]:
    analytics = cca.Analytics(shared_receiver.url, batch_size=100, batch_interval_ms=60_000)
    yield analytics
    analytics.shutdown(timeout=2)


def delivered_event(receiver: Receiver, event_id: str) -> Any:
    for request in reversed(receiver.requests):
        body = json.loads(request.body, parse_float=decimal.Decimal)
        for event in body["events"]:
            if event["event_id"] == event_id:
                return event
    raise AssertionError(f"{event_id} never arrived")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(properties=any_properties)
def test_an_event_is_refused_naming_a_bad_path_or_delivered_exactly(
    client: cca.Analytics, shared_receiver: Receiver, properties: dict[str, Any]
) -> None:
    try:
        event_id = client.track("dl_generated", properties)
    except (TypeError, ValueError) as error:
        assert is_bad(properties), f"refused a good event: {error}"
        path, _, _ = str(error).partition(": ")
        assert is_bad(resolve(properties, path)), f"{path} is fine: {error}"
        assert client.flush(timeout=5) is True  # a refused event is no loss and costs nothing
        return
    assert not is_bad(properties), "accepted an event JSON cannot carry"
    assert event_id is not None
    assert client.flush(timeout=5) is True
    event = delivered_event(shared_receiver, event_id)
    assert {k: v for k, v in event.items() if k not in RESERVED} == expected_json(properties)
    assert_balanced(client.stats())


@settings(max_examples=60, deadline=None)
@given(properties=good_properties)
def test_the_event_is_a_snapshot_taken_at_track(
    client: cca.Analytics, shared_receiver: Receiver, properties: dict[str, Any]
) -> None:
    expected = expected_json(properties)
    event_id = client.track("dl_snapshot", properties)
    assert event_id is not None
    for key in list(properties):
        properties[key] = "changed after track()"
    assert client.flush(timeout=5) is True
    event = delivered_event(shared_receiver, event_id)
    assert {k: v for k, v in event.items() if k not in RESERVED} == expected


# ---------------------------------------------------------------- options

SECRETS = ("SECRETPW", "SECRETQ", "SECRETH")


def _url(scheme: str, userinfo: str, host: str, port: str, query: str) -> str:
    return f"{scheme}://{userinfo}{host}{port}/analytics{query}"


urls = st.builds(
    _url,
    st.sampled_from(["http", "https", "ftp", "", "HTTP"]),
    st.sampled_from(["", "user:SECRETPW@", "SECRETPW@", ":SECRETPW@"]),
    st.one_of(
        st.sampled_from(["example.com", "127.0.0.1", "[::1]", "[::1", "", "☃.com", "a b"]),
        st.text(max_size=8),
    ),
    st.one_of(
        st.just(""),
        st.integers(-5, 70_000).map(lambda p: f":{p}"),
        st.text(max_size=4).map(lambda p: f":{p}"),
    ),
    st.sampled_from(["", "?token=SECRETQ", "?a=1&token=SECRETQ#frag"]),
)
header_values = st.one_of(
    st.builds(lambda text: "Bearer SECRETH" + text, st.text(max_size=4)),
    st.builds(lambda text: text + "SECRETH", st.text(max_size=3)),
    st.just(lambda: "Bearer SECRETH"),
    st.integers(),
    st.none(),
)
option_values = st.one_of(
    st.integers(-5, 200_000),
    st.integers(),
    st.just(10**5000),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
    st.text(max_size=6),
    st.sampled_from(["10", "1e3", "True", "/", "/no/such/file.pem"]),
    urls,
    st.dictionaries(st.text(max_size=8), header_values, max_size=3),
    st.just(lambda event: event),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=400, deadline=None)
@given(
    endpoint=urls,
    name=st.sampled_from(sorted(set(SEED_NAMES) - {"endpoint"})),
    value=option_values,
    camel=st.booleans(),
)
def test_options_are_accepted_or_refused_clearly_and_never_show_a_secret(
    endpoint: str, name: str, value: Any, camel: bool
) -> None:
    settings_given = {
        "endpoint": endpoint,
        "enabled": False,
        (SEED_NAMES[name] if camel else name): value,
    }
    try:
        client = cca.Analytics.from_settings(settings_given)
    except cca.ConfigError as error:
        message = str(error)
        assert message and "\n" not in message
        for secret in SECRETS:
            assert secret not in message, message
        return
    shown = repr(client)
    for secret in SECRETS:
        assert secret not in shown, shown
    client.shutdown()


@settings(max_examples=150, deadline=None)
@given(headers=st.dictionaries(st.text(max_size=10), header_values, max_size=3))
def test_headers_are_accepted_or_refused_without_their_values(headers: dict[str, Any]) -> None:
    try:
        client = cca.Analytics("https://example.com/a", headers=headers, enabled=False)
    except cca.ConfigError as error:
        assert "SECRETH" not in str(error)
        return
    assert "SECRETH" not in repr(client)
