"""Threads, backpressure and a delivery thread that cannot die (issue: safe in real servers)."""

from __future__ import annotations

import json
import re
import socket
import struct
import sys
import threading
import time
import types
from typing import Any

import pytest
from helpers import RawServer, assert_balanced, wait_until
from receiver import Receiver, Reply

import campaign_cart_analytics as cca
from campaign_cart_analytics import _uwsgi as uwsgi_module
from campaign_cart_analytics import senders as senders_module


def test_sixteen_threads_lose_and_duplicate_nothing(make_client: Any, receiver: Receiver) -> None:
    client = make_client(batch_size=50, max_queue_size=20_000)
    start = threading.Barrier(16)

    def work(n: int) -> None:
        start.wait()
        for i in range(500):
            client.track("e", {"thread": n, "i": i})

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert client.flush(timeout=30) is True
    events = receiver.delivered_events()
    assert sorted((e["thread"], e["i"]) for e in events) == [
        (n, i) for n in range(16) for i in range(500)
    ]
    assert len({e["event_id"] for e in events}) == 8000
    assert client.stats().delivered == 8000


def test_track_never_blocks_while_the_endpoint_stalls(make_client: Any, receiver: Receiver) -> None:
    receiver.respond = lambda request: Reply(202, delay=3)  # accepts, then hangs
    client = make_client(batch_size=10, max_queue_size=500, request_timeout_ms=5000)
    latencies = []
    for i in range(20_000):
        started = time.perf_counter()
        client.track("dl_view_item", {"i": i, "ecommerce": {"value": 1.5}})
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    assert latencies[-1] < 0.050, latencies[-5:]  # no call over 50 ms
    assert latencies[len(latencies) // 2] < 0.001
    stats = client.stats()
    assert stats.dropped_queue_full >= 19_000  # the queue filled up and stayed full
    assert_balanced(stats)


def test_an_unexpected_error_in_the_worker_is_logged_and_it_goes_on(
    make_client: Any,
    receiver: Receiver,
    sdk_logs: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_batch_body = senders_module.batch_body
    calls = {"n": 0}

    def buggy_batch_body(*args: Any) -> bytes:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyError("a bug of ours")
        return real_batch_body(*args)

    monkeypatch.setattr(senders_module, "batch_body", buggy_batch_body)
    reported: list[BaseException] = []
    client = make_client(batch_size=1, on_error=lambda events, error: reported.append(error))
    client.track("lost_to_the_bug")
    assert client.flush(timeout=5) is False
    client.track("delivered")
    assert client.flush(timeout=5) is True
    assert [e["event"] for e in receiver.delivered_events()] == ["delivered"]
    stats = client.stats()
    assert (stats.dropped_delivery, stats.delivered) == (1, 1)
    assert "internal error KeyError" in str(reported[0])
    assert any(
        "Unexpected error while sending" in r.getMessage() and r.exc_info for r in sdk_logs.records
    )


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_thread_is_restarted_by_the_next_track(
    make_client: Any, receiver: Receiver, sdk_logs: pytest.LogCaptureFixture
) -> None:
    client = make_client(batch_size=1)
    pending = client._state.pending
    real_take_ready = pending.take_ready

    def take_ready_then_die() -> Any:
        pending.take_ready = real_take_ready  # type: ignore[method-assign]
        raise SystemExit  # ends the thread, as nothing in its loop should

    pending.take_ready = take_ready_then_die  # type: ignore[method-assign]

    client.track("first")  # starts the thread, which dies at once
    assert wait_until(lambda: not client._state.thread.is_alive())
    client.track("second")  # finds it dead: starts a new one
    assert client.flush(timeout=5) is True
    assert sorted(e["event"] for e in receiver.delivered_events()) == ["first", "second"]
    assert any("delivery thread had stopped" in r.getMessage() for r in sdk_logs.records)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_flush_restarts_a_dead_thread_too(make_client: Any, receiver: Receiver) -> None:
    client = make_client(batch_interval_ms=60_000)
    pending = client._state.pending
    real_take_ready = pending.take_ready

    def die() -> Any:
        pending.take_ready = real_take_ready  # type: ignore[method-assign]
        raise SystemExit

    pending.take_ready = die  # type: ignore[method-assign]

    client.track("queued")
    assert wait_until(lambda: not client._state.thread.is_alive())
    assert client.flush(timeout=5) is True
    assert len(receiver.delivered_events()) == 1


@pytest.mark.parametrize(
    ("options", "warned"),
    [({}, True), ({"enable-threads": True}, False), ({b"threads": b"4"}, False)],
)
def test_uwsgi_without_threads_is_warned_about_once(
    monkeypatch: pytest.MonkeyPatch,
    sdk_logs: pytest.LogCaptureFixture,
    options: dict[Any, Any],
    warned: bool,
) -> None:
    monkeypatch.setitem(sys.modules, "uwsgi", types.SimpleNamespace(opt=options))
    monkeypatch.setattr(uwsgi_module, "_warned_about_uwsgi", False)
    cca.Analytics("http://127.0.0.1:9/analytics")
    cca.Analytics("http://127.0.0.1:9/analytics")
    warnings = [r for r in sdk_logs.records if "--enable-threads" in r.getMessage()]
    assert len(warnings) == (1 if warned else 0)


def test_max_queue_size_bounds_everything_pending_parked_retries_included(
    make_client: Any,
) -> None:
    from receiver import refused_url

    client = make_client(
        endpoint=refused_url(), batch_size=10, max_queue_size=100, retry_delay_ms=5000
    )
    for round_ in range(10):
        for i in range(100):
            client.track("e", {"round": round_, "i": i})
        time.sleep(0.05)  # the worker takes batches, fails them, parks them for 5 s
        stats = client.stats()
        assert stats.queued <= 100, stats  # queued + in flight + parked
    stats = client.stats()
    assert stats.dropped_queue_full >= 900 and stats.queued == 100
    assert_balanced(stats)


class StoreThenResetServer(RawServer):
    """Answers the first request on each connection; the next one on it is read, its events
    kept, and the connection reset without a word."""

    def __init__(self) -> None:
        self.stored: list[str] = []
        self.resets = 0
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as stream:
            for answer in (True, False):
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = stream.readline(65536)
                    if not line:
                        return
                    head += line
                length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
                events = json.loads(stream.read(length))["events"]
                self.stored += [event["event_id"] for event in events]
                if answer:
                    conn.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
            self.resets += 1
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_without_retries_a_batch_the_server_took_and_never_answered_goes_once(
    make_client: Any,
) -> None:
    # No answer on a kept-alive connection: the batch may or may not have been stored, and
    # max_retries=0 says it is not sent again, not even behind the counters.
    server = StoreThenResetServer()
    client = make_client(endpoint=server.url, batch_size=2, max_retries=0)
    ids = [client.track("e", {"i": i}) for i in range(20)]
    assert client.flush(timeout=5) is False
    server.close()
    assert server.resets >= 1
    assert sorted(server.stored) == sorted(ids)  # each once
    stats = client.stats()
    assert stats.retries == 0 and stats.dropped_delivery == 2 * server.resets
    assert_balanced(stats)
