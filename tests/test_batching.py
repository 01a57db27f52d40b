"""When batches go out and what they look like (SPEC section 5)."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

from helpers import assert_balanced
from receiver import Receiver, Reply

from campaign_cart_analytics import __version__


def test_a_full_batch_goes_out_without_flush(make_client: Any, receiver: Receiver) -> None:
    client = make_client(batch_size=3, batch_interval_ms=60_000)
    client.track("a")
    client.track("b")
    assert receiver.wait_for_requests(1, timeout=0.3) == []
    client.track("c")
    (request,) = receiver.wait_for_requests(1, timeout=2)
    assert [e["event"] for e in request.events] == ["a", "b", "c"]


def test_the_interval_runs_from_the_first_event_of_the_batch(
    make_client: Any, receiver: Receiver
) -> None:
    client = make_client(batch_size=10, batch_interval_ms=300)
    started = time.monotonic()
    client.track("first")
    time.sleep(0.15)
    client.track("second")
    (request,) = receiver.wait_for_requests(1, timeout=2)
    waited = request.at - started
    assert 0.28 <= waited < 0.42, waited  # 300 ms after the first event, not after the second
    assert [e["event"] for e in request.events] == ["first", "second"]

    # The next batch's clock starts at its own first event.
    time.sleep(0.2)
    next_started = time.monotonic()
    client.track("third")
    second = receiver.wait_for_requests(2, timeout=2)[1]
    assert 0.28 <= second.at - next_started < 0.42


def test_a_backlog_goes_out_in_full_batches_back_to_back(
    make_client: Any, receiver: Receiver
) -> None:
    receiver.script(Reply(202, delay=0.3))  # the first request is slow: a backlog builds up
    client = make_client(batch_size=10, batch_interval_ms=60_000)
    for i in range(45):
        client.track("e", {"i": i})
    requests = receiver.wait_for_requests(4, timeout=3)
    assert [len(r.events) for r in requests] == [10, 10, 10, 10]
    assert requests[3].at - requests[0].at < 0.25  # together: none waits behind the slow one
    assert receiver.wait_for_requests(5, timeout=0.3)[4:] == []  # 5 left: not full, not due
    assert client.flush(timeout=2)
    assert sorted(e["i"] for e in receiver.delivered_events()) == list(range(45))


def senders() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "campaign-cart-analytics-sender"}


def test_one_request_at_a_time_keeps_the_order(make_client: Any, receiver: Receiver) -> None:
    senders_before = senders()
    receiver.script(Reply(202, delay=0.3))
    client = make_client(batch_size=10, batch_interval_ms=60_000, max_concurrent_requests=1)
    for i in range(45):
        client.track("e", {"i": i})
    requests = receiver.wait_for_requests(4, timeout=3)
    assert requests[1].at - requests[0].at >= 0.25  # the second waited for the first
    assert client.flush(timeout=2)
    assert [e["i"] for e in receiver.delivered_events()] == list(range(45))
    # The delivery thread sends itself: no sender thread, no hand-off each way.
    assert senders() <= senders_before


def test_a_batch_never_holds_more_than_100_events(make_client: Any, receiver: Receiver) -> None:
    client = make_client(batch_size=100, batch_interval_ms=60_000)
    for _ in range(250):
        client.track("e")
    assert client.flush(timeout=5)
    assert sorted(len(r.events) for r in receiver.requests) == [50, 100, 100]


def test_the_payload_is_the_wire_format(make_client: Any, receiver: Receiver) -> None:
    client = make_client(batch_size=2)
    client.track("dl_view_item", {"ecommerce": {"value": 1}})
    client.track("dl_add_to_cart", {"ecommerce": {"value": 2}})
    (request,) = receiver.wait_for_requests(1)
    body = request.json
    assert list(body) == ["events", "batch_info"]
    info = body["batch_info"]
    assert list(info) == ["size", "timestamp", "source", "batch_id"]
    assert info["size"] == 2 == len(body["events"])
    assert info["source"] == "next-campaign-cart"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", info["timestamp"])
    assert re.match(r"^b_[0-9a-f]{32}$", info["batch_id"])
    assert request.headers["idempotency-key"] == info["batch_id"]
    assert request.path == "/analytics"


def test_every_batch_has_its_own_id(make_client: Any, receiver: Receiver) -> None:
    client = make_client(batch_size=1)
    for _ in range(5):
        client.track("e")
    assert client.flush(timeout=5)
    ids = [r.json["batch_info"]["batch_id"] for r in receiver.requests]
    assert len(set(ids)) == 5


def test_default_and_custom_headers(make_client: Any, receiver: Receiver) -> None:
    tokens = iter(["t1", "t2"])
    client = make_client(
        batch_size=1,
        headers={
            "Authorization": lambda: f"Bearer {next(tokens)}",
            "X-Store-ID": "store-123",
            "content-type": "application/vnd.custom+json",
        },
    )
    client.track("a")
    assert client.flush(timeout=5)
    client.track("b")
    assert client.flush(timeout=5)
    first, second = receiver.requests
    assert first.headers["authorization"] == "Bearer t1"
    assert second.headers["authorization"] == "Bearer t2"  # called for every request
    assert first.headers["x-store-id"] == "store-123"
    assert first.headers["content-type"] == "application/vnd.custom+json"  # the user's wins
    assert first.headers["user-agent"].startswith(f"campaign-cart-analytics-python/{__version__}")
    plain = make_client(batch_size=1)
    plain.track("c")
    assert plain.flush(timeout=5)
    assert receiver.requests[2].headers["content-type"] == "application/json"


def test_stats_count_batches_and_balance(make_client: Any, receiver: Receiver) -> None:
    client = make_client(batch_size=4)
    for _ in range(10):
        client.track("e")
    assert client.flush(timeout=5)
    stats = client.stats()
    assert (stats.tracked, stats.delivered, stats.batches_sent, stats.queued) == (10, 10, 3, 0)
    assert_balanced(stats)


def test_a_backlog_takes_no_more_senders_than_allowed(make_client: Any, receiver: Receiver) -> None:
    # How few senders a fast endpoint's backlog takes depends on the machine's load (a
    # request that waits for a core looks like one waiting on the endpoint); what it costs
    # is measured by benchmarks/compare.py (CPU per delivered event). Here: the bound.
    client = make_client(batch_size=10, batch_interval_ms=60_000, max_concurrent_requests=8)
    before = senders()
    for i in range(600):
        client.track("e", {"i": i})
    assert client.flush(timeout=10)
    assert 1 <= len(senders() - before) <= 8
    assert len(receiver.requests) == 60
    assert sorted(e["i"] for e in receiver.delivered_events()) == list(range(600))


def test_a_backlog_to_an_endpoint_a_few_ms_away_goes_out_side_by_side(
    make_client: Any, receiver: Receiver
) -> None:
    # 3 ms an answer: under the 5 ms after which a request counts as slow, but spent
    # waiting on the endpoint, not on CPU: requests side by side pay off.
    receiver.script(*[Reply(202, delay=0.003)] * 100)
    client = make_client(batch_size=1, batch_interval_ms=60_000)
    for i in range(100):
        client.track("e", {"i": i})
    assert client.flush(timeout=10)
    arrivals = [request.at for request in receiver.requests]
    assert len(arrivals) == 100
    assert max(arrivals) - min(arrivals) < 0.2  # one at a time: 0.3 s at the very least
