"""Events and the transform (SPEC sections 3 and 4), checked on what reaches the receiver."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import re
import subprocess
import sys
import textwrap
import threading
import uuid
from typing import Any

import pytest
from receiver import Receiver

import campaign_cart_analytics as cca
from campaign_cart_analytics import events
from campaign_cart_analytics.events import EventFactory, encode

ISO_UTC_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

ADD_TO_CART = {
    "ecommerce": {
        "items": [
            {"item_id": "SKU123", "item_name": "Product Name", "price": 29.99, "quantity": 1}
        ],
        "value": 29.99,
        "currency": "USD",
    },
    "user_properties": {"user_id": "user_123", "session_id": "sess_123", "country": "US"},
    "attribution": {"source": "google", "medium": "cpc", "campaign": "summer_sale"},
}


def sent(
    make_client: Any, receiver: Receiver, *calls: tuple[str, Any], **options: Any
) -> list[dict[str, Any]]:
    client = make_client(**options)
    for name, properties in calls:
        client.track(name, properties)
    assert client.flush(timeout=5)
    return receiver.delivered_events()


def test_envelope_has_name_id_time_then_the_callers_top_level_keys(
    make_client: Any, receiver: Receiver
) -> None:
    (event,) = sent(make_client, receiver, ("dl_add_to_cart", ADD_TO_CART))
    assert list(event) == [
        "event",
        "event_id",
        "event_time",
        "ecommerce",
        "user_properties",
        "attribution",
    ]
    assert event["event"] == "dl_add_to_cart"
    assert event["ecommerce"] == ADD_TO_CART["ecommerce"]
    assert event["attribution"] == ADD_TO_CART["attribution"]
    assert ISO_UTC_MS.match(event["event_time"])


def test_event_id_has_the_seed_shape_and_uses_the_session_id(
    make_client: Any, receiver: Receiver
) -> None:
    events = sent(make_client, receiver, ("dl_view_item", ADD_TO_CART), ("dl_view_item", {}))
    session_id, n, millis = events[0]["event_id"].rsplit("_", 2)
    assert session_id == "sess_123" and n.isdigit() and millis.isdigit()
    event_time = dt.datetime.strptime(events[0]["event_time"], "%Y-%m-%dT%H:%M:%S.%f%z")
    assert int(millis) == int(event_time.timestamp() * 1000)
    own_session, _, _ = events[1]["event_id"].rsplit("_", 2)
    assert own_session.startswith("py_") and own_session != "sess_123"


def test_event_ids_are_unique_across_threads_in_the_same_millisecond() -> None:
    factory = EventFactory()
    ids: list[str] = []
    lock = threading.Lock()

    def make_ids() -> None:
        made = [
            factory.envelope("e", {"user_properties": {"session_id": "s"}})["event_id"]
            for _ in range(2000)
        ]
        with lock:
            ids.extend(made)

    threads = [threading.Thread(target=make_ids) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == len(set(ids)) == 16000


def test_callers_event_id_and_event_time_are_kept_for_backfills(
    make_client: Any, receiver: Receiver
) -> None:
    aware = dt.datetime(2025, 1, 12, 11, 30, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    events = sent(
        make_client,
        receiver,
        ("dl_purchase", {"event_id": "replay_1", "event_time": aware}),
        ("dl_purchase", {"event_time": "2025-01-12T10:30:00Z"}),
        ("dl_purchase", {"event_time": "2025-01-12T05:30:00.5-05:00"}),
        ("dl_purchase", {"event_time": dt.datetime(2025, 1, 12, 10, 30)}),  # naive: taken as UTC
    )
    assert events[0]["event_id"] == "replay_1"
    assert [e["event_time"] for e in events] == [
        "2025-01-12T10:30:00.123Z",
        "2025-01-12T10:30:00.000Z",
        "2025-01-12T10:30:00.500Z",
        "2025-01-12T10:30:00.000Z",
    ]


@pytest.mark.parametrize(
    ("name", "properties", "error", "message"),
    [
        (42, None, TypeError, "event must be a str"),
        ("", None, ValueError, "non-empty"),
        ("e", ["not", "a", "mapping"], TypeError, "properties must be a mapping"),
        ("e", {"event_time": "yesterday"}, ValueError, r"properties\['event_time'\]"),
        (
            "e",
            {"event_time": 1736677800},
            TypeError,
            r"properties\['event_time'\] must be a datetime",
        ),
        ("e", {"event_id": ""}, TypeError, r"properties\['event_id'\]"),
        ("e", {"event": "other"}, ValueError, "but the event name is 'e'"),
        ("e", {(1, 2): "x"}, TypeError, r"dict key \(1, 2\) is not a str"),
    ],
)
def test_programming_errors_raise_at_once(
    make_client: Any, name: Any, properties: Any, error: type, message: str
) -> None:
    client = make_client()
    with pytest.raises(error, match=message):
        client.track(name, properties)
    assert client.stats().tracked == 0


def test_values_json_cannot_carry_name_their_path(make_client: Any) -> None:
    client = make_client()
    bad = {"ecommerce": {"items": [{"price": object()}]}}
    with pytest.raises(
        TypeError,
        match=r"^properties\['ecommerce'\]\['items'\]\[0\]\['price'\]: object is not JSON",
    ):
        client.track("dl_add_to_cart", bad)
    with pytest.raises(TypeError, match=r"properties\['value'\]: nan is not JSON"):
        client.track("e", {"value": float("nan")})
    with pytest.raises(TypeError, match=r"properties\['v'\]: Decimal Infinity"):
        client.track("e", {"v": decimal.Decimal("Infinity")})
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(TypeError, match=r"properties\['loop'\]\['self'\]: circular reference"):
        client.track("e", {"loop": loop})
    with pytest.raises(TypeError, match=r"properties\['raw'\]: bytes"):
        client.track("e", {"raw": b"\x00"})
    assert client.stats().tracked == 0


def test_extra_types_are_encoded_as_the_spec_says(make_client: Any, receiver: Receiver) -> None:
    order_id = uuid.UUID("12345678-1234-5678-1234-567812345678")
    properties = {
        "ecommerce": {
            "value": decimal.Decimal("29.99"),
            "tax": decimal.Decimal("0.10000000000000000001"),
        },
        "placed_at": dt.datetime(2025, 1, 12, 10, 30, tzinfo=dt.timezone.utc),
        "local_at": dt.datetime(2025, 1, 12, 10, 30),
        "ship_on": dt.date(2025, 1, 14),
        "order_id": order_id,
        "dims": (1, 2),
        "tags": {"b", "a"},
    }
    sent(make_client, receiver, ("dl_purchase", properties))
    body = receiver.requests[0].body.decode()
    assert '"value":29.99' in body and '"tax":0.10000000000000000001' in body
    (event,) = json.loads(body, parse_float=decimal.Decimal)["events"]
    assert event["ecommerce"]["tax"] == decimal.Decimal("0.10000000000000000001")
    assert event["placed_at"] == "2025-01-12T10:30:00Z"
    assert event["local_at"] == "2025-01-12T10:30:00"
    assert event["ship_on"] == "2025-01-14"
    assert event["order_id"] == str(order_id)
    assert event["dims"] == [1, 2] and event["tags"] == ["a", "b"]


def test_a_string_that_looks_like_our_decimal_marker_stays_a_string() -> None:
    text = encode({"note": "cca-decimal-0000000000000000:1.5", "v": decimal.Decimal("1.5")})
    assert json.loads(text) == {"note": "cca-decimal-0000000000000000:1.5", "v": 1.5}


class _FirstValues(dict):  # type: ignore[type-arg]
    """Like Flask's MultiDict and Django's QueryDict: items() shows one value per key."""

    def items(self) -> Any:
        return [(key, values[0]) for key, values in dict.items(self)]


class _Money(decimal.Decimal):
    def __str__(self) -> str:
        return f"{decimal.Decimal.__str__(self)} USD"


class _BrokenZone(dt.tzinfo):
    def utcoffset(self, when: Any) -> dt.timedelta:
        raise RuntimeError("no offset today")


def _nested(levels: int) -> list[Any]:
    outer: list[Any] = []
    inner = outer
    for _ in range(levels):
        inner.append([])
        inner = inner[0]
    return outer


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ({"q": _FirstValues(q=["shoes", "boots"])}, b'{"q":{"q":"shoes"}}'),
        ({"v": _Money("29.99")}, b'{"v":29.99}'),  # a JSON number, whatever __str__ says
        ({"n": None, "s": "annulled"}, b'{"n":null,"s":"annulled"}'),
    ],
    ids=["dict-subclass-items", "decimal-subclass", "null"],
)
def test_both_encoders_write_the_same(encoder: str, value: Any, written: bytes) -> None:
    assert encode(value) == written


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"v": decimal.Decimal("9E+308")}, r"\['v'\]: Decimal 9.000E\+308 overflows a double"),
        (
            {"d": dt.datetime.max.replace(tzinfo=dt.timezone(-dt.timedelta(hours=5)))},
            r"\['d'\]: datetime could not be written",
        ),
        (
            {"t": dt.datetime(2025, 1, 1, tzinfo=_BrokenZone())},
            r"\['t'\]: datetime could not be written: no offset today",
        ),
        ({"h": {float("nan"): 3}}, r"\['h'\]: dict key nan is not JSON"),
        ({"m": {10**5000: 1}}, r"\['m'\]: dict key of 16610 bits is too large"),
        (
            {"p": {decimal.Decimal("NaN"), decimal.Decimal(1)}},
            r"\['p'\]\[\d\]: Decimal NaN is not JSON",
        ),
        ({"deep": _nested(5000)}, r"nested too deeply"),
    ],
    ids=[
        "decimal-beyond-double",
        "datetime-beyond-utc",
        "tzinfo-raises",
        "nan-key",
        "huge-int-key",
        "nan-in-set",
        "deep",
    ],
)
def test_both_encoders_refuse_the_same_naming_the_path(
    encoder: str, value: Any, message: str
) -> None:
    with pytest.raises(events.UnencodableValue, match=message):
        encode(value)


def test_the_event_is_a_snapshot(make_client: Any, receiver: Receiver) -> None:
    properties = {"ecommerce": {"items": [{"item_id": "A", "quantity": 1}]}}
    original = json.dumps(properties)
    client = make_client(transform_function=lambda e: e, batch_interval_ms=60_000)
    client.track("dl_add_to_cart", properties)
    no_transform = make_client(batch_interval_ms=60_000)
    no_transform.track("dl_add_to_cart", properties)
    assert json.dumps(properties) == original  # never mutated
    properties["ecommerce"]["items"][0]["quantity"] = 99  # changed after track returned
    assert client.flush(timeout=5) and no_transform.flush(timeout=5)
    assert [e["ecommerce"]["items"][0]["quantity"] for e in receiver.delivered_events()] == [1, 1]


def test_transform_runs_once_per_event_in_the_callers_thread_on_a_copy(
    make_client: Any, receiver: Receiver
) -> None:
    calls: list[str] = []
    properties = {"user_properties": {"session_id": "s1", "customer_phone": "555-0100"}}

    def scrub(event: dict[str, Any]) -> dict[str, Any]:
        calls.append(threading.current_thread().name)
        del event["user_properties"]["customer_phone"]
        event["app_version"] = "1.0.0"
        return event

    events = sent(
        make_client,
        receiver,
        ("dl_view_item", properties),
        ("dl_view_item", properties),
        transform_function=scrub,
    )
    assert calls == [threading.current_thread().name] * 2
    assert properties["user_properties"]["customer_phone"] == "555-0100"
    assert all(
        "customer_phone" not in e["user_properties"] and e["app_version"] == "1.0.0" for e in events
    )
    assert events[0]["event_time"] and events[0]["event"] == "dl_view_item"


def test_transform_returning_none_filters_and_counts(make_client: Any, receiver: Receiver) -> None:
    client = make_client(transform_function=lambda e: e if e["event"] == "dl_purchase" else None)
    assert client.track("dl_view_item") is None
    assert client.track("dl_purchase") is not None
    assert client.flush(timeout=5)
    assert [e["event"] for e in receiver.delivered_events()] == ["dl_purchase"]
    stats = client.stats()
    assert (stats.tracked, stats.filtered, stats.delivered, stats.dropped) == (2, 1, 1, 0)


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (lambda e: 1 / 0, "transform_function raised ZeroDivisionError"),
        (lambda e: [e], "transform_function must return a dict or None; got list"),
        (lambda e: {**e, "bad": object()}, r"returned a value JSON cannot carry: event\['bad'\]"),
    ],
)
def test_a_failing_transform_is_logged_counted_and_reported_not_raised(
    make_client: Any,
    receiver: Receiver,
    sdk_logs: pytest.LogCaptureFixture,
    transform: Any,
    message: str,
) -> None:
    reported: list[tuple[list[dict[str, Any]], BaseException]] = []
    client = make_client(
        transform_function=transform,
        on_error=lambda events, error: reported.append((events, error)),
    )
    assert client.track("dl_view_item", {"x": 1}) is None
    assert client.track("dl_view_item", {"x": 2}) is None
    stats = client.stats()
    assert (stats.tracked, stats.dropped_transform_error, stats.queued) == (2, 2, 0)
    assert len(reported) == 2
    events, error = reported[0]
    assert isinstance(error, cca.TransformError) and re.search(message, str(error))
    assert events[0]["event"] == "dl_view_item" and events[0]["x"] == 1
    errors = [
        r
        for r in sdk_logs.records
        if r.name == "campaign_cart_analytics" and r.levelno == logging.ERROR
    ]
    assert len(errors) == 1  # logged once, the second one held back by the rate limit
    assert re.search(message, errors[0].getMessage())
    if "raised" in message:
        assert errors[0].exc_info is not None  # with its traceback


def test_sets_of_tuples_reach_a_transform_and_the_endpoint_as_lists(
    make_client: Any, receiver: Receiver
) -> None:
    seen: list[Any] = []
    client = make_client(transform_function=lambda e: seen.append(e["pairs"]) or e)
    client.track("e", {"pairs": {("sku", "1")}, "nested": frozenset({frozenset({1})})})
    assert client.flush(timeout=5) is True
    assert seen == [[["sku", "1"]]]
    (event,) = receiver.delivered_events()
    assert event["pairs"] == [["sku", "1"]] and event["nested"] == [[1]]


def test_a_set_is_sent_sorted_with_or_without_a_transform(
    make_client: Any, receiver: Receiver
) -> None:
    tags = {f"tag-{letter}" for letter in "hgfedcba"}  # iterated in hash order, per process
    for transform in (None, lambda event: event):
        client = make_client(transform_function=transform)
        client.track("e", {"tags": tags})
        assert client.flush(timeout=5) is True
    assert [event["tags"] for event in receiver.delivered_events()] == [sorted(tags)] * 2


def test_a_transform_never_changes_the_callers_objects_whatever_their_class(
    make_client: Any, receiver: Receiver
) -> None:
    class Tags(list):  # type: ignore[type-arg]
        pass

    class Flags(set):  # type: ignore[type-arg]
        pass

    tags, flags = Tags(["a"]), Flags({"x"})

    def change(event: dict[str, Any]) -> dict[str, Any]:
        event["tags"].append("added")
        event["flags"].append("added")  # a list now, as it will be sent
        return event

    client = make_client(transform_function=change)
    client.track("e", {"tags": tags, "flags": flags})
    assert client.flush(timeout=5) is True
    assert tags == ["a"] and flags == {"x"}
    (event,) = receiver.delivered_events()
    assert event["tags"] == ["a", "added"] and event["flags"] == ["x", "added"]


def test_a_callers_bad_value_still_raises_when_a_transform_is_set(make_client: Any) -> None:
    client = make_client(transform_function=lambda e: e)
    with pytest.raises(TypeError, match=r"properties\['when'\]: object"):
        client.track("e", {"when": object()})


def test_return_value_is_the_event_id_or_none_when_disabled(
    make_client: Any, receiver: Receiver
) -> None:
    client = make_client()
    event_id = client.track("dl_view_item", ADD_TO_CART)
    assert client.flush(timeout=5)
    assert receiver.delivered_events()[0]["event_id"] == event_id
    disabled = cca.Analytics(receiver.url, enabled=False)
    assert disabled.track("dl_view_item", ADD_TO_CART) is None
    assert disabled.flush() is True and disabled.stats().tracked == 0
    with pytest.raises(TypeError):
        disabled.track(None)  # type: ignore[arg-type]


def test_queued_texts_hold_their_size_in_memory_not_a_page_each() -> None:
    # A queued event keeps its text until delivered. orjson's own bytes object is cut
    # down from the room it grew into, and the allocator then gives each next one fresh
    # memory: a page (4 kB) and a page fault per event. encode() hands over a copy.
    script = textwrap.dedent(
        """
        import os
        from campaign_cart_analytics.events import encode

        def rss():
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

        encode({"warm": 1})
        before = rss()
        texts = [encode({"event": "e", "n": n, "pad": "x" * 420}) for n in range(20_000)]
        print((rss() - before) / len(texts), len(texts[0]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    per_text, size = map(float, result.stdout.split())
    assert 440 < size < 480
    assert per_text < 2 * size, per_text  # measured: about 500 bytes; orjson's own: 4 kB
