"""Request context and flushing() for handlers and jobs."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from receiver import Receiver

import campaign_cart_analytics as cca


def test_context_values_are_merged_into_events_the_events_own_win(
    make_client: Any, receiver: Receiver
) -> None:
    client = make_client()
    with client.context(
        user_properties={"user_id": "u1", "country": "US"}, attribution={"source": "google"}
    ):
        client.track("a")
        client.track(
            "b", {"user_properties": {"country": "CA", "session_id": "s9"}, "attribution": "direct"}
        )
        with client.context(user_properties={"user_id": "u2"}, page="cart"):
            client.track("c")
    client.track("d")
    assert client.flush(timeout=5)
    a, b, c, d = receiver.delivered_events()
    assert a["user_properties"] == {"user_id": "u1", "country": "US"}
    assert a["attribution"] == {"source": "google"}
    assert b["user_properties"] == {"user_id": "u1", "country": "CA", "session_id": "s9"}
    assert b["event_id"].startswith("s9_")  # the merged session id names the event id
    assert b["attribution"] == "direct"
    assert c["user_properties"] == {"user_id": "u2", "country": "US"} and c["page"] == "cart"
    assert "user_properties" not in d and "attribution" not in d


def test_context_values_are_a_snapshot(make_client: Any, receiver: Receiver) -> None:
    client = make_client()
    user = {"user_id": "u1"}
    with client.context(user_properties=user):
        user["user_id"] = "changed"
        client.track("a")
    assert client.flush(timeout=5)
    assert receiver.delivered_events()[0]["user_properties"] == {"user_id": "u1"}


def test_a_provider_runs_only_when_something_is_tracked(
    make_client: Any, receiver: Receiver
) -> None:
    client = make_client()
    calls = []

    def provider() -> dict[str, Any]:
        calls.append(1)
        return {"user_properties": {"user_id": "lazy"}}

    with client.context(provider):
        pass
    assert calls == []
    with client.context(provider):
        client.track("a")
        client.track("b")
    assert calls == [1]  # once per block, at the first event
    assert client.flush(timeout=5)
    assert [e["user_properties"]["user_id"] for e in receiver.delivered_events()] == [
        "lazy",
        "lazy",
    ]


def _raises() -> Any:
    raise LookupError("no session table")


@pytest.mark.parametrize("provider", [_raises, lambda: ["not", "a", "mapping"]])
def test_a_failing_provider_is_logged_and_the_event_still_sent(
    make_client: Any, receiver: Receiver, sdk_logs: pytest.LogCaptureFixture, provider: Any
) -> None:
    client = make_client()
    with client.context(provider, attribution={"source": "kept"}):
        assert client.track("a") is not None
    assert client.flush(timeout=5)
    (event,) = receiver.delivered_events()
    assert event["attribution"] == {"source": "kept"}
    assert any("Context provider" in r.getMessage() and r.exc_info for r in sdk_logs.records)


def test_context_stays_with_its_thread_and_its_task(make_client: Any, receiver: Receiver) -> None:
    client = make_client()
    inside = threading.Event()
    leave = threading.Event()

    def request_thread() -> None:
        with client.context(user_properties={"user_id": "thread-user"}):
            inside.set()
            leave.wait(5)

    thread = threading.Thread(target=request_thread)
    thread.start()
    inside.wait(5)
    client.track("other thread")  # not inside that thread's block
    leave.set()
    thread.join()

    async def handle(user: str) -> None:
        with client.context(user_properties={"user_id": user}):
            await asyncio.sleep(0.01)
            client.track("task", {"for": user})

    async def main() -> None:
        await asyncio.gather(handle("t1"), handle("t2"))

    asyncio.run(main())
    assert client.flush(timeout=5)
    events = receiver.delivered_events()
    assert "user_properties" not in events[0]
    assert {e["for"]: e["user_properties"]["user_id"] for e in events[1:]} == {
        "t1": "t1",
        "t2": "t2",
    }


def test_flushing_decorator_delivers_before_a_lambda_handler_returns(
    make_client: Any, receiver: Receiver
) -> None:
    analytics = make_client(batch_interval_ms=60_000)

    @analytics.flushing(timeout=2)
    def handler(event: dict[str, Any], context: object) -> dict[str, int]:
        analytics.track("dl_purchase", {"order": event["order"]})
        return {"statusCode": 200}

    assert handler({"order": 7}, None) == {"statusCode": 200}
    assert [e["order"] for e in receiver.delivered_events()] == [7]  # already there, no waiting


def test_flushing_runs_when_the_handler_raises_and_reports(
    make_client: Any, receiver: Receiver
) -> None:
    analytics = make_client(batch_interval_ms=60_000)
    with pytest.raises(ZeroDivisionError), analytics.flushing(timeout=2) as flushing:
        analytics.track("before the crash")
        1 / 0  # noqa: B018
    assert flushing.delivered is True
    assert len(receiver.delivered_events()) == 1


def test_module_level_context(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cca, "_default_client", None)
    with pytest.raises(RuntimeError):
        cca.get_client()
    cca.configure(endpoint=receiver.url)
    try:
        with cca.context(user_properties={"user_id": "u"}):
            cca.track("a")
        assert cca.flush(timeout=5)
        assert receiver.delivered_events()[0]["user_properties"] == {"user_id": "u"}
    finally:
        cca.shutdown(timeout=1)


def test_a_provider_runs_once_when_two_threads_of_a_request_track_at_once(
    make_client: Any, receiver: Receiver
) -> None:
    import contextvars
    import threading
    import time as clock

    calls: list[int] = []

    def provider() -> dict[str, Any]:
        calls.append(1)
        clock.sleep(0.05)  # long enough for the other thread to arrive meanwhile
        return {"user_properties": {"session_id": f"s{len(calls)}"}}

    client = make_client(batch_interval_ms=60_000)
    with client.context(provider):
        request = contextvars.copy_context()
    threads = [
        threading.Thread(target=request.copy().run, args=(client.track, "e")) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert client.flush(timeout=5) is True
    assert calls == [1]
    assert [e["user_properties"]["session_id"] for e in receiver.delivered_events()] == ["s1"] * 2
