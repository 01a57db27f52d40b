"""The edges where an event could be lost, a loss hidden, or a secret printed (issue 8).

Each test drives a real server on 127.0.0.1: the suite's receiver, or a raw
socket server where a case needs exact bytes on the wire.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import Errors, RawServer, assert_balanced, wait_until
from receiver import Receiver, Reply

import campaign_cart_analytics as cca

SURROGATE = json.loads('"\\ud800"')  # valid JSON, yet a str with no UTF-8 form


# ---------------------------------------------------------------- 1. one bad string


def test_a_lone_surrogate_is_refused_in_track_and_costs_no_batch_mate(
    make_client: Any, receiver: Receiver
) -> None:
    client = make_client(batch_size=10, batch_interval_ms=60_000)
    for n in range(9):
        client.track("good", {"n": n})
    with pytest.raises(TypeError, match=r"properties\['note'\]: str holds a lone surrogate"):
        client.track("bad", {"note": SURROGATE})
    with pytest.raises(TypeError, match=r"properties\['user_properties'\]: dict key"):
        client.track("bad", {"user_properties": {SURROGATE: 1}})
    with pytest.raises(TypeError, match=r"^event: str holds a lone surrogate"):
        client.track("dl_" + SURROGATE)
    client.track("good", {"n": 9})
    assert client.flush(timeout=5) is True
    assert sorted(e["n"] for e in receiver.delivered_events()) == list(range(10))
    assert client.stats().dropped == 0
    assert_balanced(client.stats())


def test_a_transform_that_adds_a_lone_surrogate_drops_only_that_event(
    make_client: Any, receiver: Receiver
) -> None:
    errors = Errors()

    def transform(event: dict[str, Any]) -> dict[str, Any]:
        if event.get("poison"):
            event["note"] = SURROGATE
        return event

    client = make_client(transform_function=transform, on_error=errors, batch_interval_ms=60_000)
    client.track("good", {"n": 1})
    assert client.track("poisoned", {"poison": True}) is None
    client.track("good", {"n": 2})
    assert client.flush(timeout=5) is False  # the transform's loss is reported
    assert [e["n"] for e in receiver.delivered_events()] == [1, 2]
    assert client.stats().dropped_transform_error == 1
    assert isinstance(errors.calls[0][1], cca.TransformError)
    assert "lone surrogate" in str(errors.calls[0][1])


# ---------------------------------------------------------------- 2. losses reported once


def test_a_timed_out_flush_does_not_hide_the_loss_it_could_not_see(
    make_client: Any, receiver: Receiver
) -> None:
    receiver.respond = lambda request: Reply(400, delay=0.3)
    client = make_client(batch_interval_ms=60_000)
    client.track("rejected later")
    assert client.flush(timeout=0.05) is False  # timed out: reports nothing
    assert wait_until(lambda: client.stats().dropped_delivery == 1)
    assert client.flush() is False  # the first flush to complete after the loss reports it
    assert client.flush() is True  # reported once
    assert client.shutdown(timeout=2) is True


def test_each_loss_is_reported_by_exactly_one_completed_flush_or_shutdown(
    make_client: Any, receiver: Receiver
) -> None:
    client = make_client(max_queue_size=1, batch_size=1, batch_interval_ms=60_000)
    receiver.respond = lambda request: Reply(202, delay=0.2)
    client.track("in flight")
    assert wait_until(lambda: len(receiver.requests) == 1)
    client.track("queued")
    assert client.track("no room") is None  # the queue holds one: a loss
    assert client.shutdown(timeout=5) is False  # the shutdown reports it
    assert client.flush() is True


def test_a_loss_while_several_threads_flush_is_reported_to_one_of_them(
    make_client: Any, receiver: Receiver
) -> None:
    receiver.respond = lambda request: Reply(400, delay=0.1)
    client = make_client(batch_interval_ms=60_000)
    client.track("rejected")
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(client.flush())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert sorted(results) == [False, True, True, True]


# ---------------------------------------------------------------- 3. shutdown stops everything


def test_shutdown_timeout_cuts_the_request_in_flight_and_hands_over_every_event(
    make_client: Any, receiver: Receiver
) -> None:
    receiver.respond = lambda request: Reply(202, delay=1.5)
    errors = Errors()
    client = make_client(batch_size=5, batch_interval_ms=60_000, on_error=errors)
    ids = [client.track("e", {"n": n}) for n in range(8)]
    assert wait_until(lambda: len(receiver.requests) == 1)  # the first 5 are in flight
    started = time.monotonic()
    assert client.shutdown(timeout=0.5) is False  # the last 3 go out too, and hang as well
    assert time.monotonic() - started < 0.9
    sent_by_then = len(receiver.requests)
    stats = client.stats()
    assert (stats.delivered, stats.dropped_shutdown, stats.queued) == (0, 8, 0)
    assert sorted(e["event_id"] for e in errors.events) == sorted(ids)  # each once
    assert all(isinstance(error, cca.ShutdownDropError) for _, error in errors.calls)
    time.sleep(1.5)  # the cut requests' answers come and go; nothing else is sent
    assert len(receiver.requests) == sent_by_then == 2
    assert client.stats() == stats
    assert_balanced(stats)


def test_shutdown_timeout_also_cuts_a_connection_that_is_still_being_made(
    make_client: Any,
) -> None:
    with socket.socket() as listener:  # a full backlog that nobody accepts: connects hang
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        fillers = [socket.socket() for _ in range(4)]
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
        try:
            errors = Errors()
            url = f"http://127.0.0.1:{listener.getsockname()[1]}/analytics"
            client = make_client(endpoint=url, on_error=errors, batch_interval_ms=60_000)
            client.track("e")
            assert client.flush(timeout=0.2) is False
            started = time.monotonic()
            assert client.shutdown(timeout=0.3) is False
            assert time.monotonic() - started < 0.8
            assert len(errors.events) == 1
            assert_balanced(client.stats())
        finally:
            for filler in fillers:
                filler.close()


# ---------------------------------------------------------------- 4. the status line is the verdict


def test_a_2xx_whose_body_breaks_off_is_delivered(make_client: Any, receiver: Receiver) -> None:
    receiver.script(Reply(202, body=b'{"success": tr', cut_body=True))
    client = make_client(max_retries=0)
    client.track("e")
    assert client.flush(timeout=5) is True
    assert client.stats().delivered == 1
    assert len(receiver.requests) == 1  # not retried either
    client.track("next")  # and the next batch goes out on a fresh connection
    assert client.flush(timeout=5) is True


def test_a_5xx_whose_body_breaks_off_is_still_a_5xx(make_client: Any, receiver: Receiver) -> None:
    receiver.script(Reply(503, body=b"overlo", cut_body=True))
    client = make_client(retry_delay_ms=10)
    client.track("e")
    assert client.flush(timeout=5) is True
    assert [r.ok for r in receiver.requests] == [False, True]


# ---------------------------------------------------------------- 5 and 6. no secret in errors

BAD_ENDPOINTS = [
    ("https://user:password@host:99999/a?token=SECRET", "bad port"),
    ("http://[::1/x", "cannot be parsed"),
    ("http://user:SECRET@[::1", "cannot be parsed"),  # no netloc to find the credentials in
    ("https://host:-1/", "bad port"),
    ("https://host:0/", "port 0"),
    ("https://token-as-user@/a?token=SECRET", "no host"),
    ("http://exa mple.com/?token=SECRET", "white space"),
    ("ftp://user:password@host/", "scheme"),
    ("https://user:password@☃.example/?token=SECRET", "host name"),
    ("https://user:SECRETĀ@host/", "beyond Latin-1"),  # Basic auth is Latin-1
    ("https://host/a?token=SECRET%zz", "not followed by two hex digits"),  # all re-quoted
    ("https://host/a?token=SECRET%2", "not followed by two hex digits"),
    ("https://host/50%/a?token=SECRET", "in its path is not followed by two hex digits"),
    ("https://host/hooks/SECRET%zz", "in its path is not followed"),  # a webhook's token
    ("https://user:SECRET%@host/a", "in its credentials is not followed"),
    ("https://user:1234/SECRET@host/a", "first path segment holds an @"),  # host "user"
    ("https://token-as-user/SECRET@host", "first path segment holds an @"),
    ("https:user:SECRET@host/a", "no host"),  # the // left out
]


@pytest.mark.parametrize(("url", "problem"), BAD_ENDPOINTS)
def test_a_bad_endpoint_is_a_config_error_that_shows_no_secret(url: str, problem: str) -> None:
    with pytest.raises(cca.ConfigError, match=problem) as caught:
        cca.Analytics(url)
    message = str(caught.value)
    assert message.startswith("endpoint must be an absolute http:// or https:// URL with a host")
    for secret in ("password", "SECRET", "token-as-user"):
        assert secret not in message


@pytest.mark.parametrize("option", ["endpoint", "proxy"])
@pytest.mark.parametrize("password", ["s3cr/etPW", "s3cr#etPW", "s3cr?etPW"])
def test_a_password_holding_a_slash_hash_or_question_mark_is_never_shown(
    option: str, password: str
) -> None:
    # Unescaped, it ends the authority early: no parser finds the password, so none is shown.
    options = {"endpoint": "https://example.com/a", option: f"https://u:{password}@example.com/c"}
    with pytest.raises(cca.ConfigError, match="cannot be parsed") as caught:
        cca.Analytics(**options)
    assert "s3cr" not in str(caught.value) and "etPW" not in str(caught.value)


def test_the_command_line_shows_no_secret_of_a_bad_endpoint() -> None:
    url = "https://user:password@host:99999/a?token=SECRET"
    for command in (["send", "--endpoint", url], ["check", "--endpoint", url]):
        result = subprocess.run(
            [sys.executable, "-m", "campaign_cart_analytics", *command],
            input="", capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "password" not in result.stderr and "SECRET" not in result.stderr


@pytest.mark.parametrize("value", ["Bearer s3cr€t", "Bearer s3cr\x7ft", "Bearer \x00x", "\tBearer"])
def test_a_header_value_http_cannot_carry_is_refused_without_showing_it(value: str) -> None:
    with pytest.raises(cca.ConfigError, match=r"headers\['Authorization'\]") as caught:
        cca.Analytics("https://example.com/a", headers={"Authorization": value})
    assert "s3cr" not in str(caught.value) and "€" not in str(caught.value)


def test_latin1_and_an_empty_token_are_sent_as_given(make_client: Any, receiver: Receiver) -> None:
    client = make_client(headers={"X-Name": "café", "Authorization": "Bearer "})
    client.track("e")
    assert client.flush(timeout=5) is True
    assert receiver.requests[0].headers["x-name"].encode("latin-1") == "café".encode("latin-1")


def test_a_header_callable_returning_what_http_cannot_carry_drops_its_batch_quietly(
    make_client: Any, receiver: Receiver, sdk_logs: pytest.LogCaptureFixture
) -> None:
    errors = Errors()
    client = make_client(headers={"Authorization": lambda: "Bearer s3cr€t"}, on_error=errors)
    client.track("e")
    assert client.flush(timeout=5) is False
    assert receiver.requests == []
    assert "headers['Authorization']" in str(errors.calls[0][1])
    assert "s3cr" not in sdk_logs.text and "s3cr" not in str(errors.calls[0][1])
    assert all(record.exc_info is None for record in sdk_logs.records)  # no traceback per batch


# ---------------------------------------------------------------- 8. fork after shutdown


def test_a_client_shut_down_before_a_fork_stays_shut_down_in_the_child(
    receiver: Receiver,
) -> None:
    script = textwrap.dedent(
        f"""
        import logging, os, sys
        import campaign_cart_analytics as cca
        logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
        client = cca.Analytics({receiver.url!r}, batch_interval_ms=10)
        client.shutdown()
        pid = os.fork()
        if pid == 0:
            returned = client.track("from the child")
            client.flush(timeout=1)
            print("child track returned", returned, client.stats().dropped_shutdown)
            os._exit(0)
        os.waitpid(pid, 0)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "child track returned None 1" in result.stdout
    assert "track() called after shutdown()" in result.stdout  # the child warns too
    time.sleep(0.1)
    assert receiver.requests == []


# ---------------------------------------------------------------- 9. flushing() on coroutines


def test_flushing_on_an_async_handler_flushes_after_it_ran(
    make_client: Any, receiver: Receiver
) -> None:
    client = make_client(batch_interval_ms=60_000)
    ticks: list[float] = []

    @client.flushing(timeout=5)
    async def handler(n: int) -> int:
        await asyncio.sleep(0.01)
        client.track("from the coroutine", {"n": n})
        return n * 2

    async def main() -> int:
        async def tick() -> None:  # the loop keeps running while the flush waits
            for _ in range(10):
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        receiver.respond = lambda request: Reply(202, delay=0.1)
        result, _ = await asyncio.gather(handler(21), tick())
        return result

    assert asyncio.run(main()) == 42
    assert [e["n"] for e in receiver.delivered_events()] == [21]
    assert client.stats().queued == 0
    assert len(ticks) == 10


def test_async_with_flushing_and_flush_async(make_client: Any, receiver: Receiver) -> None:
    client = make_client(batch_interval_ms=60_000)

    async def main() -> tuple[bool, bool]:
        async with client.flushing(timeout=5) as block:
            client.track("e")
        client.track("f")
        return bool(block.delivered), await client.flush_async(timeout=5)

    assert asyncio.run(main()) == (True, True)
    assert len(receiver.delivered_events()) == 2


def test_flush_async_does_not_block_the_event_loop(make_client: Any, receiver: Receiver) -> None:
    receiver.respond = lambda request: Reply(202, delay=0.3)
    client = make_client(batch_interval_ms=60_000)

    async def main() -> float:
        client.track("e")
        flushing = asyncio.ensure_future(client.flush_async(timeout=5))
        started = time.monotonic()
        await asyncio.sleep(0.05)
        woke_after = time.monotonic() - started
        assert await flushing is True
        return woke_after

    assert asyncio.run(main()) < 0.2


def test_module_level_flush_async_and_shutdown_async(receiver: Receiver) -> None:
    receiver.respond = lambda request: Reply(202, delay=0.5)
    cca.configure(endpoint=receiver.url, batch_interval_ms=60_000)
    ticks: list[float] = []

    async def main() -> tuple[bool, bool]:
        async def tick() -> None:
            for _ in range(10):
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        cca.track("e")
        flushed, _ = await asyncio.gather(cca.flush_async(timeout=5), tick())
        cca.track("f")
        return flushed, await cca.shutdown_async(timeout=5)

    try:
        assert asyncio.run(main()) == (True, True)
    finally:
        cca.get_client().shutdown(timeout=1)
    assert [e["event"] for e in receiver.delivered_events()] == ["e", "f"]
    assert len(ticks) == 10 and ticks[-1] - ticks[0] < 0.4  # ticked while the flush waited


def test_on_error_gets_every_dropped_event_once_at_exit(receiver: Receiver, tmp_path: Path) -> None:
    """A process whose endpoint hangs: exit is bounded, and on_error hears of every event."""
    receiver.respond = lambda request: Reply(202, delay=3)
    out = tmp_path / "dropped.txt"
    script = textwrap.dedent(
        f"""
        import campaign_cart_analytics as cca
        def on_error(events, error):
            with open({str(out)!r}, "a") as f:
                f.writelines(e["event_id"] + "\\n" for e in events)
        client = cca.Analytics({receiver.url!r}, batch_size=5, shutdown_timeout_ms=400,
                               on_error=on_error)
        ids = [client.track("e") for _ in range(12)]
        print("\\n".join(ids))
        """
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert time.monotonic() - started < 3.0
    assert result.returncode == 0, result.stderr
    tracked = result.stdout.split()
    assert sorted(out.read_text().split()) == sorted(tracked)


@pytest.mark.parametrize(("at_exit", "clients"), [(False, 1), (True, 1), (True, 3)])
def test_a_slow_on_error_does_not_hold_a_shutdown_past_its_bound(
    receiver: Receiver, tmp_path: Path, at_exit: bool, clients: int
) -> None:
    """on_error told of what a shutdown wrote off posts to a down alerting service: it gets
    REPORT_GRACE (1 s), not as long as it takes; at exit all clients share that second, and
    every one of them is told."""
    if at_exit and sys.version_info[:2] == (3, 12):
        pytest.skip("Python 3.12 starts no thread at interpreter exit: on_error runs inline")
    receiver.respond = lambda request: Reply(202, delay=5)
    called = tmp_path / "called.txt"
    script = textwrap.dedent(
        f"""
        import logging, time, campaign_cart_analytics as cca
        logging.basicConfig()
        def on_error(events, error):
            with open({str(called)!r}, "a") as f:
                f.write(f"{{len(events)}}\\n")
            time.sleep(20)
        clients = [cca.Analytics({receiver.url!r}, batch_size=5, shutdown_timeout_ms=300,
                                 on_error=on_error) for _ in range({clients})]
        for client in clients:
            for _ in range(12):
                client.track("e")
        if {not at_exit!r}:
            print(clients[0].shutdown(timeout=0.3))
        print(time.monotonic(), flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    *shutdown, main_ended = result.stdout.split()
    assert shutdown == ([] if at_exit else ["False"])
    took = time.monotonic() - float(main_ended)
    assert took < (0.3 + 1.0 + 0.7 if at_exit else 0.7), f"exit took {took:.1f} s"
    assert sum(map(int, called.read_text().split())) == 12 * clients  # every event, told
    assert "still running at the shutdown's bound" in result.stderr


def test_sys_exit_from_on_error_at_a_write_off_is_logged(
    sdk_logs: pytest.LogCaptureFixture,
) -> None:
    silent = RawServer()  # takes connections, never answers
    silent.handle = lambda conn: silent.stop.wait(5)  # type: ignore[method-assign]
    try:

        def on_error(events: Any, error: BaseException) -> None:
            sys.exit(3)

        client = cca.Analytics(silent.url, on_error=on_error, max_retries=0)
        client.track("e")
        time.sleep(0.2)
        assert client.shutdown(timeout=0.3) is False
        assert any(
            "on_error callback raised SystemExit" in r.getMessage() for r in sdk_logs.records
        )
    finally:
        silent.close()


def test_an_event_tracked_after_shutdown_reaches_on_error(
    make_client: Any, receiver: Receiver
) -> None:
    errors = Errors()
    client = make_client(on_error=errors)
    client.shutdown()
    assert client.track("late") is None
    assert [e["event"] for e in errors.events] == ["late"]
    assert isinstance(errors.calls[0][1], cca.ShutdownDropError)
    assert client.flush() is False  # a loss, reported once
    assert client.flush() is True
