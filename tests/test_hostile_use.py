"""What a demanding user tried against the edges fixes, each reproduced first (issue 8 review).

Threads that flush at once, callbacks that flush, a cancelled ``flush_async``,
a ``SystemExit`` from a token refresher, values that a receiver would refuse
for the whole batch, and endpoints or logs that echo a secret back.
"""

from __future__ import annotations

import decimal
import logging
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
from helpers import Errors, assert_balanced
from receiver import Receiver, Reply

import campaign_cart_analytics as cca
from campaign_cart_analytics import events
from campaign_cart_analytics.receiver import create_app, serve
from campaign_cart_analytics.urls import redact_url

SECRET = "sk_live_SECRET123"


def test_two_threads_flushing_at_once_each_get_their_answer(
    make_client: Any, receiver: Receiver
) -> None:
    receiver.respond = lambda request: Reply(202, delay=0.5)
    client = make_client(batch_interval_ms=60_000)
    client.track("e")
    results: dict[str, Any] = {}

    def long_flush() -> None:
        started = time.monotonic()
        results["long"] = client.flush(timeout=5)
        results["took"] = time.monotonic() - started

    thread = threading.Thread(target=long_flush)
    thread.start()
    time.sleep(0.05)
    assert client.flush(timeout=0.1) is False  # timed out; the other flush must not mind
    thread.join(10)
    assert results["long"] is True and results["took"] < 1.5


def test_a_token_with_a_trailing_newline_is_refused_without_showing_it() -> None:
    with pytest.raises(cca.ConfigError) as caught:
        cca.Analytics("http://127.0.0.1:9/a", headers={"Authorization": f"Bearer {SECRET}\n"})
    assert SECRET not in str(caught.value)


def test_a_header_callable_returning_a_trailing_newline_leaks_nothing(
    make_client: Any, receiver: Receiver, sdk_logs: pytest.LogCaptureFixture
) -> None:
    errors = Errors()
    client = make_client(headers={"Authorization": lambda: f"Bearer {SECRET}\n"}, on_error=errors)
    client.track("e")
    assert client.flush(timeout=5) is False
    shown = sdk_logs.text + str(errors.calls[0][1]) + str(client.stats().last_error)
    assert SECRET not in shown and receiver.requests == []


def test_flush_inside_on_error_does_not_wedge_delivery(
    make_client: Any, receiver: Receiver
) -> None:
    receiver.respond = lambda request: Reply(400 if request.events[0]["event"] == "bad" else 202)
    inner: list[bool] = []
    client = make_client(batch_size=1, max_retries=0, on_error=lambda e, _: inner.append(flush()))
    flush = client.flush
    client.track("bad")
    started = time.monotonic()
    assert client.flush(timeout=3) is False
    assert time.monotonic() - started < 1 and inner == [False]  # it did not wait for itself
    client.track("good")
    assert client.flush(timeout=3) is True  # the delivery thread goes on
    assert client.shutdown(timeout=3) is True


def test_a_cancelled_flush_async_does_not_hold_asyncio_run_at_exit(receiver: Receiver) -> None:
    receiver.respond = lambda request: Reply(202, delay=20)
    script = textwrap.dedent(
        f"""
        import asyncio, time
        import campaign_cart_analytics as cca
        client = cca.Analytics({receiver.url!r}, shutdown_timeout_ms=200)
        async def main():
            client.track("x")
            try:
                await asyncio.wait_for(client.flush_async(), timeout=0.3)
            except asyncio.TimeoutError:
                print("timed out")
        started = time.monotonic()
        asyncio.run(main())
        print("returned after", round(time.monotonic() - started, 1))
        """
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "timed out" in result.stdout and "returned after 0." in result.stdout
    assert time.monotonic() - started < 5


def test_system_exit_from_a_header_callable_costs_only_its_batch(
    make_client: Any, receiver: Receiver
) -> None:
    calls: list[int] = []

    def token() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise SystemExit("the token refresher gave up")
        return "Bearer ok"

    errors = Errors()
    client = make_client(headers={"Authorization": token}, batch_size=1, on_error=errors)
    client.track("first")
    assert client.flush(timeout=5) is False  # answered, not orphaned
    client.track("second")
    assert client.flush(timeout=5) is True
    assert [e["event"] for e in errors.events] == ["first"]
    assert [e["event"] for e in receiver.delivered_events()] == ["second"]
    assert_balanced(client.stats())


def test_values_a_receiver_would_refuse_cost_only_their_own_event() -> None:
    server = serve(create_app(), port=0)
    try:
        errors = Errors()

        def transform(event: dict[str, Any]) -> dict[str, Any]:
            if event["event"] == "no_id":
                event.pop("event_id")
            if event["event"] == "bad_time":
                event["event_time"] = "yesterday"
            return event

        client = cca.Analytics(
            server.url, batch_size=10, transform_function=transform, on_error=errors
        )
        client.track("good")
        with pytest.raises(TypeError, match="overflows a double"):
            client.track("huge", {"v": decimal.Decimal("1e999999")})
        with pytest.raises(TypeError, match="too large to send"):
            client.track("huge", {"v": 10**5000})
        assert client.track("no_id") is None
        assert client.track("bad_time") is None
        client.track("good")
        assert client.flush(timeout=5) is False  # the transform's two losses
        assert server.app.store.stats()["events"] == 2
        assert [type(error) for _, error in errors.calls] == [cca.TransformError] * 2
        assert "'event_id' is not a non-empty str" in str(errors.calls[0][1])
        client.shutdown(timeout=2)
    finally:
        server.stop()


def test_the_fast_json_encoder_is_in_use() -> None:
    assert events._encode_json is not events._ENCODER.encode  # a silent fallback costs CPU


def test_an_endpoint_that_echoes_the_token_does_not_get_it_logged(
    make_client: Any, receiver: Receiver, sdk_logs: pytest.LogCaptureFixture
) -> None:
    receiver.respond = lambda request: Reply(
        401, body=f'{{"error": "invalid token {request.headers["authorization"]}"}}'.encode()
    )
    errors = Errors()
    client = make_client(headers={"Authorization": f"Bearer {SECRET}"}, on_error=errors)
    client.track("e")
    assert client.flush(timeout=5) is False
    shown = sdk_logs.text + str(errors.calls[0][1]) + str(client.stats().last_error)
    assert SECRET not in shown
    assert "invalid token ***" in str(errors.calls[0][1])


@pytest.mark.parametrize("through_a_proxy", [False, True])
@pytest.mark.parametrize("query", [f"?token={SECRET}&x=1", f"?token={SECRET}|x~%7e"])
def test_urllib3_debug_logs_do_not_show_the_endpoints_query_values(
    make_client: Any,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    through_a_proxy: bool,
    query: str,
) -> None:
    # urllib3 logs the URL as requests prepared it (the second query is re-encoded), and
    # through a proxy the whole URL.
    caplog.set_level(logging.DEBUG)  # the root logger at DEBUG, urllib3's lines included
    proxy = Receiver()  # answers as a proxy would
    options = {"proxy": proxy.url.rsplit("/", 1)[0]} if through_a_proxy else {}
    client = make_client(endpoint=receiver.url + query, **options)
    client.track("e")
    assert client.flush(timeout=5) is True
    proxy.close()
    assert len((proxy if through_a_proxy else receiver).requests) == 1
    assert any(r.name.startswith("urllib3") for r in caplog.records)
    assert SECRET not in caplog.text


def test_percent_escapes_in_the_endpoint_reach_it_as_written(
    make_client: Any, receiver: Receiver
) -> None:
    # A token holding "+", "/", "=" or "%" must be escaped; the escapes must not be undone or
    # escaped again on the way (a broken one is refused: see test_edges.BAD_ENDPOINTS).
    path_and_query = "/in%20box/a?token=a%2Bb%2Fc%3D%25d&sig=x%26y"
    client = make_client(endpoint=receiver.url.rsplit("/", 1)[0] + path_and_query)
    client.track("e")
    assert client.flush(timeout=5) is True
    assert [request.path for request in receiver.requests] == [path_and_query]


def test_a_bare_query_value_is_hidden_too() -> None:
    assert redact_url(f"https://h/a?{SECRET}") == "https://h/a?***"
    assert redact_url(f"https://h/a?a=1&{SECRET}") == "https://h/a?a=***&***"


def test_the_receiver_keeps_what_it_stored_behind_its_token() -> None:
    import urllib.request

    lines: list[str] = []
    server = serve(create_app(token="s3cret", log=lines.append), port=0)
    try:
        base = server.url.rsplit("/", 1)[0]
        for path in ("/events", "/stats"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(base + path, timeout=5)
            assert refused.value.code == 401
            request = urllib.request.Request(
                base + path, headers={"Authorization": "Bearer s3cret"}
            )
            with urllib.request.urlopen(request, timeout=5) as answer:
                assert answer.status == 200
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(base + "/%1b[2J%0aPOST%20/analytics%20202", timeout=5)
        assert all("\x1b" not in line and "\n" not in line for line in lines)
    finally:
        server.stop()


def test_send_reports_a_read_error_in_one_line(receiver: Receiver) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "campaign_cart_analytics", "send", "/proc/self/mem",
         "--endpoint", receiver.url],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "cannot read /proc/self/mem" in result.stderr


def test_clients_leave_no_threads_behind(receiver: Receiver) -> None:
    before = threading.active_count()
    for _ in range(5):
        client = cca.Analytics(receiver.url, max_concurrent_requests=4, batch_size=1)
        for n in range(8):
            client.track("e", {"n": n})
        assert client.shutdown(timeout=5) is True
    deadline = time.monotonic() + 2
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() == before, [t.name for t in threading.enumerate()]


def test_where_no_thread_can_start_the_delivery_thread_sends_itself(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As at interpreter exit on Python 3.12 and newer, which refuse new threads there."""
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if thread.name in ("campaign-cart-analytics-sender", "campaign-cart-analytics-deadlines"):
            raise RuntimeError("can't create new thread at interpreter shutdown")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    client = cca.Analytics(receiver.url, batch_size=10, max_concurrent_requests=4)
    for n in range(25):
        client.track("e", {"n": n})
    assert client.flush(timeout=5) is True  # sent from the delivery thread, nothing wedged
    assert sorted(e["n"] for e in receiver.delivered_events()) == list(range(25))
    assert client.shutdown(timeout=2) is True
