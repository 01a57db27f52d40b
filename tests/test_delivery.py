"""Delivery, retries and their schedule, the status table, 413 and on_error (SPEC section 6)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import pytest
from helpers import assert_balanced
from receiver import Receiver, Reply, refused_url

import campaign_cart_analytics as cca
from campaign_cart_analytics.config import Config
from campaign_cart_analytics.retry import DeliveryRetry, retry_after_seconds
from campaign_cart_analytics.shutdown_clock import ShutdownClock
from campaign_cart_analytics.transport import Transport

FAST_RETRIES = {"retry_delay_ms": 10, "max_retries": 3}


def gaps(receiver: Receiver) -> list[float]:
    times = [r.at for r in receiver.requests]
    return [later - earlier for earlier, later in zip(times, times[1:])]


def collecting() -> tuple[list[tuple[list[dict[str, Any]], BaseException]], Any]:
    reported: list[tuple[list[dict[str, Any]], BaseException]] = []
    return reported, lambda events, error: reported.append((events, error))


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_any_2xx_is_success(make_client: Any, receiver: Receiver, status: int) -> None:
    receiver.respond = lambda request: Reply(status)
    client = make_client(**FAST_RETRIES)
    client.track("e")
    assert client.flush(timeout=5) is True
    assert len(receiver.requests) == 1 and client.stats().delivered == 1


@pytest.mark.parametrize("status", [408, 500, 502, 504, 599])
def test_retryable_statuses_are_retried_then_dropped(
    make_client: Any, receiver: Receiver, status: int
) -> None:
    receiver.respond = lambda request: Reply(status)
    reported, on_error = collecting()
    client = make_client(on_error=on_error, **FAST_RETRIES)
    client.track("dl_purchase", {"order": 1})
    assert client.flush(timeout=5) is False
    assert len(receiver.requests) == 4  # 1 + max_retries
    stats = client.stats()
    assert (stats.dropped_delivery, stats.retries, stats.delivered) == (1, 3, 0)
    assert_balanced(stats)
    ((events, error),) = reported
    assert events == [receiver.requests[0].events[0]]
    assert isinstance(error, cca.DeliveryError)
    assert (error.status, error.attempts) == (status, 4)
    assert error.batch_id == receiver.requests[0].json["batch_info"]["batch_id"]
    assert f"HTTP {status}" in str(error) and "retries exhausted" in str(error)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_4xx_are_dropped_at_once_and_logged_with_the_body(
    make_client: Any, receiver: Receiver, sdk_logs: pytest.LogCaptureFixture, status: int
) -> None:
    receiver.respond = lambda request: Reply(status, body=b'{"error": "bad things"}\n')
    client = make_client(**FAST_RETRIES)
    client.track("e")
    assert client.flush(timeout=5) is False
    assert len(receiver.requests) == 1
    assert client.stats().dropped_delivery == 1
    (record,) = [r for r in sdk_logs.records if r.levelno == logging.ERROR]
    assert f"HTTP {status}" in record.getMessage()
    assert "bad things" in record.getMessage() and "not retried" in record.getMessage()


def test_the_retry_schedule_is_the_seeds(make_client: Any, receiver: Receiver) -> None:
    receiver.respond = lambda request: Reply(500)
    client = make_client(retry_delay_ms=100, max_retries=3)
    client.track("e")
    assert client.flush(timeout=5) is False
    assert len(receiver.requests) == 4
    for measured, expected in zip(gaps(receiver), [0.1, 0.2, 0.4]):
        assert expected * 0.95 <= measured < expected + 0.15, gaps(receiver)


def test_a_retried_batch_is_the_same_batch(make_client: Any, receiver: Receiver) -> None:
    receiver.script(Reply(502), Reply(500))
    client = make_client(**FAST_RETRIES)
    client.track("e")
    assert client.flush(timeout=5) is True
    bodies = {r.body for r in receiver.requests}
    keys = {r.headers["idempotency-key"] for r in receiver.requests}
    assert len(receiver.requests) == 3 and len(bodies) == 1 and len(keys) == 1
    stats = client.stats()
    assert (stats.delivered, stats.retries, stats.batches_sent) == (1, 2, 1)


def test_max_retries_zero_sends_once(make_client: Any, receiver: Receiver) -> None:
    receiver.respond = lambda request: Reply(500)
    client = make_client(max_retries=0)
    client.track("e")
    assert client.flush(timeout=5) is False
    assert len(receiver.requests) == 1


def test_connection_errors_are_retried_then_reported_in_plain_words(make_client: Any) -> None:
    reported, on_error = collecting()
    client = make_client(
        endpoint=refused_url(), on_error=on_error, retry_delay_ms=10, max_retries=2
    )
    client.track("e")
    assert client.flush(timeout=5) is False
    stats = client.stats()
    assert (stats.retries, stats.dropped_delivery) == (2, 1)
    ((_, error),) = reported
    assert isinstance(error, cca.DeliveryError)
    assert error.attempts == 3 and error.status is None
    assert "connection refused" in str(error)
    assert stats.last_error is not None and "connection refused" in stats.last_error


def test_a_read_timeout_is_retried_for_post(make_client: Any, receiver: Receiver) -> None:
    receiver.script(Reply(202, delay=0.5))
    client = make_client(request_timeout_ms=100, retry_delay_ms=10)
    client.track("e")
    assert client.flush(timeout=5) is True
    assert len(receiver.requests) == 2
    assert client.stats().retries == 1


def test_retry_after_is_honoured(make_client: Any, receiver: Receiver) -> None:
    receiver.script(
        Reply(503, headers={"Retry-After": "1"}), Reply(429, headers={"Retry-After": "0"})
    )
    client = make_client(retry_delay_ms=10)
    client.track("e")
    assert client.flush(timeout=5) is True
    first_wait, second_wait = gaps(receiver)
    assert 1.0 <= first_wait < 1.3
    assert second_wait < 0.2


def test_retry_after_is_capped_at_60_seconds_and_the_schedule_is_the_seeds() -> None:
    assert retry_after_seconds("3600") == 60
    assert retry_after_seconds("7") == 7
    assert retry_after_seconds("soon") is None  # falls back to the schedule
    assert retry_after_seconds(None) is None
    retry = DeliveryRetry.first(max_retries=10, retry_delay=1.0)
    waits = []
    for _ in range(8):
        following = retry.next_attempt("http://127.0.0.1/", error=ConnectionError("down"))
        assert following is not None
        retry, wait = following
        waits.append(wait)
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60]
    assert DeliveryRetry.first(0, 1.0).next_attempt("http://x/", error=OSError()) is None


def test_redirects_are_not_followed_and_name_the_location(
    make_client: Any, receiver: Receiver
) -> None:
    receiver.respond = lambda request: Reply(
        301, headers={"Location": "https://elsewhere.example/in?token=abc"}
    )
    reported, on_error = collecting()
    client = make_client(
        on_error=on_error, **FAST_RETRIES, headers={"Authorization": "Bearer s3cret"}
    )
    client.track("e")
    assert client.flush(timeout=5) is False
    assert len(receiver.requests) == 1
    ((_, error),) = reported
    assert "https://elsewhere.example/in?token=***" in str(error)
    assert "set endpoint to the final URL" in str(error) and "abc" not in str(error)


def test_413_splits_the_batch_until_it_fits(
    make_client: Any, receiver: Receiver, sdk_logs: pytest.LogCaptureFixture
) -> None:
    receiver.respond = lambda request: Reply(413 if len(request.events) > 2 else 202)
    client = make_client(batch_size=8, batch_interval_ms=60_000, retry_delay_ms=10)
    for i in range(8):
        client.track("e", {"i": i})
    assert client.flush(timeout=5) is True
    accepted = [r for r in receiver.requests if r.ok]
    assert sorted(len(r.events) for r in receiver.requests) == [2, 2, 2, 2, 4, 4, 8]
    assert sorted(e["i"] for e in receiver.delivered_events()) == list(range(8))
    ids = sorted(r.json["batch_info"]["batch_id"] for r in accepted)
    assert len(set(ids)) == 4
    assert [batch_id[-4:] for batch_id in ids] == ["-1-1", "-1-2", "-2-1", "-2-2"]
    stats = client.stats()
    assert (stats.delivered, stats.batches_sent, stats.retries) == (8, 4, 0)
    assert any("HTTP 413" in r.getMessage() for r in sdk_logs.records)


def test_413_on_a_single_event_drops_it_even_with_retry_after(
    make_client: Any, receiver: Receiver
) -> None:
    receiver.respond = lambda request: Reply(413, headers={"Retry-After": "5"})
    client = make_client(**FAST_RETRIES)
    client.track("huge")
    started = time.monotonic()
    assert client.flush(timeout=5) is False
    assert time.monotonic() - started < 1
    assert len(receiver.requests) == 1 and client.stats().dropped_delivery == 1


def test_a_failing_on_error_does_not_stop_delivery(
    make_client: Any, receiver: Receiver, sdk_logs: pytest.LogCaptureFixture
) -> None:
    receiver.script(Reply(400))

    def broken(events: Any, error: Any) -> None:
        raise RuntimeError("bug in the user's callback")

    client = make_client(on_error=broken, batch_size=1)
    client.track("dropped")
    assert client.flush(timeout=5) is False
    client.track("delivered")
    assert client.flush(timeout=5) is True
    assert [e["event"] for e in receiver.delivered_events()] == ["delivered"]
    assert any(
        "on_error callback raised" in r.getMessage() and r.exc_info for r in sdk_logs.records
    )


def test_sys_exit_in_on_error_ends_neither_delivery_nor_a_waiting_flush(
    make_client: Any, receiver: Receiver, sdk_logs: pytest.LogCaptureFixture
) -> None:
    receiver.script(Reply(400))

    def exits(events: Any, error: Any) -> None:
        sys.exit("the callback's own idea of handling it")

    client = make_client(on_error=exits, batch_size=1, max_concurrent_requests=1)
    for name in ("refused", "then_1", "then_2"):
        client.track(name)
    started = time.monotonic()
    assert client.flush(timeout=5) is False  # the refused event: a loss, told once
    assert time.monotonic() - started < 3  # not the whole timeout: the thread went on
    assert [e["event"] for e in receiver.delivered_events()] == ["then_1", "then_2"]
    assert any("on_error callback raised SystemExit" in r.getMessage() for r in sdk_logs.records)


def test_a_failing_header_callable_drops_the_batch_without_leaking(
    make_client: Any, receiver: Receiver
) -> None:
    def token() -> str:
        raise OSError("vault unreachable")

    reported, on_error = collecting()
    client = make_client(headers={"Authorization": token}, on_error=on_error)
    client.track("e")
    assert client.flush(timeout=5) is False
    assert receiver.requests == []
    ((_, error),) = reported
    assert "headers['Authorization'] callable raised OSError" in str(error)


def test_retries_are_logged_with_the_attempt(
    make_client: Any, receiver: Receiver, sdk_logs: pytest.LogCaptureFixture
) -> None:
    receiver.script(Reply(502))
    client = make_client(**FAST_RETRIES)
    client.track("e")
    assert client.flush(timeout=5)
    messages = [r.getMessage() for r in sdk_logs.records if r.name == "campaign_cart_analytics"]
    assert any("retrying (attempt 2) after HTTP 502" in m for m in messages), messages


def test_one_adapter_serves_http_and_https_and_retries_nothing_itself() -> None:
    config = Config(endpoint="https://api.example.com/analytics", max_concurrent_requests=6)
    transport = Transport(config, ShutdownClock())
    session = transport._session
    https, http = session.get_adapter("https://x.example"), session.get_adapter("http://x.example")
    assert https is http
    assert https.max_retries.total == 0  # the worker decides on retries (retry.py)
    assert https._pool_maxsize == 6  # a kept-alive connection for each request in flight
    transport.close()


def test_cookies_the_endpoint_sets_are_sent_back(make_client: Any, receiver: Receiver) -> None:
    receiver.script(Reply(202, headers={"Set-Cookie": "AWSALB=sticky-1; Path=/"}))
    client = make_client(batch_size=1)
    client.track("first")
    assert client.flush(timeout=5)
    client.track("second")
    assert client.flush(timeout=5)
    first, second = receiver.requests
    assert "cookie" not in first.headers
    assert second.headers["cookie"] == "AWSALB=sticky-1"


def test_a_batch_in_backoff_does_not_hold_back_the_next(
    make_client: Any, receiver: Receiver
) -> None:
    receiver.respond = lambda request: Reply(500 if request.events[0]["event"] == "first" else 202)
    client = make_client(batch_size=1, retry_delay_ms=300, max_retries=1)
    client.track("first")  # fails, waits 300 ms for its retry
    assert receiver.wait_for_requests(1, timeout=2)
    client.track("second")
    second = receiver.wait_for_requests(2, timeout=2)[1]
    assert second.events[0]["event"] == "second"
    assert second.at - receiver.requests[0].at < 0.2  # not behind the 300 ms wait
    assert client.flush(timeout=5) is False  # "first" fails its retry too
    stats = client.stats()
    assert (stats.delivered, stats.dropped_delivery, stats.retries, stats.queued) == (1, 1, 1, 0)


def test_random_failures_lose_and_duplicate_nothing(make_client: Any, receiver: Receiver) -> None:
    import random

    chance = random.Random(1234)
    receiver.respond = lambda request: Reply(500 if chance.random() < 0.3 else 202)
    client = make_client(batch_size=20, retry_delay_ms=10, max_retries=15, max_queue_size=5000)
    for n in range(2000):
        client.track("e", {"n": n})
    assert client.flush(timeout=30) is True
    delivered = receiver.delivered_events()
    assert sorted(e["n"] for e in delivered) == list(range(2000))  # all, once
    stats = client.stats()
    assert (stats.delivered, stats.queued, stats.dropped) == (2000, 0, 0)
    assert stats.retries == sum(not r.ok for r in receiver.requests) > 0


def test_header_callables_run_for_every_request_retries_included(
    make_client: Any, receiver: Receiver
) -> None:
    receiver.script(Reply(401), Reply(503))  # 401: dropped; 503: retried
    tokens = iter(f"t{n}" for n in range(1, 10))
    client = make_client(
        batch_size=1, retry_delay_ms=10, headers={"Authorization": lambda: f"Bearer {next(tokens)}"}
    )
    client.track("rejected")
    assert client.flush(timeout=5) is False
    client.track("retried")
    assert client.flush(timeout=5) is True
    assert [r.headers["authorization"] for r in receiver.requests] == [
        "Bearer t1",
        "Bearer t2",
        "Bearer t3",
    ]
