"""The ASGI middleware: under a real uvicorn (tests/apps/asgi_shop.py), and driven directly.

The uvicorn tests give each test its own range of ``n`` (an event property),
so events of the shared server are told apart by it.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from helpers import wait_until  # noqa: E402
from receiver import Receiver, Reply, free_port  # noqa: E402

APPS = Path(__file__).parent / "apps"
SESSION_ID = re.compile(r"[0-9a-f]{32}")


@contextmanager
def uvicorn_shop(receiver: Receiver, **env: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """tests/apps/asgi_shop.py under uvicorn, delivering to ``receiver``; stopped with SIGTERM."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(APPS), "--port", str(port),
         "--log-level", "warning", "asgi_shop:app"],
        env={**os.environ, "CCA_ENDPOINT": receiver.url, **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=1):
                return True
        except OSError:
            return server.poll() is not None  # stop polling a server that died

    try:
        assert wait_until(answers, timeout=20) and server.poll() is None, "uvicorn did not start"
        yield server, base
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.communicate(timeout=30)


@pytest.fixture(scope="module")
def shop() -> Iterator[tuple[Any, Receiver]]:
    """The shared server: an HTTP client keeping no cookies, aimed at it, and its receiver."""
    receiver = Receiver()
    with (
        uvicorn_shop(receiver) as (_, base),
        httpx.Client(base_url=base, cookies=no_cookie_jar()) as browser,
    ):
        yield browser, receiver
    receiver.close()


def events_for(receiver: Receiver, numbers: range, count: int) -> list[dict[str, Any]]:
    """The delivered events whose ``n`` is in ``numbers``, once ``count`` of them arrived."""

    def mine() -> list[dict[str, Any]]:
        return [e for e in receiver.delivered_events() if e.get("n") in numbers]

    assert wait_until(lambda: len(mine()) >= count, timeout=10), len(mine())
    time.sleep(0.2)  # a duplicate would come in now
    events = mine()
    assert len(events) == count and len({e["event_id"] for e in events}) == count
    return events


def no_cookie_jar() -> http.cookiejar.CookieJar:
    """A jar that keeps nothing: concurrent requests must not share cookies."""
    return http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


def set_cookies(response: Any) -> dict[str, str]:
    return dict(
        header.split(";")[0].split("=", 1) for header in response.headers.get_list("set-cookie")
    )


# ---------------------------------------------------------------- under uvicorn


def test_200_concurrent_requests_each_carry_their_own_context(shop: tuple[Any, Receiver]) -> None:
    receiver = shop[1]
    numbers = range(200)
    returning = {n: uuid.uuid4().hex for n in numbers if n % 4 >= 2}  # the others are new

    async def visit(browser: Any, n: int) -> Any:
        headers = {"authorization": f"Bearer user{n}"} if n % 2 else {}
        if n in returning:
            headers["cookie"] = f"theme=dark; cca_session_id={returning[n]}"
        query = {"utm_source": f"s{n}", "utm_campaign": f"c{n}", "other": "x"}
        return await browser.get(f"/visit/{n}", params=query, headers=headers)

    async def visit_all() -> list[Any]:
        async with httpx.AsyncClient(
            base_url=shop[0].base_url,
            cookies=no_cookie_jar(),
            limits=httpx.Limits(max_connections=200),
            timeout=30,
        ) as browser:
            return await asyncio.gather(*(visit(browser, n) for n in numbers))

    responses = asyncio.run(visit_all())
    assert [r.json() for r in responses] == [{"n": n} for n in numbers]
    events = events_for(receiver, numbers, 3 * len(numbers))
    assert sorted((e["n"], e["step"]) for e in events) == sorted(
        (n, step) for n in numbers for step in ("endpoint", "task", "background")
    )
    for n, response in zip(numbers, responses):
        own = [e for e in events if e["n"] == n]
        cookie = set_cookies(response).get("cca_session_id")
        expected_session = returning.get(n, cookie)
        assert (cookie is None) == (n in returning)  # set for a new visitor only
        assert expected_session is not None and SESSION_ID.fullmatch(expected_session)
        for event in own:
            assert event["user_properties"] == (
                {"session_id": expected_session, "user_id": f"user{n}"}
                if n % 2
                else {"session_id": expected_session}
            )
            assert event["attribution"] == {"source": f"s{n}", "campaign": f"c{n}"}
            assert event["event_id"].startswith(f"{expected_session}_")


def test_a_request_that_tracks_nothing_gets_no_cookie_and_no_vary(
    shop: tuple[Any, Receiver],
) -> None:
    browser, _ = shop
    for path in ("/quiet", "/s/quiet"):
        response = browser.get(f"{path}?utm_source=google", headers={"cookie": "session=x"})
        assert response.status_code == 200
        assert "set-cookie" not in response.headers and "vary" not in response.headers


def test_with_starlette_sessions_the_id_lives_in_the_session(shop: tuple[Any, Receiver]) -> None:
    browser, receiver = shop
    with httpx.Client(base_url=browser.base_url) as visitor:  # keeps its cookies
        first = visitor.get("/s/visit/300?utm_medium=email")
        assert set(set_cookies(first)) == {"session"}  # Starlette's cookie, not ours
        visitor.get("/s/visit/301", headers={"authorization": "Bearer ann"})
    events = events_for(receiver, range(300, 302), 6)
    sessions = {e["user_properties"]["session_id"] for e in events}
    assert len(sessions) == 1 and SESSION_ID.fullmatch(sessions.pop())
    assert {e.get("attribution", {}).get("medium") for e in events} == {"email", None}
    assert {e["user_properties"].get("user_id") for e in events if e["n"] == 301} == {"ann"}


def test_a_sync_endpoint_in_a_worker_thread_has_the_context(shop: tuple[Any, Receiver]) -> None:
    browser, receiver = shop
    response = browser.get("/sync/400?utm_source=thread")
    (event,) = events_for(receiver, range(400, 401), 1)
    assert event["attribution"] == {"source": "thread"}
    assert event["user_properties"]["session_id"] == set_cookies(response)["cca_session_id"]


def test_a_streamed_body_produced_after_tracking(shop: tuple[Any, Receiver]) -> None:
    browser, receiver = shop
    with browser.stream("GET", "/stream/500?utm_source=stream") as response:
        headers_at = time.monotonic()
        cookie = set_cookies(response)["cca_session_id"]  # in the headers, before the body
        body = response.read()
    assert body == b"part 0\npart 1\npart 2\n"
    assert time.monotonic() - headers_at >= 0.12  # three 50 ms parts came after the headers
    events = events_for(receiver, range(500, 501), 4)
    assert {e["user_properties"]["session_id"] for e in events} == {cookie}
    assert all(e["attribution"] == {"source": "stream"} for e in events)


def test_the_apps_own_cookies_are_kept_beside_ours(shop: tuple[Any, Receiver]) -> None:
    browser, receiver = shop
    cookies = set_cookies(browser.get("/own-cookies/600"))
    assert cookies.keys() == {"theme", "cart", "cca_session_id"}
    assert (cookies["theme"], cookies["cart"]) == ("dark", "3")
    (event,) = events_for(receiver, range(600, 601), 1)
    assert event["user_properties"]["session_id"] == cookies["cca_session_id"]


def test_an_endpoint_that_raises_keeps_the_event_it_tracked_before(
    shop: tuple[Any, Receiver],
) -> None:
    browser, receiver = shop
    assert browser.get("/boom/700?utm_campaign=crash").status_code == 500
    (event,) = events_for(receiver, range(700, 701), 1)
    assert event["attribution"] == {"campaign": "crash"}
    assert SESSION_ID.fullmatch(event["user_properties"]["session_id"])


def test_a_user_set_as_context_by_an_async_dependency_wins(shop: tuple[Any, Receiver]) -> None:
    browser, receiver = shop
    browser.get(
        "/shopper/900?utm_source=dep", headers={"x-shopper": "dana", "authorization": "Bearer eve"}
    )
    browser.get("/shopper/901?utm_source=dep", headers={"authorization": "Bearer eve"})
    dana, eve = sorted(events_for(receiver, range(900, 902), 2), key=lambda e: e["n"])
    assert dana["user_properties"]["user_id"] == "dana"  # the dependency's, over scope["user"]
    assert eve["user_properties"]["user_id"] == "eve"
    assert dana["attribution"] == eve["attribution"] == {"source": "dep"}


def test_a_flushing_handler_waits_for_a_slow_endpoint_without_holding_the_loop(
    shop: tuple[Any, Receiver],
) -> None:
    receiver = shop[1]
    receiver.respond = lambda request: Reply(202, delay=1.0 if b'"flushed"' in request.body else 0)

    async def main() -> tuple[float, list[float]]:
        async with httpx.AsyncClient(base_url=shop[0].base_url, timeout=10) as visitor:
            started = time.monotonic()
            flushing = asyncio.ensure_future(visitor.get("/flush-slow/800"))
            await asyncio.sleep(0.15)  # the flush is waiting for the receiver now
            pings = []
            for _ in range(3):
                sent = time.monotonic()
                assert (await visitor.get("/ping")).status_code == 200
                pings.append(time.monotonic() - sent)
            assert (await flushing).json() == {"n": 800}
            return time.monotonic() - started, pings

    try:
        took, pings = asyncio.run(main())
    finally:
        receiver.respond = lambda request: Reply()
    assert took >= 1.0  # the response waited for the delivery
    assert max(pings) < 0.4, pings  # while other requests were answered at once
    assert [e["n"] for e in receiver.delivered_events() if e.get("n") == 800] == [800]


def test_sigterm_delivers_what_was_queued_and_exits_within_the_bound() -> None:
    receiver = Receiver()
    try:
        env = {"CCA_BATCH_SIZE": "100", "CCA_BATCH_INTERVAL_MS": "60000"}
        with uvicorn_shop(receiver, **env) as (server, base):
            with httpx.Client(base_url=base) as browser:
                for n in range(40):
                    browser.get(f"/sync/{n}")
            assert receiver.requests == []  # all queued: the interval is a minute
            server.send_signal(signal.SIGTERM)
            _, stderr = server.communicate(timeout=30)
        assert sorted(e["n"] for e in receiver.delivered_events()) == list(range(40))
        assert "Traceback" not in stderr

        receiver.respond = lambda request: Reply(202, delay=5)  # an endpoint that hangs
        env["CCA_SHUTDOWN_TIMEOUT_MS"] = "300"
        with uvicorn_shop(receiver, **env) as (server, base):
            httpx.get(f"{base}/sync/1000")
            stopping = time.monotonic()
            server.send_signal(signal.SIGTERM)
            _, stderr = server.communicate(timeout=30)
        assert time.monotonic() - stopping < 3.5
        assert "1 analytics events were not delivered within shutdown_timeout_ms" in stderr
    finally:
        receiver.close()


# ---------------------------------------------------------------- awaitable flushes, on a real loop


async def ticking_while(work: Any) -> tuple[Any, list[float]]:
    """Await ``work`` while a task ticks every 10 ms; its result and the gaps between ticks."""
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    ticker = asyncio.ensure_future(tick())
    try:
        result = await work
    finally:
        ticker.cancel()
    return result, [later - earlier for earlier, later in zip(ticks, ticks[1:])]


def test_shutdown_async_waits_for_a_slow_endpoint_while_the_loop_runs(
    make_client: Any, receiver: Receiver
) -> None:
    receiver.respond = lambda request: Reply(202, delay=0.4)
    client = make_client(batch_interval_ms=60_000)
    client.track("e")
    started = time.monotonic()
    done, gaps = asyncio.run(ticking_while(client.shutdown_async(timeout=5)))
    assert done is True and time.monotonic() - started >= 0.4
    assert len(gaps) >= 20 and max(gaps) < 0.2, max(gaps)  # the loop never stood still
    assert len(receiver.delivered_events()) == 1 and client.track("late") is None


def test_flushing_an_async_generator_flushes_after_its_last_item(
    make_client: Any, receiver: Receiver
) -> None:
    """A streamed body's generator: its events are tracked while it is iterated."""
    receiver.respond = lambda request: Reply(202, delay=0.4)
    client = make_client(batch_interval_ms=60_000)

    @client.flushing(timeout=5)
    async def body() -> Any:
        for part in range(3):
            client.track("part", {"part": part})
            yield part

    async def consume() -> list[int]:
        return [part async for part in body()]

    parts, gaps = asyncio.run(ticking_while(consume()))
    assert parts == [0, 1, 2]
    assert [e["part"] for e in receiver.delivered_events()] == [0, 1, 2]  # before it ended
    assert max(gaps) < 0.2, max(gaps)


def test_flushing_a_callable_that_returns_a_coroutine_flushes_after_awaiting_it(
    make_client: Any, receiver: Receiver
) -> None:
    receiver.respond = lambda request: Reply(202, delay=0.4)
    client = make_client(batch_interval_ms=60_000)

    class Handler:  # inspect.iscoroutinefunction() says no to it
        async def __call__(self, n: int) -> int:
            await asyncio.sleep(0.01)
            client.track("handled", {"n": n})
            return n

    handler = client.flushing(timeout=5)(Handler())
    n, gaps = asyncio.run(ticking_while(handler(7)))
    assert n == 7 and [e["n"] for e in receiver.delivered_events()] == [7]
    assert max(gaps) < 0.2, max(gaps)


def test_flushing_a_generator_or_a_failing_function(make_client: Any, receiver: Receiver) -> None:
    client = make_client(batch_interval_ms=60_000)
    flushing = client.flushing(timeout=5)

    @flushing
    def rows() -> Any:
        for row in range(2):
            client.track("row", {"row": row})
            yield row

    @flushing
    def failing() -> None:
        client.track("row", {"row": "failing"})
        raise KeyError("the handler's own")

    assert list(rows()) == [0, 1]
    assert [e["row"] for e in receiver.delivered_events()] == [0, 1]
    with pytest.raises(KeyError, match="the handler's own"):
        failing()
    assert flushing.delivered is True and len(receiver.delivered_events()) == 3
