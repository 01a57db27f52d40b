"""flush(), shutdown() and the context manager (SPEC section 7), in this process."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from helpers import assert_balanced, wait_until
from receiver import Receiver, Reply

import campaign_cart_analytics as cca

SLOW_RETRIES = {"retry_delay_ms": 5000, "max_retries": 3}


def test_flush_sends_at_once_and_reports_delivery(make_client: Any, receiver: Receiver) -> None:
    client = make_client(batch_interval_ms=60_000)
    client.track("e")
    started = time.monotonic()
    assert client.flush(timeout=5) is True
    assert time.monotonic() - started < 0.5
    assert client.flush(timeout=5) is True  # nothing pending


def test_flush_is_false_when_something_was_dropped(make_client: Any, receiver: Receiver) -> None:
    receiver.script(Reply(400))
    client = make_client(batch_size=1, batch_interval_ms=60_000)
    client.track("rejected")
    assert wait_until(lambda: client.stats().dropped_delivery == 1)
    client.track("accepted")
    assert client.flush(timeout=5) is False  # the window holds an event dropped before the call
    client.track("next")
    assert client.flush(timeout=5) is True  # a new window: everything since the last flush
    assert client.flush(timeout=5) is True


def test_flush_counts_queue_full_and_transform_drops_but_not_filtering(
    make_client: Any, receiver: Receiver
) -> None:
    def transform(event: dict[str, Any]) -> Any:
        if event["event"] == "broken":
            raise ValueError("bug")
        return None if event["event"] == "sampled_out" else event

    client = make_client(transform_function=transform)
    client.track("sampled_out")
    client.track("kept")
    assert client.flush(timeout=5) is True
    client.track("broken")
    assert client.flush(timeout=5) is False
    assert client.flush(timeout=5) is True


def test_flush_timeout_holds_while_a_retry_waits(make_client: Any, receiver: Receiver) -> None:
    receiver.respond = lambda request: Reply(500)
    client = make_client(**SLOW_RETRIES)
    client.track("e")
    started = time.monotonic()
    assert client.flush(timeout=0.3) is False
    assert 0.28 <= time.monotonic() - started < 0.6
    assert client.stats().queued == 1  # still being retried, not lost


def test_flush_from_many_threads_at_once(make_client: Any, receiver: Receiver) -> None:
    client = make_client(batch_size=5, batch_interval_ms=60_000)
    results: list[bool] = []

    def work(n: int) -> None:
        for i in range(20):
            client.track("e", {"thread": n, "i": i})
        results.append(client.flush(timeout=5))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 8
    events = receiver.delivered_events()
    assert len(events) == 160 == len({e["event_id"] for e in events})


def test_shutdown_delivers_stops_and_is_idempotent(
    receiver: Receiver, sdk_logs: pytest.LogCaptureFixture
) -> None:
    client = cca.Analytics(receiver.url, batch_interval_ms=60_000)
    client.track("e")
    assert client.shutdown(timeout=5) is True
    assert client.shutdown(timeout=5) is True
    assert client.shutdown() is True
    assert len(receiver.delivered_events()) == 1
    assert client.track("late") is None
    assert client.track("later") is None
    warnings = [r for r in sdk_logs.records if "after shutdown" in r.getMessage()]
    assert len(warnings) == 1
    stats = client.stats()
    assert (stats.tracked, stats.delivered, stats.dropped_shutdown) == (3, 1, 2)
    assert_balanced(stats)


def test_shutdown_timeout_holds_while_the_endpoint_is_down(
    receiver: Receiver, sdk_logs: pytest.LogCaptureFixture
) -> None:
    receiver.respond = lambda request: Reply(503)
    reported: list[Any] = []
    client = cca.Analytics(
        receiver.url,
        batch_size=5,
        on_error=lambda events, error: reported.append((events, error)),
        **SLOW_RETRIES,
    )
    for _ in range(12):
        client.track("e")
    started = time.monotonic()
    assert client.shutdown(timeout=0.5) is False
    assert time.monotonic() - started < 0.8
    stats = client.stats()
    assert (stats.queued, stats.delivered, stats.dropped_shutdown) == (0, 0, 12)
    assert_balanced(stats)
    assert sum(len(events) for events, _ in reported) == 12
    assert all(isinstance(error, cca.ShutdownDropError) for _, error in reported)


def test_a_batch_caught_mid_backoff_gets_one_last_attempt(receiver: Receiver) -> None:
    receiver.script(Reply(500))
    client = cca.Analytics(receiver.url, batch_size=1, **SLOW_RETRIES)
    client.track("e")
    assert len(receiver.wait_for_requests(1, timeout=1)) == 1
    time.sleep(0.05)  # the worker is now waiting 5 s before its retry
    started = time.monotonic()
    assert client.shutdown(timeout=2) is True
    assert time.monotonic() - started < 0.5
    assert len(receiver.requests) == 2 and client.stats().delivered == 1


def test_context_manager_shuts_down_on_exit(receiver: Receiver) -> None:
    with cca.Analytics(receiver.url, batch_interval_ms=60_000) as client:
        client.track("e")
    assert len(receiver.delivered_events()) == 1
    assert client.track("after") is None


def test_the_worker_thread_starts_at_the_first_track_and_stops_at_shutdown(
    receiver: Receiver,
) -> None:
    def workers() -> int:
        return sum(t.name == "campaign-cart-analytics" for t in threading.enumerate())

    before = workers()
    client = cca.Analytics(receiver.url)
    assert workers() == before
    client.track("e")
    assert workers() == before + 1
    client.shutdown(timeout=5)
    deadline = time.monotonic() + 2
    while workers() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert workers() == before


def test_module_level_client(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cca, "_default_client", None)
    with pytest.raises(RuntimeError, match=r"configure\(endpoint=...\) before track"):
        cca.track("e")
    with pytest.raises(RuntimeError):
        cca.flush()
    first = cca.configure(endpoint=receiver.url, batchSize=50)
    assert cca.track("one") is not None
    second = cca.configure(endpoint=receiver.url)  # replacing delivers what the first had
    assert first.stats().delivered == 1 and second is not first
    cca.track("two")
    assert cca.flush(timeout=5) is True
    assert cca.shutdown(timeout=5) is True
    assert [e["event"] for e in receiver.delivered_events()] == ["one", "two"]


def test_a_retry_that_fits_before_the_shutdown_deadline_keeps_its_schedule(
    receiver: Receiver,
) -> None:
    receiver.script(Reply(500))
    client = cca.Analytics(receiver.url, batch_size=1, retry_delay_ms=200, max_retries=3)
    client.track("e")
    assert len(receiver.wait_for_requests(1, timeout=1)) == 1
    assert client.shutdown(timeout=3) is True  # the 200 ms wait ends well before 3 s
    first, second = receiver.requests
    assert 0.19 <= second.at - first.at < 0.4  # waited its turn, was not hurried
    assert client.stats().delivered == 1
