"""Remote, slow and overloaded endpoints (SPEC section 10, issue 9).

Concurrency against the suite's receiver with delays; the overload pause and
its recovery against scripted 429/503 answers and against a real nginx
``limit_req`` that refuses bursts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import Errors, assert_balanced
from nginx import Nginx
from receiver import Receiver, Reply

import campaign_cart_analytics as cca
from campaign_cart_analytics import worker as worker_module


def overlap(receiver: Receiver, delay: float) -> int:
    """The most requests that were in flight at once, each taking ``delay`` seconds."""
    starts = sorted(request.at for request in receiver.requests)
    return max(sum(1 for other in starts if start <= other < start + delay) for start in starts)


# ---------------------------------------------------------------- concurrency


def test_batches_go_out_concurrently_up_to_the_limit(make_client: Any, receiver: Receiver) -> None:
    receiver.respond = lambda request: Reply(202, delay=0.3)
    client = make_client(batch_size=10, batch_interval_ms=60_000, max_concurrent_requests=3)
    for i in range(60):
        client.track("e", {"i": i})
    started = time.monotonic()
    assert client.flush(timeout=10) is True
    took = time.monotonic() - started
    assert overlap(receiver, 0.3) == 3
    assert 0.55 <= took < 1.2  # 6 batches, 3 at a time: two rounds of 0.3 s
    assert sorted(e["i"] for e in receiver.delivered_events()) == list(range(60))


def test_a_due_retry_does_not_wait_behind_a_slow_request(
    make_client: Any, receiver: Receiver
) -> None:
    receiver.respond = lambda request: (
        Reply(202, delay=1.5) if request.events[0]["event"] == "slow" else Reply(202)
    )
    receiver.script(Reply(500))  # the first batch fails once, then its retry is due
    client = make_client(batch_size=1, retry_delay_ms=100)
    client.track("retried")
    time.sleep(0.05)
    client.track("slow")
    started = time.monotonic()
    assert client.flush(timeout=5) is True
    retried = [r for r in receiver.requests if r.events[0]["event"] == "retried"]
    assert len(retried) == 2 and retried[1].at - retried[0].at < 0.4  # not 1.5 s
    assert time.monotonic() - started < 2.5


# ---------------------------------------------------------------- overload


@pytest.mark.parametrize("status", [429, 503])
def test_an_overload_pauses_everything_and_costs_no_retry(
    make_client: Any, receiver: Receiver, status: int
) -> None:
    receiver.script(Reply(status, headers={"Retry-After": "1"}))
    errors = Errors()
    client = make_client(batch_size=1, max_retries=0, on_error=errors)
    client.track("first")
    assert receiver.wait_for_requests(1, timeout=2)
    time.sleep(0.1)  # the answer reaches the client
    for n in range(3):
        client.track("during the pause", {"n": n})
    time.sleep(0.5)
    assert len(receiver.requests) == 1  # nobody goes out during the pause
    assert f"HTTP {status}" in str(client.stats().last_error)  # said, though not a retry
    assert "sending paused" in str(client.stats().last_error)
    assert client.flush(timeout=5) is True  # max_retries=0, and still delivered
    after = receiver.requests[1:]
    assert after[0].at - receiver.requests[0].at >= 0.95
    assert after[0].events[0]["event"] == "first"  # the paused batch probes first...
    assert after[1].at >= after[0].at  # ...and the others follow it
    assert errors.calls == [] and client.stats().retries == 0
    assert_balanced(client.stats())


def test_without_retry_after_the_pause_lasts_until_the_batchs_retry(
    make_client: Any, receiver: Receiver
) -> None:
    receiver.script(Reply(429))
    client = make_client(retry_delay_ms=400)
    client.track("e")
    assert client.flush(timeout=5) is True
    first, second = receiver.requests
    assert 0.38 <= second.at - first.at < 0.8


def test_after_a_pause_one_request_goes_first(make_client: Any, receiver: Receiver) -> None:
    receiver.respond = lambda request: Reply(202, delay=0.2)
    receiver.script(Reply(503, headers={"Retry-After": "0.3"}))
    client = make_client(batch_size=1, batch_interval_ms=60_000, max_concurrent_requests=4)
    for n in range(6):
        client.track("e", {"n": n})
    assert client.flush(timeout=10) is True
    refused_at = receiver.requests[0].at
    resumed = [r.at for r in receiver.requests[1:] if r.at > refused_at + 0.25]
    assert len(resumed) >= 2 and resumed[1] - resumed[0] >= 0.18  # the probe went alone


def test_a_500_pauses_nothing_else(make_client: Any, receiver: Receiver) -> None:
    receiver.respond = lambda request: Reply(500 if request.events[0]["event"] == "bad" else 202)
    client = make_client(batch_size=1, retry_delay_ms=1000, max_retries=1)
    client.track("bad")
    assert receiver.wait_for_requests(1, timeout=2)
    client.track("good")
    good = receiver.wait_for_requests(2, timeout=2)[1]
    assert good.events[0]["event"] == "good" and good.at - receiver.requests[0].at < 0.3
    client.shutdown(timeout=0.1)


def test_an_endpoint_overloaded_for_good_holds_batches_until_shutdown(
    make_client: Any, receiver: Receiver
) -> None:
    receiver.respond = lambda request: Reply(503, headers={"Retry-After": "0.1"})
    errors = Errors()
    client = make_client(max_retries=0, on_error=errors)
    client.track("e")
    assert client.flush(timeout=0.5) is False  # waiting, not dropped
    assert client.stats().queued == 1 and client.stats().dropped == 0
    assert client.shutdown(timeout=0.3) is False
    assert client.stats().dropped_shutdown == 1 and len(errors.events) == 1


# ---------------------------------------------------------------- nginx limit_req


@pytest.fixture
def rate_limited(receiver: Receiver) -> Iterator[Nginx]:
    nginx = Nginx(int(receiver.url.split(":")[2].split("/")[0]), rate=20)
    yield nginx
    nginx.stop()


@pytest.mark.timeout(60)
def test_behind_nginx_limit_req_every_event_arrives_once(
    receiver: Receiver, rate_limited: Nginx
) -> None:
    client = cca.Analytics(
        rate_limited.url, batch_size=1, batch_interval_ms=1, max_retries=6, retry_delay_ms=50
    )
    try:
        for n in range(40):
            client.track("e", {"n": n})
        assert client.flush(timeout=30) is True
        delivered = receiver.delivered_events()
        assert sorted(e["n"] for e in delivered) == list(range(40))  # all, each once
        stats = client.stats()
        assert (stats.delivered, stats.dropped) == (40, 0)
        assert rate_limited.refused() < 40  # it adapted: fewer refusals than events
    finally:
        client.shutdown(timeout=2)


def test_an_overload_that_outlasts_the_patience_costs_retries_at_last(
    make_client: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "OVERLOAD_PATIENCE", 0.3)
    receiver.respond = lambda request: Reply(429, headers={"Retry-After": "0.05"})
    errors = Errors()
    client = make_client(max_retries=2, retry_delay_ms=50, on_error=errors)
    client.track("e")
    started = time.monotonic()
    assert client.flush() is False  # no timeout, and still it returns
    assert 0.3 <= time.monotonic() - started < 5.0  # paced retries: ~2 s, more under load
    assert client.stats().dropped_delivery == 1 and len(errors.events) == 1
    assert "HTTP 429" in str(errors.calls[0][1])


def test_a_shutdown_does_not_wait_for_the_pace(make_client: Any, receiver: Receiver) -> None:
    # Answered after 50 ms: the 6 batches go out side by side, and their 429s set a pace.
    receiver.script(*[Reply(429, headers={"Retry-After": "0.05"}, delay=0.05)] * 6)
    client = make_client(batch_size=1, batch_interval_ms=60_000)
    for n in range(6):
        client.track("e", {"n": n})
    assert client.flush(timeout=10) is True
    gate = client._state.worker._gate
    assert gate._rate is not None  # the overloads set a pace...
    gate._rate = 2.0  # ...say a slow one, as after a long overload
    for n in range(40):
        client.track("after", {"n": n})
    started = time.monotonic()
    assert client.shutdown(timeout=2) is True  # 40 requests at 2 a second would take 20 s
    assert time.monotonic() - started < 1.0
    assert len([e for e in receiver.delivered_events() if e["event"] == "after"]) == 40
